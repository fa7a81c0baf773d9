"""The Compare tab: two models (with their LoRA adapters), one prompt, one seed, two players side
by side; blind mode hides which is which until Reveal. The backend is ``studio_compare``."""
from __future__ import annotations

import logging

from .backend import APP_MAX_PROMPT_CHARS, NO_ADAPTER
from . import studio_compare as sc

logger = logging.getLogger("musicgen_trainer.app")


def build_compare_tab(app) -> None:
    """The tab's controls and events, inside the page's ``gr.Tab`` context."""
    import gradio as gr

    from ..models import ModelUnavailableError

    def on_compare(model_a, adapter_a, model_b, adapter_b, prompt, seed, duration, blind, progress=gr.Progress()):
        def report(stage, done, total):
            progress((done, total), desc=stage)
        try:
            result = sc.compare(app, sc.Side(model_a, adapter_a or NO_ADAPTER), sc.Side(model_b, adapter_b or NO_ADAPTER),
                                prompt, seed, duration, bool(blind), report)
        except (ValueError, ModelUnavailableError) as exc:
            raise gr.Error(app.public_text(str(exc)), print_exception=False) from None
        except Exception as exc:  # never a traceback in the page; the log has it
            logger.exception("comparison failed")
            first = app.public_text((str(exc).splitlines() or [""])[0][:300])
            raise gr.Error(f"comparison failed: {exc.__class__.__name__}: {first}", print_exception=False) from None
        left, right = result.wavs
        return (gr.Audio(value=str(left), label=result.labels[0]), gr.Audio(value=str(right), label=result.labels[1]),
                result.summary, result.token, "" if result.blind else f"A = {result.labels[0]} · B = {result.labels[1]}")

    def on_reveal(token):
        try:
            return sc.reveal(app, token)
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def on_model(model_key):
        text, html = sc.evaluation_report(app, model_key)
        return text, gr.DownloadButton(value=str(html) if html else None, visible=html is not None)

    def on_adapter(adapter_key, model_key):
        adapter = app.adapter_of(adapter_key)  # an adapter picks its base, as on the Generate tab
        if adapter is not None and adapter.base is not None:
            model_key = app.key_of(adapter.base)
        return gr.update(value=model_key)

    gr.Markdown("Listen to two models on the same prompt and seed. Blind mode hides which is which until Reveal.")
    keys = [key for _, key in app.dropdown_choices()]
    default_b = app.key_of(app.default_model())
    default_a = next((k for k in keys if k != default_b), default_b)
    with gr.Row():
        model_a, adapter_a, report_a, report_a_file = _side_column(app, 1, "a", default_a)
        model_b, adapter_b, report_b, report_b_file = _side_column(app, 2, "b", default_b)
    prompt = gr.Textbox(label="Prompt", lines=2, max_length=APP_MAX_PROMPT_CHARS, elem_id="cmp-prompt",
                        placeholder="e.g. warm piano trio, brushed drums")
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="Seed (the same for both; -1: random)", elem_id="cmp-seed")
        duration = gr.Slider(0.5, app.max_duration, value=min(5.0, app.max_duration), step=0.5,
                             label="Duration (seconds)", elem_id="cmp-duration")
        blind = gr.Checkbox(value=True, label="Blind (order drawn per comparison)", elem_id="cmp-blind")
    run = gr.Button("Compare", variant="primary", elem_id="cmp-run")
    with gr.Row():
        audio_a = gr.Audio(label="A", type="filepath", interactive=False, elem_id="cmp-audio-a")
        audio_b = gr.Audio(label="B", type="filepath", interactive=False, elem_id="cmp-audio-b")
    summary = gr.Markdown(elem_id="cmp-summary")
    token = gr.Textbox(visible=False)
    with gr.Row():
        reveal = gr.Button("Reveal", elem_id="cmp-reveal")
        revealed = gr.Markdown(elem_id="cmp-revealed")

    def on_load():  # fine-tunes trained since the page was built (rate-limited: App.rescan)
        app.rescan()
        models, adapters = app.dropdown_choices(), app.adapter_choices()
        return (gr.Dropdown(choices=models), gr.Dropdown(choices=models), gr.Dropdown(choices=adapters),
                gr.Dropdown(choices=adapters))

    gr.on(triggers=None, fn=on_load, outputs=[model_a, model_b, adapter_a, adapter_b], api_visibility="private")
    run.click(on_compare, inputs=[model_a, adapter_a, model_b, adapter_b, prompt, seed, duration, blind],
              outputs=[audio_a, audio_b, summary, token, revealed], api_name="compare",
              concurrency_limit=1, concurrency_id="compare")  # GPU work is serial with Generate's: backend.GENERATION_LOCK
    reveal.click(on_reveal, inputs=token, outputs=revealed, api_name="compare_reveal")
    for adapter, model in ((adapter_a, model_a), (adapter_b, model_b)):
        adapter.change(on_adapter, inputs=[adapter, model], outputs=model, api_visibility="private")
    # the fine-tune's evaluation report, on load and whenever a model changes (one API endpoint: side 1's)
    gr.on(triggers=None, fn=on_model, inputs=model_a, outputs=[report_a, report_a_file], api_name="compare_report")
    gr.on(triggers=None, fn=on_model, inputs=model_b, outputs=[report_b, report_b_file], api_visibility="private")


def _side_column(app, number: int, side: str, model_key: str):
    """One side's column: its model, LoRA adapter, evaluation verdict and report button (element ids
    ``cmp-<what>-<side>``)."""
    import gradio as gr
    with gr.Column():
        model = gr.Dropdown(choices=app.dropdown_choices(), value=model_key, label=f"Model {number}",
                            elem_id=f"cmp-model-{side}")
        adapter = gr.Dropdown(choices=app.adapter_choices(), value=NO_ADAPTER, label=f"LoRA adapter {number}",
                              elem_id=f"cmp-adapter-{side}")
        report = gr.Markdown(elem_id=f"cmp-report-{side}")
        report_file = gr.DownloadButton("Open evaluation report", visible=False, elem_id=f"cmp-report-{side}-file")
    return model, adapter, report, report_file
