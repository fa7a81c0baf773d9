"""The Gradio app driven end to end through gradio_client, plus its backend's rules
(model list, genre choices, model cache, request bounds, uploads only)."""
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_trainer.app.backend import BASE_GENRES, AppRequest, ModelCache


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """(app, client, export folder): the page on a free local port, one fine-tune under checkpoints/."""
    from gradio_client import Client

    from musicgen_trainer.app.page import App, serve_in_background
    from musicgen_trainer.exports import export_model
    root = tmp_path_factory.mktemp("app")
    export = export_model(tiny_model, root / "checkpoints" / "jazzrun" / "export",
                          extra={"genres": ["jazz", "hip_hop"], "caption_examples": ["Jazz music, Blue in Green"]})
    app = App(checkpoints=str(root / "checkpoints"), out=str(root / "out"),
              pretrained=["facebook/musicgen-small"], midi_default=False)
    demo, url = serve_in_background(app)
    try:
        yield app, Client(url, verbose=False), export
    finally:
        demo.close()


def _call(client, model, prompt="", genres=(), duration=1.0, audio=None, seed=5, midi=False, top_k=250):
    return client.predict(model, prompt, list(genres), duration, audio, top_k, 0.0, 1.0, 3.0, seed, midi,
                          api_name="/generate")


def _seconds(path):
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_fine_tune_request_returns_audio_spectrogram_and_downloads(served):
    app, client, export = served
    assert app.default_model() == str(export)  # a fine-tune is preselected when there is one
    wav, png, wav_button, midi_button, summary = _call(client, str(export), "piano", ["jazz"], duration=1.0)
    assert _seconds(wav) == 1.0
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(wav_button["value"]).read_bytes() == Path(wav).read_bytes()
    assert midi_button["visible"] is False
    assert "seed 5" in summary and "prompt: Jazz music, piano" in summary
    # The parameters were recorded next to the result on the server.
    meta = json.loads(next(Path(app.out).glob("*/musicgen_s5.json")).read_text())
    assert meta["prompt"] == "Jazz music, piano" and meta["model"] == str(export) and meta["duration"] == 1.0


def test_same_seed_same_audio_and_model_loaded_once(served):
    app, client, _ = served
    a = _call(client, "tiny", "rock", duration=0.5, seed=3)[0]
    b = _call(client, "tiny", "rock", duration=0.5, seed=3)[0]
    assert np.array_equal(sf.read(a)[0], sf.read(b)[0])
    assert "tiny" in app.cache


def test_audio_prompt_upload_is_continued_and_transcribed(served, tmp_path):
    from gradio_client import handle_file
    _, client, _ = served
    t = np.arange(int(0.6 * 44100)) / 44100
    upload = tmp_path / "riff.wav"
    sf.write(upload, 0.3 * np.sin(2 * np.pi * 262 * t), 44100)
    # Genres are checked against the page's initial choices (the fine-tune's) for API callers.
    wav, _, _, midi_button, summary = _call(client, "tiny", "", ["jazz"], duration=0.5, audio=handle_file(str(upload)),
                                            midi=True)
    assert _seconds(wav) == pytest.approx(1.1)  # 0.6 s prompt + 0.5 s new
    assert "continues 0.60 s of your audio" in summary
    assert midi_button["visible"] is True and Path(midi_button["value"]).read_bytes()[:4] == b"MThd"


@pytest.mark.parametrize("model, kwargs, message", [
    ("facebook/musicgen-small", {}, "weights are not in the local cache"),
    ("tiny", {"duration": 100.0}, "greater than maximum"),
    ("/etc", {}, "not in the list of choices"),
    ("tiny", {"prompt": "x" * 600}, "the limit is 500"),
])
def test_errors_are_messages_not_tracebacks(served, model, kwargs, message):
    from gradio_client.exceptions import AppError
    _, client, _ = served
    with pytest.raises(AppError) as err:
        _call(client, model, **kwargs)
    assert message in str(err.value) and "Traceback" not in str(err.value)


def test_model_list_and_genre_choices(served):
    app, _, export = served
    values = [c.value for c in app.choices]
    assert values == [str(export), "tiny", "facebook/musicgen-small"]
    assert app.genre_choices(str(export)) == ["jazz", "hip_hop"]
    assert app.genre_choices("tiny") == list(BASE_GENRES)
    assert app.duration_limit("tiny") == 60.0
    assert "Trained on: jazz, hip_hop" in app.model_note(str(export))


def test_model_cache_keeps_the_most_recently_used():
    loads = []
    cache = ModelCache(capacity=2, loader=lambda name, device=None: loads.append(name) or object())
    a = cache.get("a")
    cache.get("b")
    assert cache.get("a") is a           # reused, not reloaded
    cache.get("c")                        # evicts b, the least recently used
    assert "a" in cache and "b" not in cache
    assert loads == ["a", "b", "c"]


def test_request_reads_only_uploaded_files(tmp_path):
    from musicgen_trainer.generation import GenerationConfig
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="uploaded through this page"):
        AppRequest(model="tiny", allowed_models=["tiny"], audio_prompt=str(secret),
                   upload_roots=[str(tmp_path / "uploads")])
    with pytest.raises(ValueError, match="choose a model from the list"):
        AppRequest(model="/etc/passwd", allowed_models=["tiny"])
    with pytest.raises(ValueError, match="at most 60 seconds"):
        AppRequest(model="tiny", allowed_models=["tiny"], generation=GenerationConfig(duration=61))
    ok = AppRequest(model="tiny", allowed_models=["tiny"], generation=GenerationConfig(seed=None),
                    prompt="  lo-fi   jazz ")
    assert 0 <= ok.generation.seed < 2 ** 31 and ok.prompt == "lo-fi jazz"


def test_command_line_defaults_are_safe():
    from musicgen_trainer.app.page import build_parser
    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1" and args.share is False and args.max_duration == 60.0
