"""The offline tiny MusicGen: real audiocraft structure, right shapes, deterministic."""
import math

import pytest
import torch
import torch.nn.functional as F

from musicgen_trainer import runtime
from musicgen_trainer.generation import GenerationConfig, generate
from musicgen_trainer.models import model_summary


def _attributes(captions):
    from audiocraft.modules.conditioners import ConditioningAttributes
    return [ConditioningAttributes(text={"description": c}) for c in captions]


def test_structure_matches_released_musicgen(tiny_model):
    from audiocraft.models.encodec import EncodecModel
    from audiocraft.models.lm import LMModel
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
    from audiocraft.modules.conditioners import T5Conditioner

    assert isinstance(tiny_model.compression_model, EncodecModel)
    assert isinstance(tiny_model.lm, LMModel)
    assert isinstance(tiny_model.lm.pattern_provider, DelayedPatternProvider)
    assert tiny_model.lm.pattern_provider.delays == [0, 1, 2, 3]
    assert isinstance(tiny_model.lm.condition_provider.conditioners["description"], T5Conditioner)
    assert tiny_model.lm.fuser.fuse2cond["cross"] == ["description"]
    assert tiny_model.lm.cfg_dropout.p == pytest.approx(0.3)
    summary = model_summary(tiny_model)
    assert summary["sample_rate"] == runtime.MUSICGEN_SAMPLE_RATE
    assert summary["frame_rate"] == runtime.MUSICGEN_FRAME_RATE
    assert summary["codebooks"] == runtime.MUSICGEN_CODEBOOKS
    assert summary["card"] == runtime.MUSICGEN_CARD
    assert summary["lm_parameters"] < 5_000_000  # tiny enough for CPU tests


def test_encode_gives_codes_of_expected_shape(tiny_model):
    seconds = 1.5
    generator = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 1, int(seconds * runtime.MUSICGEN_SAMPLE_RATE), generator=generator) * 0.1
    with torch.no_grad():
        codes, scale = tiny_model.compression_model.encode(wav)
    assert codes.shape == (2, runtime.MUSICGEN_CODEBOOKS, int(seconds * runtime.MUSICGEN_FRAME_RATE))
    assert codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < runtime.MUSICGEN_CARD
    assert len(torch.unique(codes)) > 4  # random codebooks still use several codes
    assert not torch.equal(codes[0], codes[1])  # different audio, different codes
    with torch.no_grad():
        decoded = tiny_model.compression_model.decode(codes, scale)
    assert decoded.shape == wav.shape


def test_compute_predictions_gives_finite_loss(tiny_model):
    codes = torch.randint(0, runtime.MUSICGEN_CARD, (2, 4, 40))
    out = tiny_model.lm.compute_predictions(codes, _attributes(["jazz piano", ""]))
    assert out.logits.shape == (2, 4, 40, runtime.MUSICGEN_CARD)
    assert out.mask.shape == (2, 4, 40)
    # The delay pattern leaves the last k steps of codebook k without valid context.
    assert out.mask[0, 0].all() and not out.mask[0, 3, -3:].any()
    loss = F.cross_entropy(out.logits[out.mask], codes[out.mask])
    assert torch.isfinite(loss)
    # Random init: close to the uniform cross-entropy log(card).
    assert abs(loss.item() - math.log(runtime.MUSICGEN_CARD)) < 1.0


@pytest.mark.parametrize("duration", [1.0, 0.73])
def test_generate_returns_requested_duration(tiny_model, duration):
    wav = generate(tiny_model, ["lo-fi jazz", "rock"], GenerationConfig(duration=duration, seed=1))
    assert wav.shape == (2, 1, round(duration * tiny_model.sample_rate))
    assert torch.isfinite(wav).all()


def test_generate_is_reproducible_for_a_seed(tiny_model):
    cfg = GenerationConfig(duration=0.5, seed=7)
    a = generate(tiny_model, ["folk fiddle"], cfg)
    b = generate(tiny_model, ["folk fiddle"], cfg)
    c = generate(tiny_model, ["folk fiddle"], GenerationConfig(duration=0.5, seed=8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generate_continuation_returns_prompt_plus_requested_duration(tiny_model):
    sr = tiny_model.sample_rate
    prompt = torch.randn(1, 1, sr // 2) * 0.1
    tiny_model.set_generation_params(duration=1.5, top_k=50)
    with torch.no_grad():
        out = tiny_model.generate_continuation(prompt, sr, ["jazz"], progress=False)
    # audiocraft's duration is the total length, prompt included.
    assert out.shape == (1, 1, int(1.5 * sr))


def test_build_is_deterministic_per_seed():
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    state_before = torch.random.get_rng_state()
    a = build_tiny_musicgen(TinyConfig(seed=3)).lm.state_dict()
    b = build_tiny_musicgen(TinyConfig(seed=3)).lm.state_dict()
    c = build_tiny_musicgen(TinyConfig(seed=4)).lm.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state_before)  # global RNG untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_empty_caption_still_tokenizes(tiny_model):
    conditioner = tiny_model.lm.condition_provider.conditioners["description"]
    tokens = conditioner.tokenize([""])
    assert tokens["input_ids"].shape[1] >= 1  # T5 crashes on zero-length input
    embeds, mask = conditioner(tokens)
    assert mask.sum() == 0 and torch.isfinite(embeds).all()


def test_short_window_model_generates_beyond_its_window():
    """A tiny model with a 2 s window builds, and 3.3 s come out by windowed continuation."""
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    model = build_tiny_musicgen(TinyConfig(max_duration=2.0))
    assert model.max_duration == 2.0
    wav = generate(model, ["jazz"], GenerationConfig(duration=3.3, seed=1, extend_stride=1.0))
    assert wav.shape == (1, 1, round(3.3 * model.sample_rate))
    assert wav[..., -1000:].abs().sum() > 0  # the continuation really produced audio
