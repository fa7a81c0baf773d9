"""Library generation on the tiny model: exact lengths, batches, seeds, continuation,
windowed (beyond the model's window) generation, progress, melody errors, prompts."""
import json

import numpy as np
import pytest
import torch

from musicgen_trainer.generation import (GenerationConfig, generate, generate_continuation,
                                         generate_with_melody, prepare_audio_prompt)


@pytest.fixture(scope="module")
def short_window_model():
    """A tiny model whose window is 0.6 s (30 frames): windowed generation in a few steps.

    Built with the default window, then narrowed: audiocraft's MusicGen constructor sets an
    18 s extend stride and rejects windows of 18 s or less at construction time.
    """
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    model = build_tiny_musicgen(TinyConfig(seed=1))
    model.max_duration = 0.6
    return model


@pytest.mark.parametrize("duration", [0.02, 0.73, 1.0])
def test_exact_duration_for_a_batch(tiny_model, duration):
    wav = generate(tiny_model, ["lo-fi jazz", "rock", ""], GenerationConfig(duration=duration, seed=1))
    assert wav.shape == (3, 1, round(duration * tiny_model.sample_rate))
    assert wav.dtype == torch.float32 and torch.isfinite(wav).all()


def test_batch_items_differ_and_seed_reproduces(tiny_model):
    cfg = GenerationConfig(duration=0.4, seed=11)
    a = generate(tiny_model, ["folk fiddle", "heavy metal"], cfg)
    b = generate(tiny_model, ["folk fiddle", "heavy metal"], cfg)
    c = generate(tiny_model, ["folk fiddle", "heavy metal"], GenerationConfig(duration=0.4, seed=12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])


def test_generation_leaves_global_rng_untouched(tiny_model):
    state = torch.random.get_rng_state()
    generate(tiny_model, ["x"], GenerationConfig(duration=0.1, seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_progress_callback_counts_every_step_to_the_end(tiny_model):
    calls = []
    generate(tiny_model, ["x"], GenerationConfig(duration=0.3, seed=0), progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    # 15 frames + 3 steps of codebook delay, one callback per step, ending exactly at the total.
    assert [d for d, _ in calls] == list(range(1, total + 1)) and total == 15 + 3


def test_long_generation_beyond_the_window(short_window_model):
    model = short_window_model
    cfg = GenerationConfig(duration=1.5, seed=2, extend_stride=0.3)  # 2.5 windows
    calls = []
    wav = generate(model, ["ambient", "techno"], cfg, progress=lambda d, t: calls.append((d, t)))
    assert wav.shape == (2, 1, round(1.5 * model.sample_rate))
    assert torch.isfinite(wav).all() and wav[..., -model.sample_rate // 4:].abs().sum() > 0
    # Several windows ran (more steps than a single pass over 75 frames would take) and the
    # planned total matched what audiocraft did.
    assert calls[-1][0] == calls[-1][1] > 75 + 3
    again = generate(model, ["ambient", "techno"], cfg)
    assert torch.equal(wav, again)


def _codes(model, wav):
    with torch.no_grad():
        codes, _ = model.compression_model.encode(wav.to(model.device))
    return codes


def test_continuation_returns_prompt_then_new_audio(tiny_model):
    sr_in = 44_100
    t = np.arange(int(0.9 * sr_in)) / sr_in
    stereo = torch.from_numpy(np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32))
    prompt = prepare_audio_prompt(tiny_model, stereo, sr_in)
    hop = tiny_model.sample_rate // int(tiny_model.frame_rate)
    # Resampled to 32 kHz, made mono, trimmed at the start to whole frames (0.9 s -> 45 frames).
    assert prompt.shape == (1, 1, 45 * hop)
    cfg = GenerationConfig(duration=0.5, seed=4)
    out = generate_continuation(tiny_model, stereo, sr_in, ["jazz", "rock"], cfg)
    assert out.shape == (2, 1, prompt.shape[-1] + round(0.5 * tiny_model.sample_rate))
    # The codes of the returned audio's prompt part are the prompt's own codes: the model
    # continued the prompt rather than starting afresh.
    tiny_model.set_generation_params(duration=(45 + 25 + 0.5) / tiny_model.frame_rate, top_k=250)
    with torch.random.fork_rng():
        torch.manual_seed(4)
        _, tokens = tiny_model.generate_continuation(prompt.expand(2, -1, -1), tiny_model.sample_rate,
                                                     ["jazz", "rock"], return_tokens=True)
    assert torch.equal(tokens[..., :45], _codes(tiny_model, prompt).expand(2, -1, -1))
    assert torch.equal(out, tiny_model.generate_audio(tokens)[..., :out.shape[-1]].cpu())


def test_continuation_keeps_only_the_prompt_end(tiny_model):
    sr = tiny_model.sample_rate
    audio = torch.zeros(1, 3 * sr)
    audio[0, -sr // 2:] = 0.5  # the last 0.5 s is the part that must be kept
    kept = prepare_audio_prompt(tiny_model, audio, sr, max_prompt_seconds=0.5)
    assert kept.shape[-1] == sr // 2 and torch.allclose(kept, torch.full_like(kept, 0.5))
    with pytest.raises(ValueError, match="too short"):
        prepare_audio_prompt(tiny_model, torch.zeros(100), sr)


def test_long_continuation(short_window_model):
    model = short_window_model
    sr = model.sample_rate
    prompt = torch.randn(1, sr // 5) * 0.1  # 0.2 s, inside the default half-window limit (0.3 s)
    out = generate_continuation(model, prompt, sr, ["x"], GenerationConfig(duration=1.2, seed=0, extend_stride=0.3))
    assert out.shape == (1, 1, sr // 5 + round(1.2 * sr))


def test_melody_on_a_model_without_melody_conditioning(tiny_model):
    with pytest.raises(ValueError, match="model tiny has no melody conditioning"):
        generate_with_melody(tiny_model, torch.zeros(1, 32000), 32000, ["x"], GenerationConfig(duration=0.2))


def test_melody_is_passed_to_audiocraft(tiny_model, monkeypatch):
    """For melody models, the call goes to audiocraft's generate_with_chroma with each prompt's
    melody (the real melody model needs downloaded weights; audiocraft does the conditioning)."""
    seen = {}

    def fake_chroma(descriptions, melody_wavs, melody_sample_rate, progress=False):
        seen.update(descriptions=descriptions, shapes=[tuple(m.shape) for m in melody_wavs], rate=melody_sample_rate)
        frames = int(tiny_model.duration * tiny_model.frame_rate)
        return torch.zeros(len(descriptions), 1, frames * 640)

    monkeypatch.setattr(tiny_model, "generate_with_chroma", fake_chroma, raising=False)
    monkeypatch.setattr("musicgen_trainer.generation.has_melody_conditioning", lambda m: True)
    out = generate_with_melody(tiny_model, torch.zeros(2, 44100), 44100, ["a", "b"], GenerationConfig(duration=0.3))
    assert seen == {"descriptions": ["a", "b"], "shapes": [(2, 44100), (2, 44100)], "rate": 44100}
    assert out.shape == (2, 1, round(0.3 * 32000))


@pytest.mark.parametrize("kwargs, message", [
    ({"duration": -1}, "duration"), ({"duration": 0}, "duration"), ({"duration": 1e6}, "at most 600"),
    ({"duration": float("nan")}, "duration"), ({"top_k": -1}, "top_k"), ({"top_p": 1.5}, "top_p"),
    ({"temperature": 0}, "temperature"), ({"top_k": 0, "top_p": 0.0}, "top_k or top_p"),
    ({"extend_stride": 0}, "extend_stride"), ({"seed": -5}, "seed"),
])
def test_config_rejects_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_top_k_above_the_codebook_is_refused(tiny_model):
    with pytest.raises(ValueError, match="at most 2048"):
        generate(tiny_model, ["x"], GenerationConfig(duration=0.1, top_k=5000))


def test_genre_captions_use_the_dataset_template():
    from dataset_tools.captions import DEFAULT_TEMPLATE, caption_values, genre_words, render_caption
    from musicgen_trainer.outputs import build_prompts, genre_caption, parse_genres, unknown_genres

    # One genre: exactly what the dataset tools write for a track with only a genre and a tempo.
    expected = render_caption(DEFAULT_TEMPLATE, caption_values(genre=genre_words("hip_hop", False), title="",
                                                               artist="", bpm=90, key=None, instrument="", name=""))
    assert genre_caption(["hip_hop"], bpm=90) == expected == "Hip hop music, medium tempo at 90 bpm"
    assert genre_caption(["jazz", "rock"]) == "Jazz and rock music"
    assert genre_caption(["jazz", "rock", "folk"], key="A minor") == "Jazz, rock and folk music, in A minor"
    assert parse_genres(" jazz, Rock ,,jazz ") == ["jazz", "Rock"]
    assert build_prompts(["piano trio", ""], ["jazz"]) == ["Jazz music, piano trio", "Jazz music"]
    assert build_prompts([], []) == [""]
    assert unknown_genres(["jazz", "hip hop", "polka"], ["jazz", "hip_hop"]) == ["polka"]


def test_export_info_reads_training_genres(tiny_model, tmp_path):
    from musicgen_trainer.exports import export_info, export_model, find_exports
    folder = export_model(tiny_model, tmp_path / "run" / "export",
                          extra={"genres": ["jazz", "rock"], "caption_examples": ["Jazz music, Blue"]})
    (tmp_path / "run" / "checkpoints").mkdir()  # not an export
    assert find_exports(tmp_path) == [folder]
    info = export_info(folder)
    assert info.genres == ["jazz", "rock"] and info.caption_examples == ["Jazz music, Blue"]
    assert info.max_duration == tiny_model.max_duration
    json.dumps(info.__dict__)  # plain data
