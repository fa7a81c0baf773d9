"""The fast decoder gives audiocraft's codes where test_fast_decode.py stops: windowed 40 s through
the product's generation functions with the real 30 s window and 18 s stride (tiny, tiny-stereo,
tiny-melody with a melody that changes across the windows), musicgen-small's shapes (random
weights; MUSICGEN_SLOW_TESTS=1), and the logits of each step at the same cache state, so that the
distribution is audiocraft's even where two codes could tie."""
import dataclasses
import os

import pytest
import torch

from musicgen_trainer.generation import GenerationConfig, generate, generate_with_melody

from decoding_helpers import fast_and_audiocraft as _fast_and_audiocraft

slow = pytest.mark.skipif(not os.environ.get("MUSICGEN_SLOW_TESTS"), reason="slow: set MUSICGEN_SLOW_TESTS=1")
MODELS = {}
SAMPLING = {  # (sampling settings, cfg_coef): top-k with guidance; greedy with guidance off (coefficient 1)
    "top_k": (dict(top_k=250, temperature=1.0), 3.0),
    "greedy": (dict(use_sampling=False), 1.0),
}
LOGIT_TOLERANCE = 1e-4  # relative to the largest logit: fp32 rounding (attention over a cache vs a concatenation)


def _model(name: str):
    """A model by name, built once per module: load_model's names, or "random:small-stereo" /
    "random:small-melody" (musicgen-small's language model size in the stereo / melody layout,
    random weights)."""
    if name not in MODELS:
        from musicgen_trainer.models import load_model
        if name.startswith("random:"):  # ~2 GB each: one at a time
            for other in [n for n in MODELS if n.startswith("random:")]:
                del MODELS[other]
        if name == "random:small-stereo":
            from musicgen_trainer.tiny import build_tiny_musicgen, random_preset
            MODELS[name] = build_tiny_musicgen(dataclasses.replace(random_preset("small"), stereo=True), name=name)
        elif name == "random:small-melody":
            from musicgen_trainer.tiny import build_tiny_melody_musicgen, random_preset
            MODELS[name] = build_tiny_melody_musicgen(random_preset("small"), name=name)
        else:
            MODELS[name] = load_model(name, device="cpu")
    return MODELS[name]


def _assert_same(fast, slow_, frames: int, model):
    (fast_codes, fast_wav), (slow_codes, slow_wav) = fast, slow_
    assert fast_codes.shape == slow_codes.shape
    assert fast_codes.shape[1] == model.lm.num_codebooks and fast_codes.shape[-1] >= frames
    assert torch.equal(fast_codes, slow_codes)
    assert torch.equal(fast_wav, slow_wav)


def _text_case(name: str, seconds: float, sampling: str, seed: int = 3, prompts=("lo-fi jazz piano", "")):
    model = _model(name)
    settings, cfg = SAMPLING[sampling]

    def call_for(decoder):
        config = GenerationConfig(duration=seconds, seed=seed, cfg_coef=cfg, decoder=decoder, **settings)
        return lambda: generate(model, list(prompts), config)
    fast, slow_ = _fast_and_audiocraft(model, call_for)
    _assert_same(fast, slow_, round(seconds * model.frame_rate), model)
    return fast


# --- windowed 40 s: the real window (30 s) and stride (18 s), two windows -----------------------

WINDOWED = 40.0


# 2000 frames: ~2000 steps of each loop, 15-75 s a case on a busy 2-core CPU: top-k with guidance in the
# normal suite (here and for the melody model), the rest with MUSICGEN_SLOW_TESTS=1.
@pytest.mark.parametrize("name, sampling", [("tiny", "top_k"), pytest.param("tiny", "greedy", marks=slow),
                                            pytest.param("tiny-stereo", "top_k", marks=slow),
                                            pytest.param("tiny-stereo", "greedy", marks=slow)])
def test_windowed_40s_gives_audiocrafts_codes(name, sampling):
    model = _model(name)
    assert model.max_duration == 30 and GenerationConfig().extend_stride == 18  # 40 s: two windows
    codes, _ = _text_case(name, WINDOWED, sampling)
    assert codes.shape[-1] == 2000


def _melody(seconds: float, rate: int) -> torch.Tensor:
    """``[1, T]``: a note every 2.5 s climbing a C major scale, so each window's chroma differs."""
    notes = [261.6, 293.7, 329.6, 349.2, 392.0, 440.0, 493.9, 523.3]
    t = torch.arange(int(seconds * rate)) / rate
    freq = torch.tensor(notes)[(t / 2.5).long() % len(notes)]
    return 0.5 * torch.sin(2 * torch.pi * torch.cumsum(freq / rate, 0))[None]


def _without_separation(model, monkeypatch):
    """``model`` (a melody model) with the stem separation skipped: the chroma is that of the whole
    mix. The tiny random separator takes over a second per second of audio on one core (a 40 s
    request separates two 30 s windows per decoder), and the separation is the same code before
    either decoder runs."""
    conditioner = model.lm.condition_provider.conditioners["self_wav"]

    def mix(self, wav, sample_rate):  # [B, C, T] -> [B, 1, T] at the conditioner's rate, as audiocraft's
        from audiocraft.data.audio_utils import convert_audio
        return convert_audio(wav, sample_rate, self.sample_rate, 1)
    monkeypatch.setattr(type(conditioner), "_get_stemmed_wav", mix)
    return model


@pytest.fixture
def melody_model(monkeypatch):
    return _without_separation(_model("tiny-melody"), monkeypatch)


def _melody_case(model, seconds: float, sampling: str, seed: int = 7):
    """generate_with_melody with each decoder (one prompt, ``_melody(seconds)``): the same codes and
    audio. Returns the melody each of audiocraft's windows was conditioned on, ``[1, C, T]`` each."""
    settings, cfg = SAMPLING[sampling]
    melody = _melody(seconds, 32000)
    windows = []
    lm = model.lm

    def call_for(decoder):
        config = GenerationConfig(duration=seconds, seed=seed, cfg_coef=cfg, decoder=decoder, **settings)
        return lambda: generate_with_melody(model, melody, 32000, ["piano"], config)

    def recording(prompt, conditions, *args, **kwargs):
        # Under decoder="audiocraft" (the fast run replaces lm.generate itself): the melody each window sees.
        windows.append(conditions[0].wav["self_wav"].wav.clone())
        return type(lm).generate(lm, prompt, conditions, *args, **kwargs)
    lm.generate = recording
    try:
        fast, slow_ = _fast_and_audiocraft(model, call_for)
    finally:
        del lm.generate
    _assert_same(fast, slow_, round(seconds * model.frame_rate), model)
    return windows


@pytest.mark.parametrize("sampling", ["top_k", pytest.param("greedy", marks=slow)])
def test_windowed_40s_melody_gives_audiocrafts_codes(sampling, melody_model):
    """Each window is conditioned on its own 30 s of the melody (audiocraft's windowed loop slices
    it at the window's offset): two windows, two different chroma conditions, the same codes."""
    windows = _melody_case(melody_model, WINDOWED, sampling)
    assert len(windows) == 2 and not torch.equal(windows[0], windows[1])


# --- musicgen-small's shapes (random weights) -------------------------------------------------

@slow
@pytest.mark.parametrize("name, sampling", [("random:small", "top_k"), ("random:small", "greedy"),
                                            ("random:small-stereo", "top_k")])
def test_random_small_shapes_give_audiocrafts_codes(name, sampling):
    codes, _ = _text_case(name, 1.0, sampling, seed=5, prompts=("lo-fi jazz piano", "rock"))
    assert codes.shape[-1] == 50


@slow
def test_random_small_melody_shapes_give_audiocrafts_codes(monkeypatch):
    """musicgen-melody's layout at musicgen-small's LM size (chroma and caption prepended, no
    cross-attention), 1 s with guidance and top-k."""
    _melody_case(_without_separation(_model("random:small-melody"), monkeypatch), 1.0, "top_k")


# --- logits of one step at the same cache state ------------------------------------------------

def _conditions(model, captions, melody):
    """audiocraft's condition tensors for ``captions`` and their null conditions (the CFG batch)."""
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
    melodies = None if melody is None else [melody] * len(captions)
    attributes, _ = model._prepare_tokens_and_attributes(captions, None, melody_wavs=melodies)
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    provider = model.lm.condition_provider
    return provider(provider.tokenize(attributes + null))


def _step_logits(model, captions, frames: int, prefill: int, melody=None):
    """Logits ``[B2, K, card]`` of every step over the same random codes (teacher-forced, both CFG
    halves): audiocraft's streaming forward, and ours (eager, then the fixed-shape step over the
    whole masked cache). The first call runs ``prefill`` steps at once, as with an audio prompt.

    Returns:
        (theirs, ours_lean, ours_general, ours_masked): lists of ``[B2, K, card]``, one per step
        (the lean eager step is the product's CPU default where ``fast_step.lean_plan`` applies).
    """
    from musicgen_trainer.fast_decode import StaticDecoder
    lm = model.lm
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, lm.card, (len(captions), lm.num_codebooks, frames), generator=g)
    sequence, _, _ = lm.pattern_provider.get_pattern(frames).build_pattern_sequence(codes, lm.special_token_id)
    sequence = torch.cat([sequence, sequence])  # both CFG halves see the same codes
    steps = sequence.shape[-1]
    condition_tensors = _conditions(model, captions, melody)
    with torch.no_grad():
        theirs = []
        with lm.streaming():
            prev = 0
            for offset in range(prefill, steps + 1):
                theirs.append(lm(sequence[..., prev:offset], [], condition_tensors=condition_tensors)[:, :, -1])
                prev = offset
        prefix, cross = lm.fuser(torch.zeros(sequence.shape[0], 0, lm.dim), condition_tensors)
        n = prefix.shape[1]
        results = []
        for mode in ("lean", "general", "masked"):
            dec = StaticDecoder(lm, sequence.shape[0], n + steps, torch.float32, torch.device("cpu"))
            dec.set_cross(cross)
            if mode == "general":  # the layer-by-layer path (layouts the lean step does not cover)
                dec._plan = None
            elif mode == "lean":
                assert dec._plan is not None, "the lean step should cover this layout"
            ours = [dec.prefill(torch.cat([prefix, dec.embed(sequence[..., :prefill])], dim=1))[:, :, -1]]
            for offset in range(prefill + 1, steps + 1):
                ours.append(dec.step(sequence[..., offset - 1:offset], n + offset - 1, compiled=mode == "masked"))
            results.append(ours)
    return (theirs, *results)


def _assert_logits_close(theirs, *ours_lists):
    for ours in ours_lists:
        assert len(ours) == len(theirs)
        for step, (a, b) in enumerate(zip(ours, theirs)):
            assert a.shape == b.shape
            error = ((a - b).abs().max() / b.abs().max()).item()
            assert error < LOGIT_TOLERANCE, f"step {step}: relative error {error:.2e}"


@pytest.mark.parametrize("name", ["tiny", "tiny-stereo", "tiny-melody"])
def test_step_logits_equal_audiocrafts(name, monkeypatch, request):
    """Each step's logits (prefill of 3 steps, then one at a time) equal audiocraft's streaming
    forward at the same cache state, for the sliced and the masked (compiled, run eagerly) step."""
    import musicgen_trainer.fast_decode as fast_decode
    monkeypatch.setattr(fast_decode.torch, "compile", lambda fn, **kwargs: fn)
    model = request.getfixturevalue("melody_model") if name == "tiny-melody" else _model(name)
    melody = _melody(3.0, 32000) if name == "tiny-melody" else None
    _assert_logits_close(*_step_logits(model, ["lo-fi jazz piano", "rock"], frames=20, prefill=3, melody=melody))


@slow
def test_random_small_step_logits_equal_audiocrafts(monkeypatch):
    import musicgen_trainer.fast_decode as fast_decode
    monkeypatch.setattr(fast_decode.torch, "compile", lambda fn, **kwargs: fn)
    _assert_logits_close(*_step_logits(_model("random:small"), ["lo-fi jazz piano", "rock"], frames=6, prefill=3))
