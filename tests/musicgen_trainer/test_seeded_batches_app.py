"""The app batches continuation requests too: requests with an audio prompt each (their own uploads)
waiting together for the same model and settings are generated as one batch per kept prompt length,
each row continuing its own upload with its own seed, each result the request's clip alone; an
unreadable upload fails its request alone; text requests never join them."""
import json

import numpy as np
import soundfile as sf

from musicgen_trainer import generation
from musicgen_trainer.app import backend, batching
from musicgen_trainer.app.backend import ModelCache

from test_app_batching import _audio, _Counting, _request, _submit_together


def _upload(folder, name, seconds, freq, rate=22_050):
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(folder / name, 0.3 * np.sin(2 * np.pi * freq * t), rate)
    return str(folder / name)


def test_continuation_requests_waiting_together_run_as_batches_each_equal_to_alone(tiny_model, tmp_path,
                                                                                    monkeypatch):
    cache = ModelCache(loader=lambda name, device=None: tiny_model)
    uploads = tmp_path / "uploads"
    (uploads / "notes.wav").parent.mkdir(parents=True, exist_ok=True)
    (uploads / "notes.wav").write_text("not audio")

    def continuation(seed, name, seconds, freq, prompt="rock"):
        path = str(uploads / "notes.wav") if name == "notes.wav" else _upload(uploads, name, seconds, freq)
        return _request(seed, duration=0.3, prompt=prompt, audio_prompt=path, upload_roots=[str(uploads)])
    requests = [continuation(3, "a.wav", 0.4, 220), continuation(4, "b.wav", 0.4, 330, prompt="jazz"),
                continuation(5, "c.wav", 0.2, 440), continuation(6, "notes.wav", 0, 0), _request(7, duration=0.3)]
    sizes, real = [], generation.generate_continuation
    monkeypatch.setattr(generation, "generate_continuation",
                        lambda model, audio, *a, **k: sizes.append(len(audio)) or real(model, audio, *a, **k))
    run = _Counting()
    outcomes = _submit_together(batching.GenerationBatcher(max_batch=8, run=run), requests, tmp_path / "out", cache)
    assert run.sizes == [4, 1]         # the continuations together, the text request apart
    assert sizes == [2, 1]             # a and b keep 0.4 s each: one batch; c keeps 0.2 s: its own
    assert isinstance(outcomes[3], ValueError) and "audio prompt" in str(outcomes[3])  # the unreadable upload alone
    for i in (0, 1, 2, 4):
        assert isinstance(outcomes[i], backend.AppResult), outcomes[i]
    assert "batch of 2" in outcomes[0].summary and "batch of" not in outcomes[2].summary
    monkeypatch.undo()
    for outcome, request in zip(outcomes[:3], requests[:3]):
        alone = backend.run_request(request, cache, tmp_path / "alone")
        record, alone_record = (json.loads(r.json.read_text()) for r in (outcome, alone))
        assert record["seed"] == request.generation.seed and record["audio_prompt"] == "upload"
        assert record["audio_prompt_seconds_used"] == alone_record["audio_prompt_seconds_used"]
        assert f"continues {alone_record['audio_prompt_seconds_used']:.2f} s" in outcome.summary
        np.testing.assert_allclose(_audio(outcome.wav), _audio(alone.wav), atol=1e-4)
        assert outcome.png.is_file()
