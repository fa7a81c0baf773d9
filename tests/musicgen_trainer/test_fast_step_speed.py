"""The third round of CPU speed-ups keeps the arithmetic: the lean step on ``[B2, D]`` (``mm`` on
the transposed weight views) gives the general path's logits bit for bit, position 0 as a step
gives the prefill's logits and cache, and the drawn-ahead variates (reused chunk buffers, negated
in their own dtype) are ``exponential_``'s in every dtype."""
import pytest
import torch

MODELS = {}


def _lm(name: str = "tiny"):
    if name not in MODELS:
        from musicgen_trainer.models import load_model
        MODELS[name] = load_model(name, device="cpu").lm
    return MODELS[name]


def _decoder(lm, lean: bool, rows: int = 2, t_max: int = 12):
    """A StaticDecoder with a random cross-attention source ``[rows, 5, D]`` (same for both routes)."""
    from musicgen_trainer.fast_decode import StaticDecoder
    dec = StaticDecoder(lm, rows, t_max, torch.float32, torch.device("cpu"))
    cross = torch.randn(rows, 5, lm.dim, generator=torch.Generator().manual_seed(3))
    dec.set_cross(cross if any(layer.cross_attention is not None for layer in lm.transformer.layers) else None)
    dec.set_rows(0)
    if not lean:
        dec._plan = None  # the general path (_forward over the modules' weights)
    return dec


@pytest.mark.parametrize("name", ["tiny", "tiny-stereo"])
def test_lean_step_logits_are_the_general_paths_bit_for_bit(name):
    """Every step of a few, lean (2-D ``mm``/``addmm`` on the transposed weights, stacked heads)
    against the general path (``F.linear`` on 3-D inputs, the modules' own heads): torch.equal,
    not a tolerance. A kernel that rounds differently (e.g. a contiguous copy of the transposed
    weights, another gemm layout) fails here."""
    lm = _lm(name)
    with torch.inference_mode():
        lean, general = _decoder(lm, True), _decoder(lm, False)
        assert lean._plan is not None and lean._plan.head_table is not None
        g = torch.Generator().manual_seed(0)
        for p in range(8):
            tokens = torch.randint(0, lm.card + 1, (2, lm.num_codebooks, 1), generator=g)
            a, b = lean.step(tokens, p), general.step(tokens, p)
            assert a.shape == (2, lm.num_codebooks, lm.card)
            assert torch.equal(a, b), (p, (a - b).abs().max().item())
        assert torch.equal(lean.k_cache[:, :, :, :8], general.k_cache[:, :, :, :8])
        assert torch.equal(lean.v_cache[:, :, :, :8], general.v_cache[:, :, :, :8])


def test_position_row_is_the_scaled_positions_row():
    """``position_row`` (one indexing call per step) adds what ``scaled_positions(p)[:, 0]`` adds:
    the shared row, each row's own with per-row positions (a gap after a shorter prefix), and
    the positions in the asked dtype after another dtype was cached."""
    lm = _lm()
    with torch.inference_mode():
        dec = _decoder(lm, True, rows=2, t_max=12)
        for dtype in (torch.float32, torch.bfloat16, torch.float32):
            for p in (0, 5, 11):
                want = torch.zeros(2, dec.dim, dtype=dtype) + dec.scaled_positions(p, dtype)[:, 0]
                got = torch.zeros(2, dec.dim, dtype=dtype) + dec.position_row(p, dtype)
                assert got.dtype == dtype and torch.equal(got, want), (dtype, p)
        dec.set_rows(4, torch.tensor([4, 1]))  # row 1: a prefix of 1, a gap of 3 positions
        assert dec.row_shift is not None
        for p in (4, 7):
            row = dec.position_row(p, torch.float32)
            assert row.shape == (2, dec.dim)
            assert torch.equal(row, dec.scaled_positions(p, torch.float32)[:, 0])
            assert torch.equal(row[1], dec.scaled_positions(p - 3, torch.float32)[0, 0])  # shifted by its gap
            assert not torch.equal(row[0], row[1])


def test_position_zero_as_a_step_is_the_prefill():
    """With no prefix and no prompt the first position is run as a step (fast_lm_generate): the
    same logits and cache as ``prefill`` of that one position."""
    lm = _lm()
    tokens = torch.full((2, lm.num_codebooks, 1), lm.special_token_id)
    with torch.inference_mode():
        stepped, prefilled = _decoder(lm, True), _decoder(lm, True)
        a = stepped.step(tokens, 0)
        b = prefilled.prefill(prefilled.embed(tokens))[:, :, -1]
        assert torch.equal(a, b)
        assert torch.equal(stepped.k_cache[:, :, :, :1], prefilled.k_cache[:, :, :, :1])
        assert torch.equal(stepped.v_cache[:, :, :, :1], prefilled.v_cache[:, :, :, :1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("generators", [False, True])
def test_drawn_ahead_variates_with_reused_buffers_are_exponential(dtype, generators):
    """Chunks of 3 steps over 8 steps (the last chunk shorter: the buffers' first steps): each step
    is what ``exponential_`` draws at that step (global RNG, or each row's generator), in float32,
    bfloat16 and float16, and the RNG ends where the per-step draws leave it."""
    from musicgen_trainer.fast_sampling import Exponentials
    shape, steps = (2, 4, 2048), 8
    probs = torch.full(shape, 1 / 2048, dtype=dtype)
    ref_gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    torch.manual_seed(11)
    if generators:
        ref = [torch.stack([torch.empty(shape[1:], dtype=dtype).exponential_(generator=g) for g in ref_gens])
               for _ in range(steps)]
    else:
        ref = [torch.empty(shape, dtype=dtype).exponential_() for _ in range(steps)]
    ref_state = torch.get_rng_state()
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)] if generators else None
    torch.manual_seed(11)
    noise = Exponentials(steps, gens, chunk_bytes=3 * 2 * 4 * 2048 * 8)
    got = [noise.next(probs).clone() for _ in range(steps)]
    assert noise._buffers is not None and noise._buffers[0].shape[0] == 3  # one set of buffers, reused
    for a, b in zip(got, ref):
        assert a.dtype == dtype and torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), ref_state)
    if generators:
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens, ref_gens))


@pytest.mark.parametrize("prompts", [["lo-fi piano"], ["lo-fi piano", "rock", "ambient pads"]])
def test_every_step_logits_are_audiocrafts_bit_for_bit(prompts):
    """The fast loop's logits at every step (tiny, fp32, guidance: both halves) are those of
    audiocraft's own ``LMModel.forward`` in its loop, bit for bit: the same codes follow from the
    same logits, not from luck at the rounding boundaries. Any speed-up that rounds differently
    (a manual attention instead of SDPA, another gemm layout for the heads) fails here."""
    import musicgen_trainer.fast_decode as fast_decode
    from audiocraft.models.lm import LMModel
    from musicgen_trainer.fast_generate import fast_decoding
    from musicgen_trainer.models import load_model
    model = load_model("tiny", device="cpu")
    model.set_generation_params(duration=0.3, top_k=250, cfg_coef=3.0)
    theirs, ours = [], []
    forward = LMModel.forward

    def record(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        theirs.append(out[:, :, -1].clone())
        return out
    step = fast_decode.lean_step
    torch.manual_seed(1)
    LMModel.forward = record
    try:
        ref = model.generate(prompts, return_tokens=True)[1]
    finally:
        LMModel.forward = forward
    torch.manual_seed(1)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fast_decode, "lean_step", lambda *a: (lambda r: ours.append(r.clone()) or r)(step(*a)))
        with fast_decoding(model):
            fast = model.generate(prompts, return_tokens=True)[1]
    assert torch.equal(fast, ref)
    assert len(ours) == len(theirs) > 10  # position 0 included (a step, not the prefill)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.equal(a, b), (i, (a - b).abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", [3.0, 3.3, 0.7, 7.123456789, 2, "np64:3.3", "np64:0.1", "t64:3.3"])
def test_guidance_mix_in_numpy_is_audiocrafts_expression(dtype, cfg):
    """mix_guidance (numpy on the CPU) gives ``uncond + (cond - uncond) * cfg`` as torch computes
    it, bit for bit: the Python coefficient rounded to the logits' dtype, three rounded operations."""
    import numpy as np
    from musicgen_trainer.fast_sampling import mix_guidance
    if isinstance(cfg, str):  # a numpy / float64 tensor scalar: numpy would multiply in float64 (NEP 50)
        kind, value = cfg.split(":")
        cfg = np.float64(value) if kind == "np64" else torch.tensor(float(value), dtype=torch.float64)
    x = torch.randn(6, 4, 2048, generator=torch.Generator().manual_seed(2), dtype=dtype) * 7
    assert torch.equal(mix_guidance(x, 3, cfg), x[3:] + (x[:3] - x[3:]) * cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 2, 7, 250, 2047, 2048])
def test_top_k_with_drawn_ahead_variates_is_audiocrafts_sample_top_k(dtype, k):
    """sample_next's numpy top-k route (drawn-ahead variates) against audiocraft's
    ``utils.sample_top_k`` on the global RNG: the same codes and the same RNG state after, with ties
    at the threshold (300 equal logits, an all-equal row, 4 equal maxima), k = 1 and k = card."""
    from audiocraft.utils import utils
    from musicgen_trainer.fast_sampling import Exponentials, sample_next
    logits = torch.randn(3, 4, 2048, generator=torch.Generator().manual_seed(k), dtype=dtype) * 3
    logits[0, 0, :300] = 1.0
    logits[1, 1, :] = 0.0
    logits[2, 3, 5:9] = 50.0
    for seed in range(5):
        torch.manual_seed(seed)
        expected = utils.sample_top_k(torch.softmax(logits, -1), k)
        after_expected = torch.rand(2)
        torch.manual_seed(seed)
        got = sample_next(logits.clone(), True, 1.0, k, 0.0, Exponentials(1, None))
        assert torch.equal(got, expected) and torch.equal(torch.rand(2), after_expected), seed
