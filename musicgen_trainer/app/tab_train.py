"""The Train tab: pick a base model, a prepared dataset and a run name, see the memory estimate,
Start / Stop / Resume train.py as a background job, and watch its loss curve, speed, ETA and
samples (polled from the run folder). The backend is ``studio_train`` (no Gradio there)."""
from __future__ import annotations

import logging

from . import studio_train as st

logger = logging.getLogger("musicgen_trainer.app")

POLL_SECONDS = 2.0  # how often the page reads the run folder
LABELS = {"steps": "Steps", "lr": "Learning rate", "batch_size": "Batch size", "segment_seconds": "Clip seconds",
          "lora": "LoRA rank (0: full fine-tune)", "gpu_memory": "GPU memory to plan for, GB (0: no plan)",
          "sample_every": "Samples every N steps (0: none)", "eval_every": "Validation every N steps (0: none)"}
BOUNDS = {"steps": (1, 1_000_000, 1), "lr": (1e-7, 1e-2, None), "batch_size": (1, 256, 1),
          "segment_seconds": (0.5, 30.0, None), "lora": (0, 256, 1), "gpu_memory": (0, 1024, None),
          "sample_every": (0, 1_000_000, 1), "eval_every": (0, 1_000_000, 1)}


def build_train_tab(app) -> None:
    """The tab's controls and events, inside the page's ``gr.Tab`` context."""
    import gradio as gr
    import pandas as pd

    def fail(exc: Exception):
        return gr.Error(app.public_text(str(exc)), print_exception=False)

    def empty_curve():
        # None, not an empty frame: the plot's first data then sets its axes and series (an
        # empty frame's would stay: categorical axes, no lines)
        return None

    def options_of(values):
        return dict(zip(st.PAGE_OPTIONS, values))

    def on_estimate(model_key, *values):
        try:
            return st.memory_estimate(app, model_key, options_of(values))
        except ValueError as exc:
            return f"**{app.public_text(str(exc))}**"
        except Exception as exc:  # never a traceback in the page
            logger.exception("memory estimate failed")
            return f"**no estimate: {exc.__class__.__name__}**"

    def on_start(model_key, dataset, run_name, *values):
        from ..models import ModelUnavailableError
        try:
            st.start_training(app, model_key, dataset, run_name, options_of(values))
        except (ValueError, ModelUnavailableError) as exc:  # JobBusyError, OutsideRootError, offline: one line
            raise fail(exc) from None
        return *on_poll(run_name), gr.Dropdown(choices=st.list_runs(app), value=run_name.strip())

    def on_stop(run_name):
        try:
            stopped = st.stop_training(app, run_name)
        except ValueError as exc:
            raise fail(exc) from None
        if stopped == "already":
            gr.Info(st.STOP_ALREADY_ASKED)
        elif not stopped:
            gr.Info("nothing is running in this run")
        return on_poll(run_name)

    def on_resume(run_name, steps):
        try:
            st.resume_training(app, run_name, int(steps) if steps else None)
        except ValueError as exc:
            raise fail(exc) from None
        return on_poll(run_name)

    def on_poll(run_name):
        if not (run_name or "").strip():
            return st.RunView().summary(), empty_curve(), None, "", ""
        try:
            view = st.view_run(app, run_name)
        except ValueError as exc:
            return f"**{app.public_text(str(exc))}**", empty_curve(), None, "", ""
        found = st.curve(view.rows)
        points = pd.DataFrame(found, columns=["step", "loss", "series"]) if found else empty_curve()
        sample = str(view.samples[0]) if view.samples else None
        names = ", ".join(p.stem for p in view.samples)
        sample_note = f"Samples at step {view.sample_step}: {names}" if view.samples else "No samples yet."
        return view.summary(), points, sample, sample_note, view.log

    def on_load():
        # Reattach: a run that is training now is shown (a second browser sees it too).
        running = st.running_run(app)
        runs = st.list_runs(app)
        chosen = running or (runs[0] if runs else "")
        return gr.Dropdown(choices=runs, value=chosen or None), gr.update(value=chosen or "")

    def on_pick(run_name):
        return gr.update(value=run_name or "")

    def on_refresh_lists():
        app.rescan()
        return (gr.Dropdown(choices=st.base_model_choices(app)),
                gr.Dropdown(choices=st.prepared_datasets(app.data_root)))

    def default_base():  # musicgen-small when it is downloaded (training a test model is the exception)
        from .backend import hub_cached
        small = "facebook/musicgen-small"
        return small if small in app.by_key and hub_cached(small) else "tiny"

    gr.Markdown("Fine-tune a base model on a prepared dataset. The run is `train.py` in the background: "
                "it goes on when you close the page; Stop saves it, Resume continues it.")
    datasets = st.prepared_datasets(app.data_root)
    models = st.base_model_choices(app)
    with gr.Row():
        model = gr.Dropdown(choices=models, value=default_base(), label="Base model", info=st.field_help("model"),
                            elem_id="train-model", scale=3)
        dataset = gr.Dropdown(choices=datasets, value=datasets[0] if datasets else None, label="Prepared dataset",
                              info="a folder under the data root with manifest.jsonl", elem_id="train-dataset",
                              scale=3)
        run_name = gr.Textbox(label="Run name", value="my-run", max_lines=1, max_length=64,
                              info="the run's folder under checkpoints/", elem_id="train-run", scale=2)
        refresh = gr.Button("Refresh lists", size="sm", scale=0, min_width=120)
    widgets = []
    for row in (st.PAGE_OPTIONS[:4], st.PAGE_OPTIONS[4:]):
        with gr.Row():
            for name in row:
                low, high, step = BOUNDS[name]
                widgets.append(gr.Number(value=st.PAGE_DEFAULTS[name], label=LABELS[name], info=st.field_help(name),
                                         minimum=low, maximum=high, precision=0 if step else None,
                                         elem_id=f"train-{name.replace('_', '-')}", min_width=140))
    estimate = gr.Markdown(elem_id="train-estimate")
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume (to the Steps above)", elem_id="train-resume")
        runs = gr.Dropdown(choices=st.list_runs(app), label="Show run", elem_id="train-runs", allow_custom_value=False)
    status = gr.Markdown(elem_id="train-status")
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", elem_id="train-curve", height=280)
        with gr.Column():
            sample = gr.Audio(label="Latest sample", type="filepath", interactive=False, elem_id="train-sample")
            sample_note = gr.Markdown(elem_id="train-sample-note")
    log = gr.Textbox(label="Log (end)", lines=6, max_lines=12, interactive=False, autoscroll=True,
                     elem_id="train-log")
    timer = gr.Timer(POLL_SECONDS)

    shown = [status, plot, sample, sample_note, log]
    inputs = [model, *widgets]
    # on load and on every change of the model or an option (cheap: arithmetic on the architecture)
    gr.on(triggers=None, fn=on_estimate, inputs=inputs, outputs=estimate, api_visibility="private")
    start.click(on_start, inputs=[model, dataset, run_name, *widgets], outputs=[*shown, runs], api_name="train_start",
                concurrency_limit=1, concurrency_id="train_control")
    stop.click(on_stop, inputs=run_name, outputs=shown, api_name="train_stop",
               concurrency_limit=1, concurrency_id="train_control")
    resume.click(on_resume, inputs=[run_name, widgets[0]], outputs=shown, api_name="train_resume",
                 concurrency_limit=1, concurrency_id="train_control")
    # The API's estimate (the page's runs on every change above).
    gr.Button("Estimate", visible=False).click(on_estimate, inputs=inputs, outputs=estimate,
                                               api_name="train_estimate")
    timer.tick(on_poll, inputs=run_name, outputs=shown, api_name="train_status", show_progress="hidden",
               concurrency_limit=None)
    runs.input(on_pick, inputs=runs, outputs=run_name, api_visibility="private")
    # like the Generate tab's rescan: private (the lists are what the page shows; App.rescan is rate-limited)
    refresh.click(on_refresh_lists, outputs=[model, dataset], api_visibility="private",
                  concurrency_limit=1, concurrency_id="rescan")
    # On page load: reattach to the run that is training now (or the newest run).
    gr.on(triggers=None, fn=on_load, outputs=[runs, run_name], api_visibility="private")
