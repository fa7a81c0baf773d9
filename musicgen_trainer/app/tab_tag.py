"""The Tag tab: train the genre classifier on a prepared dataset (a background job with progress),
see its test-split evaluation and confusion matrix, propose genres for ``unknown/`` (a dry run, also
a job), listen, accept or reject each track, and file the accepted ones (``studio_tag``).

API (gradio_client): ``/tag_datasets``, ``/classifier_train``, ``/classifier_stop``,
``/classifier_status``, ``/tag_propose``, ``/tag_proposals``, ``/tag_play``, ``/tag_apply``.
"""
from __future__ import annotations

import dataclasses
import typing as tp

from . import studio_data as sd
from . import studio_tag as stg
from .tab_data import POLL_SECONDS, _image, guarded, on_load_register, option_inputs, progress_html


def _tag_field(name: str):
    from genre_classifier.tagging import TagConfig
    return {f.name: f for f in dataclasses.fields(TagConfig)}[name]


def build_tag_tab(app) -> None:
    import gradio as gr
    from genre_classifier.tagging import APPLY_MODES, TagConfig
    from genre_classifier.training import TrainConfig

    root, checkpoints = app.data_root, app.checkpoints

    def datasets() -> tp.List[str]:
        return sd.choices_or_none(sd.dataset_choices, root)

    def on_datasets():
        return gr.Dropdown(choices=datasets())

    def proposals_update(dataset):
        """(accept checkboxes, player choices) from the last dry run's proposals not applied yet."""
        offered = stg.pending(stg.load_proposals(root, checkpoints, dataset)) if dataset else []
        choices = [(p.label(), p.track) for p in offered]
        accepted = [p.track for p in offered if p.above_threshold]
        return (gr.CheckboxGroup(choices=choices, value=accepted),
                gr.Dropdown(choices=[p.track for p in offered], value=offered[0].track if offered else None))

    def status(dataset, view=None):
        """(progress, log, report, confusion matrix) of the dataset's classifier folder (``view``: its
        job, read once by the caller so that the timer and the text agree)."""
        if not dataset:
            return "", "", "", None
        view = view or stg.classifier_view(root, checkpoints, dataset)
        report, matrix = "", None
        if not view.running:
            try:
                report, png = stg.classifier_report(root, checkpoints, dataset)
                matrix = _image(png)
            except ValueError:  # no classifier yet
                pass
        return progress_html(view), view.log, report, matrix

    def on_status(dataset):
        # One read of the job: two reads could see "running" for the timer and "done" for the text.
        view = stg.classifier_view(root, checkpoints, dataset) if dataset else None
        running = bool(view and view.running)
        # The proposals are offered once the job has ended (ticks never undo the user's choices).
        offer = (gr.update(), gr.update()) if running else proposals_update(dataset)
        return (*status(dataset, view), *offer, gr.Timer(active=running))

    def on_dataset(dataset):
        return on_status(dataset)

    def on_train(dataset, *values):
        stg.start_classifier(root, checkpoints, dataset, dict(zip(stg.MAIN_TRAIN_OPTIONS, values)))
        return (*status(dataset), gr.Timer(active=True))

    def on_stop(dataset):
        from . import jobs
        stopped = jobs.stop_job(stg.classifier_folder(checkpoints, dataset, root=root))
        return "stopping" if stopped else "nothing is running for this dataset"

    def on_propose(dataset, min_confidence):
        stg.start_proposals(root, checkpoints, dataset, float(min_confidence))
        return (*status(dataset), gr.Timer(active=True))

    def on_proposals(dataset):
        offered = stg.pending(stg.load_proposals(root, checkpoints, dataset))
        return [[p.track, p.genre, round(p.confidence, 3), p.top3, "yes" if p.above_threshold else "no"]
                for p in offered]

    def on_play(dataset, track):
        if not dataset or not track:
            return None
        return stg.proposal_audio(root, checkpoints, dataset, track)

    def on_apply(dataset, accepted, mode):
        summary = stg.apply_proposals(root, checkpoints, dataset, list(accepted or []), mode)
        return (summary, *proposals_update(dataset))

    def on_load():
        # A reloaded page follows a running job again (picking the dataset starts the status ticks).
        running = stg.running_classifier(root, checkpoints)
        return gr.Dropdown(choices=datasets(), **({"value": running} if running else {}))

    gr.Markdown("Train the genre classifier on a prepared dataset's genre folders, then let it propose genres "
                "for the tracks in `unknown/`: listen, accept or reject each, and file the accepted ones "
                "(nothing is overwritten; captions and manifests are updated).")
    with gr.Row():
        dataset = gr.Dropdown(choices=datasets(), value=None, label="Prepared dataset", elem_id="tag-dataset",
                              scale=3, allow_custom_value=True)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id="tag-refresh")
    with gr.Accordion("Classifier options", open=False), gr.Row():
        options = option_inputs(TrainConfig, stg.MAIN_TRAIN_OPTIONS)
    with gr.Row():
        train = gr.Button("Train classifier", variant="primary", elem_id="tag-train")
        stop = gr.Button("Stop", elem_id="tag-stop")
    progress = gr.HTML(elem_id="tag-progress")
    note = gr.Markdown(elem_id="tag-note")
    with gr.Accordion("Log", open=False):
        log = gr.Textbox(lines=12, max_lines=12, interactive=False, show_label=False, elem_id="tag-log")
    with gr.Row():
        report = gr.Markdown(elem_id="tag-report")
        matrix = gr.Image(label="Confusion matrix (test tracks)", type="pil", interactive=False,
                          elem_id="tag-matrix")
    with gr.Row():
        min_confidence = gr.Slider(0.0, 1.0, value=_tag_field("min_confidence").default, step=0.05,
                                   label="Minimum confidence", info=sd.field_help(TagConfig, "min_confidence"),
                                   elem_id="tag-min-confidence")
        propose = gr.Button("Propose genres for unknown/", elem_id="tag-propose")
    accept = gr.CheckboxGroup(choices=[], label="Proposals (ticked: accepted; untick to reject)",
                              elem_id="tag-accept")
    # The tracks are checked against the proposals on the server; the page's list is only the offer.
    accept.preprocess = lambda payload: [str(v) for v in (payload or [])][:stg.MAX_PROPOSALS_SHOWN]
    with gr.Row():
        listen = gr.Dropdown(choices=[], label="Listen to", elem_id="tag-listen", allow_custom_value=True)
        player = gr.Audio(label="Track", type="numpy", interactive=False, elem_id="tag-audio")
    with gr.Row():
        mode = gr.Radio(list(APPLY_MODES), value="move", label="File accepted tracks by",
                        info="move: out of unknown/ into the genre folder; copy: unknown/ keeps them too",
                        elem_id="tag-mode")
        apply = gr.Button("Apply accepted", variant="primary", elem_id="tag-apply")
    table = gr.Dataframe(headers=["track", "genre", "confidence", "top 3", "above threshold"], interactive=False,
                         visible=False)
    timer = gr.Timer(POLL_SECONDS, active=False)

    shown = [progress, log, report, matrix]
    dataset.focus(guarded(app, on_datasets), outputs=dataset, api_visibility="private", queue=False)  # new ones since the page loaded
    refresh.click(guarded(app, on_datasets), outputs=dataset, api_name="tag_datasets", queue=False)
    dataset.change(guarded(app, on_dataset), inputs=dataset, outputs=[*shown, accept, listen, timer],
                   api_visibility="private")
    train.click(guarded(app, on_train), inputs=[dataset, *options], outputs=[*shown, timer],
                api_name="classifier_train", concurrency_limit=1, concurrency_id="studio-jobs")
    stop.click(guarded(app, on_stop), inputs=dataset, outputs=note, api_name="classifier_stop", queue=False)
    timer.tick(guarded(app, on_status), inputs=dataset, outputs=[*shown, accept, listen, timer],
               api_name="classifier_status", queue=False)
    propose.click(guarded(app, on_propose), inputs=[dataset, min_confidence], outputs=[*shown, timer],
                  api_name="tag_propose", concurrency_limit=1, concurrency_id="studio-jobs")
    table_button = gr.Button(visible=False)
    table_button.click(guarded(app, on_proposals), inputs=dataset, outputs=table, api_name="tag_proposals")
    listen.change(guarded(app, on_play), inputs=[dataset, listen], outputs=player, api_name="tag_play")
    apply.click(guarded(app, on_apply), inputs=[dataset, accept, mode], outputs=[note, accept, listen],
                api_name="tag_apply", concurrency_limit=1, concurrency_id="studio-jobs")
    on_load_register(on_load, [dataset])
