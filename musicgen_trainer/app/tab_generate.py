"""The Generate tab: pick a model (and a LoRA adapter), write a prompt, get audio, its spectrogram
and WAV/MIDI downloads (``api_name="generate"``, the page's original API, unchanged)."""
from __future__ import annotations

import logging
import typing as tp

from ..generation import MUSICGEN_CFG_COEF, GenerationConfig
from .backend import APP_MAX_PROMPT_CHARS, NO_ADAPTER

logger = logging.getLogger("musicgen_trainer.app")

DEFAULTS = GenerationConfig(cfg_coef=MUSICGEN_CFG_COEF)  # the page's initial sampling settings (a slider needs a number)
GUIDANCE_SLIDER_MAX = 10.0  # the guidance slider's end (further when a model's own guidance is higher)


def build_generate_tab(app) -> None:
    """The tab's controls and events, inside the page's ``gr.Tab`` context; ``app`` is the page's ``App``."""
    import gradio as gr

    from .backend import AppRequest

    default = app.default_model()

    def on_model(key):
        # The guidance slider moves to the model's own guidance (a transformers folder's
        # guidance_scale, 3 for MusicGen), what generate.py uses without --cfg-coef; the user may move it.
        value = app.value_of(key) or key
        limit = app.duration_limit(value)
        own = app.guidance(value)
        return (gr.CheckboxGroup(choices=app.genre_choices(value), value=[]),
                gr.Slider(maximum=limit), app.model_note(value),
                gr.Slider(value=own, maximum=max(GUIDANCE_SLIDER_MAX, own)))

    def on_page_guidance(key):
        own = app.guidance(app.value_of(key) or key)
        return gr.Slider(value=own, maximum=max(GUIDANCE_SLIDER_MAX, own))

    def on_rescan(key):
        # Anyone who can reach the server can call this (Gradio runs any event by its number,
        # "private" only hides it from the API page and gradio_client): it is harmless, as
        # the list it returns is what the page shows, and rate-limited (see App.rescan).
        app.rescan()
        key = key if key in app.by_key else app.key_of(app.default_model())
        return gr.Dropdown(choices=app.dropdown_choices(), value=key), gr.Dropdown(choices=app.adapter_choices())

    def on_adapter(adapter_key, model_key):
        # Picking an adapter picks its base (the model it was trained on, from its record);
        # an adapter whose base the app does not list leaves the model as it is, and says so.
        adapter = app.adapter_of(adapter_key)
        if adapter is not None and adapter.base is not None:
            model_key = app.key_of(adapter.base)
        return gr.update(value=model_key), app.adapter_note(adapter_key, app.value_of(model_key) or model_key)

    def on_pair(model_key, adapter_key):
        return app.adapter_note(adapter_key, app.value_of(model_key) or model_key)

    def on_generate(model, prompt, genres, duration, audio_prompt, top_k, top_p, temperature, cfg_coef=None,
                    seed=-1, midi=False, adapter=NO_ADAPTER, progress=gr.Progress()):
        # cfg_coef=None: Gradio makes an input whose value is None optional in the API only when
        # the function's argument defaults to None (seed, midi: their sliders' values are the API's).
        from dataset_tools.audio_io import AudioDecodeError

        from ..models import ModelUnavailableError
        from ..media import TranscriptionUnavailable

        def report(stage: str, done: int, total: int) -> None:
            progress((done, total), desc=stage, unit="steps" if stage == "generating" else "")
        model = app.value_of(model) or model  # a key from the page; unknown ones fail the allow-list
        listed = app.adapter_of(adapter)
        adapter = listed.value if listed else (None if adapter in (None, "", NO_ADAPTER) else adapter)
        try:
            generation = GenerationConfig(duration=duration, top_k=int(top_k),
                                          top_p=float(top_p), temperature=float(temperature),
                                          cfg_coef=None if cfg_coef is None else float(cfg_coef),
                                          seed=None if seed is None or int(seed) < 0 else int(seed))
            request = AppRequest(model=model, allowed_models=list(app.by_value), prompt=prompt or "",
                                 genres=genres or [], generation=generation, max_duration=app.duration_limit(model),
                                 audio_prompt=audio_prompt, upload_roots=_upload_roots(), midi=bool(midi),
                                 adapter=adapter, allowed_adapters=app.adapters)
            # Waits here for its turn; requests waiting together for the same settings run as one batch.
            result = app.batcher.submit(request, app.cache, app.out, report)
        except (ValueError, ModelUnavailableError, AudioDecodeError, TranscriptionUnavailable) as exc:
            raise gr.Error(app.public_text(str(exc)), print_exception=False) from None
        except Exception as exc:  # never a traceback in the page; the log has it
            logger.exception("generation failed")
            first = app.public_text((str(exc).splitlines() or [""])[0][:300])
            raise gr.Error(f"generation failed: {exc.__class__.__name__}: {first}", print_exception=False) from None
        midi_button = gr.DownloadButton("Download MIDI", value=str(result.midi) if result.midi else None,
                                        visible=result.midi is not None)
        return (str(result.wav), str(result.png), gr.DownloadButton("Download WAV", value=str(result.wav)),
                midi_button, result.summary)

    gr.Markdown("Prompt a pretrained model or your fine-tune.")
    with gr.Row():
        with gr.Column(scale=5):
            with gr.Row():
                model = gr.Dropdown(choices=app.dropdown_choices(), value=app.key_of(default),
                                    label="Model", scale=3, elem_id="model")
                model.preprocess = _accepting_export_folders(app, model.preprocess)
                # Picking an adapter picks its base model (see on_adapter).
                adapter = gr.Dropdown(choices=app.adapter_choices(), value=NO_ADAPTER, label="LoRA adapter",
                                      scale=2, elem_id="adapter")
            with gr.Row():
                adapter_note = gr.Markdown(elem_id="adapter-note")
                rescan = gr.Button("Rescan checkpoints", size="sm", scale=0, min_width=160)
            note = gr.Markdown(app.model_note(default))
            prompt = gr.Textbox(label="Prompt", lines=2, max_length=APP_MAX_PROMPT_CHARS,
                                placeholder="e.g. warm piano trio, brushed drums, late night",
                                elem_id="prompt")
            genres = gr.CheckboxGroup(choices=app.genre_choices(default), label="Genres",
                                      elem_id="genres")
            duration = gr.Slider(0.5, app.duration_limit(default),
                                 value=min(DEFAULTS.duration, app.duration_limit(default)),
                                 step=0.5, label="Duration (seconds)", elem_id="duration")
            audio_prompt = gr.Audio(sources=["upload"], type="filepath",
                                    label="Audio prompt (optional): the music continues from its end")
            with gr.Accordion("Advanced sampling", open=False):
                # Defaults and explanations are GenerationConfig's (the same as generate.py's flags).
                top_k = gr.Slider(0, 1000, value=DEFAULTS.top_k, step=1, label="Top-k", info=_help("top_k"))
                top_p = gr.Slider(0.0, 1.0, value=DEFAULTS.top_p, step=0.01, label="Top-p", info=_help("top_p"))
                temperature = gr.Slider(0.05, 2.0, value=DEFAULTS.temperature, step=0.05, label="Temperature",
                                        info=_help("temperature"))
                # Starts at (on_page_guidance, at page load) and follows (on_model) the chosen model's
                # own guidance. Its built value is None, the API's default: a call that leaves the
                # guidance out gets the model it asked for's own, not the preselected model's.
                # (Slider(value=None) stores its minimum, so None is set on the instance.)
                cfg_coef = gr.Slider(0.0, max(GUIDANCE_SLIDER_MAX, app.guidance(default)), step=0.1,
                                     label="Guidance (CFG coefficient)", info=_help("cfg_coef"), elem_id="cfg-coef")
                cfg_coef.value = None
                cfg_coef.preprocess = _none_is_models_own(cfg_coef.preprocess)
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: random; the seed used is shown)")
            midi = gr.Checkbox(value=app.midi_default, label="Transcribe to MIDI (basic-pitch)")
            run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=5):
            audio = gr.Audio(label="Generated audio", type="filepath", interactive=False, elem_id="output-audio")
            image = gr.Image(label="Mel spectrogram", type="filepath", interactive=False, elem_id="spectrogram")
            with gr.Row():
                wav_button = gr.DownloadButton("Download WAV", value=None, elem_id="download-wav")
                midi_button = gr.DownloadButton("Download MIDI", value=None, visible=False,
                                                elem_id="download-midi")
            summary = gr.Markdown(elem_id="summary")
    model.change(on_model, inputs=model, outputs=[genres, duration, note, cfg_coef], api_visibility="private")
    model.change(on_pair, inputs=[model, adapter], outputs=adapter_note, api_visibility="private")
    adapter.change(on_adapter, inputs=[adapter, model], outputs=[model, adapter_note], api_visibility="private")
    rescan.click(on_rescan, inputs=model, outputs=[model, adapter], api_visibility="private",
                 concurrency_limit=1, concurrency_id="rescan")
    # On page load too: a fine-tune exported since the page was built (e.g. by the Train tab) is offered.
    gr.on(triggers=None, fn=on_rescan, inputs=model, outputs=[model, adapter], api_visibility="private")
    gr.on(triggers=None, fn=on_page_guidance, inputs=model, outputs=cfg_coef, api_visibility="private")
    # The adapter comes last, optional ("none"): API scripts written before it still work.
    # Handlers only wait in the batcher (its one worker does the generating, one batch at a time, and
    # Compare's generations take the same lock): up to two batches' worth wait together, so the next
    # batch gathers while one runs. Each waiting handler holds one of Gradio's worker threads: launch
    # adds these to the threads the other tabs keep (page.server_threads).
    run.click(on_generate, inputs=[model, prompt, genres, duration, audio_prompt, top_k, top_p, temperature,
                                   cfg_coef, seed, midi, adapter],
              outputs=[audio, image, wav_button, midi_button, summary], api_name="generate",
              concurrency_limit=generate_concurrency(app.batcher.max_batch), concurrency_id="generate-batch")


def generate_concurrency(max_batch: int) -> int:
    """Generate requests let into the batcher at once (each holds a Gradio worker thread while it
    waits): two batches' worth, so the next batch gathers while one runs."""
    return 2 * int(max_batch)


def _accepting_export_folders(app, preprocess):
    """The model Dropdown's ``preprocess``, also taking a listed fine-tune's server folder.

    API scripts written before fine-tunes had keys send the folder itself (as in
    ``checkpoints/my-run/export``); such a value becomes its key, and Gradio then checks the
    value against the choices as usual, so anything not listed is still refused. (A wrapper on
    the instance: subclassing a Gradio component makes Gradio write a ``.pyi`` beside this file.)
    """
    def wrapped(payload):
        if isinstance(payload, str) and payload not in app.by_key and payload in app.by_value:
            payload = app.key_of(payload)
        return preprocess(payload)
    return wrapped


def _none_is_models_own(preprocess):
    """The guidance Slider's ``preprocess``, also taking None (from an API caller): the model's own
    guidance, as generate.py without ``--cfg-coef``. (A wrapper on the instance, as above.)"""
    def wrapped(payload):
        return None if payload is None else preprocess(payload)
    return wrapped


def _upload_roots() -> tp.List[str]:
    from gradio.utils import get_upload_folder
    return [get_upload_folder()]


def _help(name: str) -> str:
    """A sampling control's explanation: the GenerationConfig field's help text."""
    import dataclasses
    meta = {f.name: f.metadata for f in dataclasses.fields(GenerationConfig)}[name]
    return (meta.get("cli") or {}).get("help", "")
