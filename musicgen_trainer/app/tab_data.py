"""The Data tab: pick a library under the data root, prepare it (a background job with a progress
bar; a reloaded page finds it again), then see the report and the hours per genre.

API (gradio_client): ``/data_folders``, ``/prepare_start``, ``/prepare_stop``, ``/prepare_status``.
The work is in ``studio_data``; this file is layout and events only.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import typing as tp

from dataset_tools.options import PrepareOptions

from . import studio_data as sd

logger = logging.getLogger("musicgen_trainer.app")
POLL_SECONDS = 1.0  # how often a page with a running job reads its status (a few small file reads)


def page_error(app, exc: BaseException):
    """A ``gr.Error`` for ``exc``: one line, no server path, no traceback."""
    import gradio as gr
    text = (str(exc).splitlines() or [""])[0][:300]
    text = sd.hide_roots(app.public_text(text), app.data_root, app.checkpoints)
    return gr.Error(text, print_exception=False)


def guarded(app, fn):
    """``fn`` with the page's error convention: input errors (ValueError: bad paths, bad options,
    ``JobBusyError``) as one-line messages, anything else logged on the server and shown as one line."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as exc:
            raise page_error(app, exc) from None
        except Exception as exc:
            logger.exception("studio request failed")
            raise page_error(app, RuntimeError(f"{exc.__class__.__name__}: {exc}")) from None
    return wrapped


def option_inputs(cls, names: tp.Sequence[str], defaults: tp.Optional[dict] = None) -> tp.List[tp.Any]:
    """One input per dataclass option ``names``: label from the name, help (``info``) and default
    from the field; checkbox for a bool, dropdown for choices, number or text otherwise."""
    import typing

    import gradio as gr
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    inputs = []
    for name in names:
        f = fields[name]
        meta = f.metadata.get("cli") or {}
        default = (defaults or {}).get(name, f.default)
        kind = hints[name]
        args = typing.get_args(kind)
        plain = next((a for a in args if a is not type(None)), kind) if args else kind
        common = dict(min_width=220, label=sd.field_label(name), info=sd.field_help(cls, name), elem_id=f"opt-{name.replace('_', '-')}")
        if plain is bool:
            inputs.append(gr.Checkbox(value=bool(default), **common))
        elif meta.get("choices"):
            inputs.append(gr.Dropdown(choices=list(meta["choices"]), value=default, **common))
        elif plain in (int, float) and type(None) in args:
            # Optional: a text box, empty for None (a Number box cannot be empty: it would send 0).
            inputs.append(gr.Textbox(value="" if default is None else f"{default:g}", max_length=40,
                                     placeholder="empty: off", **common))
        elif plain in (int, float):
            inputs.append(gr.Number(value=default, precision=0 if plain is int else None, **common))
        else:
            inputs.append(gr.Textbox(value=str(default), max_length=sd.MAX_TEXT_OPTION_CHARS, **common))
    return inputs


def progress_html(view: sd.JobView) -> str:
    """The job's state line and a progress bar (HTML; text escaped)."""
    if view.state == "none":
        return ""
    bar = f'<progress value="{view.done}" max="{view.total}" style="width:100%"></progress>' if view.total else ""
    return f'<div class="studio-job">{html.escape(view.line())}{bar}</div>'


def on_load_register(fn, outputs) -> None:
    """Run ``fn`` when a page loads (reattaching to a running job), on the page's Blocks."""
    from gradio.context import Context
    if Context.root_block is not None:
        Context.root_block.load(fn, outputs=outputs, api_visibility="private")


def build_data_tab(app) -> None:
    """The tab's controls and events, inside the page's ``gr.Tab``; ``app`` is the page's ``App``."""
    import gradio as gr

    root = app.data_root

    def libraries() -> tp.List[str]:
        return sd.choices_or_none(sd.library_choices, root)

    def on_folders():
        return gr.Dropdown(choices=libraries())

    def on_library(library):
        return sd.default_output(library)

    def on_start(library, output, *values):
        sd.start_prepare(root, library, output, dict(zip(sd.MAIN_PREPARE_OPTIONS, values)))
        return (*status(output), gr.Timer(active=True))

    def on_stop(output):
        stopped = sd.stop_prepare(root, output)
        return "stopping (progress is saved; start again to finish)" if stopped else "no prepare is running there"

    def status(output, view=None):
        """(progress, log, report, genres, chart) of ``output``'s prepare (``view``: its job, read once
        by the caller so that the timer and the text agree)."""
        view = view or sd.prepare_view(root, output)
        report, genres, chart = "", None, None
        if view.state in ("done", "failed", "stopped", "none") and (output or "").strip():
            try:
                results = sd.prepare_results(root, output)
                report, genres = results.summary, results.genres
                chart = _image(results.chart)
            except (ValueError, OSError):
                pass
        return progress_html(view), view.log, report, genres, chart

    def on_status(output):
        # One read of the job: two reads could see "running" for the timer and "done" for the text.
        view = sd.prepare_view(root, output)
        return (*status(output, view), gr.Timer(active=view.running))

    def on_load():
        running = sd.running_prepare(root)
        choices = libraries()
        if running is None:
            return gr.Dropdown(choices=choices), gr.update(), gr.Timer(active=False)
        return gr.Dropdown(choices=choices), running, gr.Timer(active=True)

    gr.Markdown("Pick a music library (a folder of genre folders, `unknown/` for unlabelled tracks) under the "
                "data root and prepare it: WAV segments, captions and manifests for training.")
    with gr.Row():
        library = gr.Dropdown(choices=libraries(), value=None, label="Library", elem_id="data-library", scale=3,
                              allow_custom_value=True)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id="data-refresh")
        output = gr.Textbox(label="Dataset folder (under the data root)", max_length=200, elem_id="data-output",
                            scale=3)
    with gr.Accordion("Prepare options", open=False), gr.Row():
        options = option_inputs(PrepareOptions, sd.MAIN_PREPARE_OPTIONS)
    with gr.Row():
        start = gr.Button("Prepare", variant="primary", elem_id="data-start")
        stop = gr.Button("Stop", elem_id="data-stop")
    progress = gr.HTML(elem_id="data-progress")
    note = gr.Markdown(elem_id="data-note")
    with gr.Accordion("Log", open=False):
        log = gr.Textbox(lines=12, max_lines=12, interactive=False, show_label=False, elem_id="data-log")
    report = gr.Markdown(elem_id="data-report")
    with gr.Row():
        genres = gr.Dataframe(headers=sd.GENRE_COLUMNS, interactive=False, label="Per genre", elem_id="data-genres")
        chart = gr.Image(label="Hours per genre", type="pil", interactive=False, elem_id="data-chart")
    timer = gr.Timer(POLL_SECONDS, active=False)
    results = [progress, log, report, genres, chart]

    library.focus(guarded(app, on_folders), outputs=library, api_visibility="private", queue=False)  # new ones since the page loaded
    refresh.click(guarded(app, on_folders), outputs=library, api_name="data_folders", queue=False)
    library.change(on_library, inputs=library, outputs=output, api_visibility="private", queue=False)
    start.click(guarded(app, on_start), inputs=[library, output, *options], outputs=[*results, timer],
                api_name="prepare_start", concurrency_limit=1, concurrency_id="studio-jobs")
    stop.click(guarded(app, on_stop), inputs=output, outputs=note, api_name="prepare_stop", queue=False)
    timer.tick(guarded(app, on_status), inputs=output, outputs=[*results, timer], api_name="prepare_status",
               queue=False)
    on_load_register(on_load, [library, output, timer])


def _image(path):
    """A PNG for an output, read here (the page gets pixels, never a server path)."""
    if path is None:
        return None
    from PIL import Image
    with Image.open(path) as image:
        return image.copy()
