"""The fast decoder (fast_decode / fast_generate) gives audiocraft's codes: tiny, stereo and melody
models, with and without guidance, greedy and sampled, within one window, a full window, beyond
the window, continuation; it is the default and really runs; unsupported models fall back."""
import pytest
import torch

from musicgen_trainer.generation import (GenerationConfig, generate, generate_continuation,
                                         generate_with_melody)

from decoding_helpers import decoded, fast_and_audiocraft

WINDOW = 1.2  # seconds: a short window, so that windowed generation takes few steps
MODELS = {}


def _model(name: str):
    """load_model(name) with a 1.2 s window (cached per test module)."""
    if name not in MODELS:
        from musicgen_trainer.models import load_model
        model = load_model(name, device="cpu")
        model.max_duration = WINDOW
        MODELS[name] = model
    return MODELS[name]


def _codes(model, call):
    """Run ``call()`` and return the codes audiocraft decoded to audio ``[B, K, F]``."""
    return decoded(model, call)[0]


def _fast_and_audiocraft(model, call_for):
    """Codes with decoder="fast" (asserting audiocraft's LM loop never runs) and "audiocraft"."""
    fast, slow = fast_and_audiocraft(model, call_for)
    return fast[0], slow[0]


SAMPLING = {
    "greedy": dict(use_sampling=False),
    "top_k": dict(top_k=250, temperature=1.0),
    "top_p": dict(top_k=0, top_p=0.9, temperature=1.3),
}
# (model, seconds, sampling, cfg_coef): 0.4 s within the window, 1.18 s its full length (59
# frames; audiocraft asks for half a frame more), 2.5 s three windows with a 0.6 s stride.
CASES = [
    ("tiny", 0.4, "greedy", 3.0), ("tiny", 0.4, "top_k", 3.0), ("tiny", 0.4, "top_p", 1.0),
    ("tiny", 1.18, "top_k", 3.0), ("tiny", 2.5, "greedy", 3.0), ("tiny", 2.5, "top_k", 1.0),
    ("tiny-stereo", 0.4, "greedy", 1.0), ("tiny-stereo", 1.18, "top_p", 3.0), ("tiny-stereo", 2.5, "top_k", 3.0),
]


@pytest.mark.parametrize("name, seconds, sampling, cfg", CASES)
def test_text_generation_gives_audiocrafts_codes(name, seconds, sampling, cfg):
    model = _model(name)

    def call_for(decoder):
        config = GenerationConfig(duration=seconds, seed=3, cfg_coef=cfg, decoder=decoder, **SAMPLING[sampling])
        return lambda: generate(model, ["lo-fi jazz piano", "rock", ""], config)
    fast, slow = _fast_and_audiocraft(model, call_for)
    assert fast.shape == slow.shape and fast.shape[1] == model.lm.num_codebooks
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("name, seconds", [("tiny", 0.5), ("tiny-stereo", 2.0)])
def test_continuation_gives_audiocrafts_codes(name, seconds):
    model = _model(name)
    prompt = 0.1 * torch.randn(model.audio_channels, 12800, generator=torch.Generator().manual_seed(0))

    def call_for(decoder):
        config = GenerationConfig(duration=seconds, seed=5, decoder=decoder, top_k=50)
        return lambda: generate_continuation(model, prompt, 32000, ["a", "b"], config)
    fast, slow = _fast_and_audiocraft(model, call_for)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("seconds, sampling, cfg", [(0.4, "top_k", 3.0), (1.5, "greedy", 1.0)])
def test_melody_generation_gives_audiocrafts_codes(seconds, sampling, cfg):
    """Melody models prepend the chroma and the caption to the LM input (no cross-attention)."""
    model = _model("tiny-melody")
    t = torch.arange(32000) / 32000
    melody = torch.sin(2 * torch.pi * 440 * t)[None]

    def call_for(decoder):
        config = GenerationConfig(duration=seconds, seed=7, cfg_coef=cfg, decoder=decoder, **SAMPLING[sampling])
        return lambda: generate_with_melody(model, melody, 32000, ["piano", "choir"], config)
    fast, slow = _fast_and_audiocraft(model, call_for)
    assert torch.equal(fast, slow)


def test_without_conditions_no_guidance_batch():
    """No conditions at all: audiocraft runs a single batch (no CFG half); so does ours. (The
    melody model's LM: audiocraft's loop needs a cross-attention source where layers have one.)"""
    from musicgen_trainer.fast_generate import fast_lm_generate
    lm = _model("tiny-melody").lm
    kwargs = dict(num_samples=2, max_gen_len=30, use_sampling=True, top_k=100)
    torch.manual_seed(11)
    slow = lm.generate(None, [], **kwargs)
    torch.manual_seed(11)
    fast = fast_lm_generate(lm, None, [], **kwargs)
    assert torch.equal(fast, slow)


def test_fixed_shape_step_gives_audiocrafts_codes(monkeypatch):
    """The step torch.compile captures (whole cache, position mask), run eagerly here."""
    import musicgen_trainer.fast_decode as fast_decode
    from musicgen_trainer.fast_generate import fast_decoding
    model = _model("tiny")
    monkeypatch.setattr(fast_decode.torch, "compile", lambda fn, **kwargs: fn)
    model.set_generation_params(duration=2.5, top_k=250, cfg_coef=3.0, extend_stride=0.6)
    torch.manual_seed(2)
    slow = model.generate(["a", "bb"], return_tokens=True)[1]
    torch.manual_seed(2)
    try:
        with fast_decoding(model, compile=True) as state:
            assert state["fast"]
            fast = model.generate(["a", "bb"], return_tokens=True)[1]
    finally:
        model.lm.__dict__.pop("_fast_decoder", None)  # the kept "compiled" decoder
    assert torch.equal(fast, slow)


def test_fast_is_the_default_and_generate_is_restored():
    from audiocraft.models.lm import LMModel
    model = _model("tiny")
    assert GenerationConfig().decoder == "fast"
    calls = []
    original = LMModel.generate
    LMModel.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        generate(model, ["x"], GenerationConfig(duration=0.1))
        assert calls == []
        generate(model, ["x"], GenerationConfig(duration=0.1, decoder="audiocraft"))
        assert calls == [1]
    finally:
        LMModel.generate = original
    assert "generate" not in model.lm.__dict__  # the instance's generate is audiocraft's again


def test_unsupported_model_falls_back_to_audiocrafts_loop():
    """A feature the static decoder does not reproduce (here the positional embedding is named
    'sin_rope', though without rotary layers): audiocraft's loop runs, so the output is still
    audiocraft's."""
    from musicgen_trainer.fast_decode import unsupported_reason
    from musicgen_trainer.fast_generate import fast_decoding
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    model = build_tiny_musicgen(TinyConfig(seed=2))
    assert unsupported_reason(model.lm) is None
    model.lm.transformer.positional_embedding = "sin_rope"
    assert "positional embedding" in unsupported_reason(model.lm)
    model.set_generation_params(duration=0.3, use_sampling=False)
    with fast_decoding(model) as state:
        assert not state["fast"]
        fast = model.generate(["x"], return_tokens=True)[1]
    slow = model.generate(["x"], return_tokens=True)[1]
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("k", [1, 7, 250, 2048])
def test_top_k_sampling_matches_audiocrafts_draws(k):
    """Our top-k (kthvalue threshold) keeps the same probabilities and draws the same codes and
    RNG amounts as audiocraft's sample_top_k, ties included."""
    from audiocraft.utils import utils
    from musicgen_trainer.fast_generate import sample_top_k
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(3, 4, 2048, generator=g) * 3
    logits[0, 0, :300] = 1.0  # ties at the threshold
    probs = torch.softmax(logits, dim=-1)
    for seed in range(20):
        torch.manual_seed(seed)
        theirs, after_theirs = utils.sample_top_k(probs.clone(), k), torch.rand(2)
        torch.manual_seed(seed)
        ours, after_ours = sample_top_k(probs.clone(), k), torch.rand(2)
        assert torch.equal(ours, theirs) and torch.equal(after_ours, after_theirs)


def test_bad_decoder_is_refused():
    with pytest.raises(ValueError, match="decoder must be one of fast, audiocraft"):
        GenerationConfig(decoder="turbo")


@pytest.mark.parametrize("folded", [False, True])
def test_lora_adapted_lm_gives_audiocrafts_codes(folded):
    """An LM with peft LoRA adapters (trained: B not zero) on every target, in_proj included: with
    the in_proj adapters folded (training samples) the fast decoder runs and reads the folded
    weights; unfolded, audiocraft's loop runs (the adapter lives in peft's forward)."""
    import contextlib
    from musicgen_trainer.fast_generate import fast_decoding
    from musicgen_trainer.lora import apply_lora, raw_weights_folded
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    model = build_tiny_musicgen(TinyConfig(seed=4))
    apply_lora(model.lm, 4, targets=["in_proj", "out_proj", "linear1", "linear2"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.lm.eval()
    model.set_generation_params(duration=0.4, top_k=50, cfg_coef=3.0)
    with raw_weights_folded(model.lm) if folded else contextlib.nullcontext():
        torch.manual_seed(1)
        slow = model.generate(["a", "b"], return_tokens=True)[1]
        torch.manual_seed(1)
        with fast_decoding(model) as state:
            assert state["fast"] == folded
            fast = model.generate(["a", "b"], return_tokens=True)[1]
    assert torch.equal(fast, slow)


# --- per-row generators (batched requests, one seed each) ----------------------------------------

def _alone_then_batched(model, generate_rows, seeds):
    """Codes of each row generated alone after torch.manual_seed(seed) with audiocraft's loop, and
    of all rows in one batch under fast_decoding with one generator per row (global RNG untouched)."""
    from musicgen_trainer.fast_generate import fast_decoding
    alone = []
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        alone.append(generate_rows([i]))
    global_state = torch.get_rng_state()
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    with fast_decoding(model, generators=generators) as state:
        assert state["fast"] and state["per_row_rng"]
        batched = generate_rows(list(range(len(seeds))))
    assert torch.equal(torch.get_rng_state(), global_state)  # nothing drew from the global RNG
    return torch.cat(alone), batched


PROMPTS = ["lo-fi jazz piano", "rock", ""]
PER_ROW = [  # (model, seconds, sampling settings, cfg_coef); 2.5 s: three windows of 1.2 s
    ("tiny", 0.4, dict(top_k=250), 3.0), ("tiny", 0.4, dict(top_k=0, top_p=0.9, temperature=1.3), 3.0),
    ("tiny", 0.4, dict(top_k=0), 1.0), ("tiny", 2.5, dict(top_k=50), 3.0),
    ("tiny-stereo", 0.4, dict(top_k=250), 3.0), ("tiny-stereo", 2.5, dict(top_k=0, top_p=0.8), 3.0),
]


@pytest.mark.parametrize("name, seconds, sampling, cfg", PER_ROW)
def test_per_row_generators_give_each_requests_codes_alone(name, seconds, sampling, cfg):
    """A batch of 3 prompts with seeds (5, 17, 2**40) under per-row generators: each row has the
    codes of its prompt generated alone with its seed through audiocraft's own loop (the
    generators persist across windows)."""
    model = _model(name)
    model.set_generation_params(duration=seconds, cfg_coef=cfg, extend_stride=0.6, **sampling)

    def generate_rows(rows):
        return model.generate([PROMPTS[i] for i in rows], return_tokens=True)[1]
    alone, batched = _alone_then_batched(model, generate_rows, [5, 17, 2 ** 40])
    assert batched.shape == alone.shape
    assert torch.equal(batched, alone)
    assert not torch.equal(alone[0], alone[2])  # the seeds matter: not a vacuous identity


def test_per_row_generators_melody():
    model = _model("tiny-melody")
    model.set_generation_params(duration=0.4, top_k=250, cfg_coef=3.0, extend_stride=0.6)
    t = torch.arange(32000) / 32000
    melodies = [torch.sin(2 * torch.pi * f * t)[None] for f in (220, 440, 330)]

    def generate_rows(rows):
        # demucs shifts the melody by Python's random: the same state for every call, so the codes
        # depend on the decoder alone (audiocraft's own loop differs with the state otherwise)
        from musicgen_trainer.melody import seeded_python_random
        with seeded_python_random():
            return model.generate_with_chroma([PROMPTS[i] for i in rows], [melodies[i] for i in rows], 32000,
                                              return_tokens=True)[1]
    alone, batched = _alone_then_batched(model, generate_rows, [1, 2, 3])
    assert torch.equal(batched, alone)


def test_per_row_multinomial_draws_as_torch_multinomial():
    """Row i of our sampler: the index and the generator state torch.multinomial leaves on
    probs[i] ([K, card]) with generators[i] (ATen's exponential race), zeros included."""
    from musicgen_trainer.fast_sampling import multinomial_per_row
    probs = torch.softmax(3 * torch.randn(3, 4, 2048, generator=torch.Generator().manual_seed(0)), dim=-1)
    probs[1, :, 100:] = 0  # a top-k cut
    for seed in range(10):
        gens = [torch.Generator().manual_seed(seed + 100 * i) for i in range(3)]
        ours = multinomial_per_row(probs, gens)
        refs = [torch.Generator().manual_seed(seed + 100 * i) for i in range(3)]
        theirs = torch.stack([torch.multinomial(probs[i], 1, generator=refs[i]) for i in range(3)])
        assert torch.equal(ours, theirs)
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens, refs))


def test_per_row_generators_refused_where_not_honoured():
    from musicgen_trainer.fast_generate import fast_decoding, fast_lm_generate
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    model = build_tiny_musicgen(TinyConfig(seed=2))
    gens = [torch.Generator().manual_seed(1)]
    with pytest.raises(ValueError, match="2 for a batch of 1 rows"):
        fast_lm_generate(model.lm, None, [], num_samples=1, max_gen_len=5, generators=gens * 2)
    model.lm.two_step_cfg = True
    with pytest.raises(ValueError, match="two-step classifier-free guidance"):
        with fast_decoding(model, generators=gens):
            pass
    model.lm.two_step_cfg = False
    model.lm.transformer.positional_embedding = "sin_rope"
    with pytest.raises(ValueError, match="generate the rows one by one"):
        with fast_decoding(model, generators=gens):
            pass
    with fast_decoding(model) as state:  # without generators: audiocraft's loop, as before
        assert not state["fast"] and not state["per_row_rng"]


# --- drawing the variates ahead (CPU) and the lean step --------------------------------------------

@pytest.mark.parametrize("generators", [False, True])
def test_variates_drawn_ahead_are_torch_multinomials(generators):
    """Exponentials (bulk double uniforms, several chunks) gives, step after step, the variates
    torch.multinomial draws at each step (global RNG: rows in order; per-row: each its own
    generator), and leaves every generator where the per-step draws leave it."""
    from musicgen_trainer.fast_sampling import Exponentials, _draw_ahead_ok
    probs = torch.full((3, 4, 2048), 1 / 2048)
    assert _draw_ahead_ok(probs.device, probs.dtype)
    steps = 7
    ref_gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    torch.manual_seed(9)
    if generators:
        ref = [torch.stack([torch.empty(4, 2048).exponential_(generator=g) for g in ref_gens]) for _ in range(steps)]
    else:
        ref = [torch.empty(12, 2048).exponential_().view(3, 4, 2048) for _ in range(steps)]
    ref_state = torch.get_rng_state()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    torch.manual_seed(9)
    noise = Exponentials(steps, gens if generators else None, chunk_bytes=3 * 4 * 2048 * 8 * 3)  # chunks of 3 steps
    got = [noise.next(probs).clone() for _ in range(steps)]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    assert torch.equal(torch.get_rng_state(), ref_state)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens, ref_gens))
    with pytest.raises(RuntimeError, match="more sampling steps than planned"):
        noise.next(probs)


def test_variates_near_a_rounding_boundary_are_libms():
    """torch's vectorised log1p differs from libm's (ATen's exponential_) by one double ulp on a
    fraction of inputs; where the double lies half-way between two floats that ulp changes the
    float. Uniforms built to land there (found by search): our variates are libm's, rounded."""
    import math
    from musicgen_trainer.fast_sampling import exponentials_from_uniforms
    g = torch.Generator().manual_seed(0)
    target = torch.rand(200000, generator=g, dtype=torch.float64) * 5 + 0.01
    bits = target.view(torch.int64)
    halfway = ((bits & ~(2 ** 29 - 1)) | 2 ** 28).view(torch.float64)  # the double half-way between two floats
    u = -torch.expm1(-halfway)
    vectorised = torch.log1p(-u).neg_().float()
    libm = torch.tensor([-math.log1p(-x) for x in u.tolist()], dtype=torch.float64).float()
    differ = vectorised != libm
    assert differ.sum() > 10  # the cases exist: computing in torch alone would get them wrong
    u = torch.cat([u[differ], u[:1000]])
    assert torch.equal(exponentials_from_uniforms(u, torch.float32), torch.cat([libm[differ], libm[:1000]]))
    ref = torch.empty(u.shape[0]).exponential_(generator=torch.Generator().manual_seed(3))
    assert torch.equal(exponentials_from_uniforms(torch.rand(u.shape[0], dtype=torch.float64,
                                                             generator=torch.Generator().manual_seed(3)),
                                                  torch.float32), ref)


def test_lean_step_is_used_and_agrees_with_the_general_path(monkeypatch):
    """The tiny models take the lean step (stacked embeddings and heads); forcing the general path
    gives the same codes."""
    import musicgen_trainer.fast_decode as fast_decode
    import musicgen_trainer.fast_step as fast_step
    from musicgen_trainer.fast_generate import fast_decoding
    model = _model("tiny")
    plan = fast_step.lean_plan(model.lm, torch.float32)
    assert plan is not None and plan.emb_table is not None and plan.head_table is not None
    model.set_generation_params(duration=0.6, top_k=250, cfg_coef=3.0, extend_stride=0.6)
    calls = []
    lean_step = fast_decode.lean_step
    # fast_decode imported the names: patch them there, where the decoder looks them up
    monkeypatch.setattr(fast_decode, "lean_step", lambda *a: calls.append(1) or lean_step(*a))
    runs, lean_calls = [], []
    for lean in (True, False):
        if not lean:
            monkeypatch.setattr(fast_decode, "lean_plan", lambda lm, dtype: None)
        calls.clear()
        torch.manual_seed(4)
        with fast_decoding(model):
            runs.append(model.generate(["a", "bb cc"], return_tokens=True)[1])
        lean_calls.append(len(calls))
    assert lean_calls[0] > 0 and lean_calls[1] == 0  # the second run took the general path
    assert torch.equal(runs[0], runs[1])


# --- compiled path: a bounded number of graphs whatever the traffic --------------------------------

def test_compiled_step_graphs_are_bounded_and_give_the_eager_codes(monkeypatch):
    """12 requests of 1-4 rows (2-8 with guidance) and captions of 1-45 bytes through the compiled
    path (dynamo with its eager backend: the same guards and graphs as inductor, no code
    generation): each request has the eager path's codes, and dynamo compiles at most one graph
    per (row bucket, cross capacity) used, never reaching its recompile limit (before the row and
    caption buckets: a graph per batch size and caption length, the 9th request ran uncompiled)."""
    import musicgen_trainer.fast_decode as fast_decode
    from torch._dynamo.utils import counters
    from musicgen_trainer.fast_generate import fast_decoding
    real_compile = torch.compile
    monkeypatch.setattr(fast_decode.torch, "compile",
                        lambda fn, mode=None, **kwargs: real_compile(fn, backend="eager", **kwargs))
    model = _model("tiny")
    model.set_generation_params(duration=0.2, top_k=250, cfg_coef=3.0, extend_stride=0.6)
    words = "lo-fi jazz piano with a slow walking bass and brushed drums at night".split()
    requests = [(1, 2), (1, 5), (2, 2), (2, 3), (3, 4), (4, 2), (1, 9), (2, 11), (3, 1), (4, 6), (1, 3), (2, 2)]
    frames, graphs = dict(counters["frames"]), counters["stats"]["unique_graphs"]
    buckets, capacities = set(), set()
    try:
        for i, (rows, n) in enumerate(requests):
            prompts = [" ".join(words[:n])] + ["x" * (3 * r) for r in range(1, rows)]
            seeds = [100 * i + r for r in range(rows)]
            codes = {}
            for compiled in (True, False):
                with fast_decoding(model, compile=compiled, generators=[torch.Generator().manual_seed(s) for s in seeds]):
                    codes[compiled] = model.generate(prompts, return_tokens=True)[1]
            assert torch.equal(codes[True], codes[False]), f"request {i}"
            buckets.add(fast_decode.bucket_rows(2 * rows))
            capacities.update(dec.cross_capacity for dec in model.lm.__dict__["_fast_decoder"].values())
    finally:
        model.lm.__dict__.pop("_fast_decoder", None)
    compiled_graphs = counters["stats"]["unique_graphs"] - graphs
    assert buckets == {2, 4, 8} and capacities == {32, 64}  # the traffic spans both kinds of bucket
    assert 0 < compiled_graphs <= len(buckets) * len(capacities)
    assert counters["frames"]["total"] - frames.get("total", 0) == counters["frames"]["ok"] - frames.get("ok", 0)


def test_compiled_path_under_and_after_a_callers_inference_mode(monkeypatch):
    """A caller's ``torch.inference_mode()`` around generation (a common habit) with the compiled
    path (its step run eagerly here): the codes of audiocraft's loop, and a kept decoder made under
    inference mode still works in a later call made outside it (its cache is written in place)."""
    import musicgen_trainer.fast_decode as fast_decode
    from musicgen_trainer.fast_generate import fast_decoding
    monkeypatch.setattr(fast_decode.torch, "compile", lambda fn, **kwargs: fn)
    model = _model("tiny")
    model.set_generation_params(duration=0.2, top_k=250, cfg_coef=3.0, extend_stride=0.6)
    torch.manual_seed(5)
    expected = model.generate(["jazz"], return_tokens=True)[1]  # audiocraft's own loop
    try:
        with fast_decoding(model, compile=True):
            for mode in (True, False, True):
                with torch.inference_mode(mode):
                    torch.manual_seed(5)
                    assert torch.equal(model.generate(["jazz"], return_tokens=True)[1], expected), mode
    finally:
        model.lm.__dict__.pop("_fast_decoder", None)


def test_fixed_decoder_pads_rows_and_caption_with_the_same_logits(monkeypatch):
    """One fixed decoder (bucket of 8 rows, 64-token capacity) serving 6 rows with a 5-token
    caption and prefixes of 3 lengths (gaps, as batched melody requests): the same prefill and
    step logits as an exact-size decoder (dummy rows, padded keys and gaps masked, positions
    from the per-row table); the fixed step run eagerly."""
    import musicgen_trainer.fast_decode as fast_decode
    from musicgen_trainer.fast_decode import StaticDecoder
    monkeypatch.setattr(fast_decode.torch, "compile", lambda fn, **kwargs: fn)
    lm = _model("tiny").lm
    g = torch.Generator().manual_seed(0)
    cross = torch.randn(6, 5, lm.dim, generator=g)
    cross_len = torch.tensor([5, 3, 4, 5, 3, 4])
    prefix = torch.randn(6, 7, lm.dim, generator=g)
    prefix_len = torch.tensor([7, 4, 2, 7, 4, 2])
    tokens = torch.randint(0, lm.card, (6, lm.num_codebooks, 5), generator=g)
    logits = []
    with torch.no_grad():
        for dec in (StaticDecoder(lm, 6, 12, torch.float32, torch.device("cpu")),
                    StaticDecoder(lm, 8, 64, torch.float32, torch.device("cpu"), fixed=True, cross_capacity=64)):
            dec.use_rows(6)
            dec.set_cross(cross, cross_len)
            dec.set_rows(7, prefix_len)
            out = [dec.prefill(torch.cat([prefix, dec.embed(tokens[..., :1])], dim=1))[:, :, -1]]
            out += [dec.step(tokens[..., t:t + 1], 7 + t, compiled=dec.fixed) for t in range(1, 5)]
            logits.append(torch.stack(out))
    assert dec.cross_k[0].shape[:3] == (8, dec.heads, 64) and dec.row_pos is not None  # padded, fixed step
    assert logits[1].shape == logits[0].shape
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)


def test_kept_compiled_decoders_one_per_row_bucket_at_most_four():
    """Compiled decoders are kept per row bucket (2, 4, 8, 16, then multiples of 16) and reused
    (no new cache, so no new CUDA graph, when the batch size alternates), the 4 most recently
    used; their caches span a whole window, so shorter requests reuse them."""
    from musicgen_trainer.fast_decode import bucket_rows
    from musicgen_trainer.fast_generate import MAX_KEPT, _Session
    assert [bucket_rows(n) for n in (1, 2, 3, 6, 8, 10, 16, 18, 40)] == [2, 2, 4, 8, 8, 16, 16, 32, 48]
    lm = _model("tiny").lm
    cpu = torch.device("cpu")
    try:
        session = _Session(lm, True, min_positions=100)
        first = {rows: session.decoder_for(rows, 30, torch.float32, cpu) for rows in (2, 4, 6)}
        assert first[4].batch == 4 and first[6].batch == 8 and first[6].t_max >= 100
        assert session.decoder_for(8, 90, torch.float32, cpu) is first[6]  # same bucket, shorter than the cache
        assert session.decoder_for(3, 60, torch.float32, cpu) is first[4] and first[4].rows == 3
        for rows in (16, 18):  # two more buckets: the least recently used (2 rows) is dropped
            session.decoder_for(rows, 30, torch.float32, cpu)
        kept = lm.__dict__["_fast_decoder"]
        assert len(kept) == MAX_KEPT == 4 and sorted(key[0] for key in kept) == [4, 8, 16, 32]
    finally:
        lm.__dict__.pop("_fast_decoder", None)


# --- NaN/inf probabilities raise in every sampling path, as torch.multinomial -----------------------

def _bad_logits(value):
    logits = torch.randn(2, 4, 2048, generator=torch.Generator().manual_seed(0))
    logits[1, 2, 5] = value
    return logits


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("sampling", [dict(top_k=250, top_p=0.0), dict(top_k=0, top_p=0.9), dict(top_k=0, top_p=0.0)])
@pytest.mark.parametrize("noise", ["global", "drawn-ahead", "per-row"])
def test_nan_or_inf_probabilities_raise_as_torch_multinomial(value, sampling, noise):
    """audiocraft's multinomial raises on NaN/inf probabilities; the drawn-ahead and per-row
    samplers (argmax(probs / q)) returned a code instead. Now every path raises."""
    from musicgen_trainer.fast_sampling import Exponentials, sample_next
    logits = _bad_logits(value)
    with pytest.raises(RuntimeError, match="inf`, `nan` or element < 0"):  # torch's own message
        torch.multinomial(torch.softmax(logits, -1).view(-1, 2048), 1)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    q = {"global": None, "drawn-ahead": Exponentials(3), "per-row": Exponentials(3, gens)}[noise]
    with pytest.raises(RuntimeError, match="inf`, `nan` or element < 0"):
        sample_next(logits, True, 1.0, sampling["top_k"], sampling["top_p"], q)
    assert sample_next(_bad_logits(0.0), True, 1.0, sampling["top_k"], sampling["top_p"], q).shape == (2, 4, 1)


def test_per_row_multinomial_refuses_invalid_probabilities():
    from musicgen_trainer.fast_sampling import multinomial_per_row
    probs = torch.softmax(_bad_logits(0.0), dim=-1)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for bad in (float("nan"), float("inf"), -0.5):
        p = probs.clone()
        p[0, 1, 7] = bad
        with pytest.raises(RuntimeError, match="inf`, `nan` or element < 0"):
            multinomial_per_row(p, gens)
