"""The lean decode step (fast_step) and the k-th largest selection (fast_sampling.kth_largest):
half-precision LMs give audiocraft's codes; k above the codebook size is refused as audiocraft's topk."""
import pytest
import torch

WINDOW = 1.2  # seconds
MODELS = {}


def _model(dtype: torch.dtype):
    """The tiny model with its LM in ``dtype`` and a 1.2 s window (cached per test module)."""
    if dtype not in MODELS:
        from musicgen_trainer.models import load_model
        model = load_model("tiny", device="cpu")
        model.max_duration = WINDOW
        model.lm.to(dtype)
        MODELS[dtype] = model
    return MODELS[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sampling", [dict(use_sampling=False), dict(top_k=250)])
def test_half_precision_lean_step_gives_audiocrafts_codes(dtype, sampling, monkeypatch):
    """audiocraft adds the K codebook embeddings one at a time (rounding to the LM's dtype after
    each) and applies the K heads one by one; the lean step (stacked tables) must round the same."""
    import musicgen_trainer.fast_decode as fast_decode
    from musicgen_trainer.fast_generate import fast_decoding
    model = _model(dtype)
    model.set_generation_params(duration=1.0, cfg_coef=3.0, extend_stride=0.6, **sampling)
    torch.manual_seed(0)
    ref = model.generate(["a", "bb cc"], return_tokens=True)[1]
    calls = []
    lean_step = fast_decode.lean_step
    monkeypatch.setattr(fast_decode, "lean_step", lambda *a: calls.append(1) or lean_step(*a))
    torch.manual_seed(0)
    with fast_decoding(model):
        fast = model.generate(["a", "bb cc"], return_tokens=True)[1]
    assert calls  # the lean step ran
    assert torch.equal(fast, ref)


def test_lean_embedding_sum_rounds_after_each_codebook():
    """The stacked lookup adds the codebooks in audiocraft's order, k = 0, 1, ..., in the LM's dtype."""
    from musicgen_trainer.fast_step import lean_embed, lean_plan
    model = _model(torch.bfloat16)
    plan = lean_plan(model.lm, torch.bfloat16)
    assert plan is not None and plan.emb_table is not None
    tokens = torch.randint(0, model.lm.card + 1, (6, model.lm.num_codebooks, 1),
                           generator=torch.Generator().manual_seed(1))
    ref = sum([model.lm.emb[k](tokens[:, k]) for k in range(model.lm.num_codebooks)])
    assert torch.equal(lean_embed(plan, tokens), ref)


@pytest.mark.parametrize("k", [17, 20, 0])
def test_top_k_outside_the_codebook_is_refused(k):
    """k above the codebook size (or 0) is refused, as audiocraft's ``torch.topk`` refuses it,
    instead of numpy indexing from the end (a shape error at 17, the wrong set at 20)."""
    from musicgen_trainer.fast_sampling import kth_largest, sample_top_k
    probs = torch.softmax(torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    if k:  # audiocraft's torch.topk raises too (top_k=0 audiocraft takes as no top-k)
        with pytest.raises(RuntimeError):
            torch.topk(probs, k, dim=-1)
    with pytest.raises(ValueError, match="top_k"):
        kth_largest(probs.clone(), k)
    with pytest.raises(ValueError, match="top_k"):
        sample_top_k(probs.clone(), k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [4, 16, 40])
def test_kth_largest_is_topks_on_both_routes(rows, dtype, monkeypatch):
    """torch.kthvalue and np.partition (the CPU's route at every size: faster on fresh rows) both
    give topk's k-th value, ties included."""
    import numpy as np
    import musicgen_trainer.fast_sampling as fs
    g = torch.Generator().manual_seed(rows)
    probs = torch.softmax(torch.randn(rows, 2048, generator=g, dtype=dtype), dim=-1)
    probs[0] = 1 / 2048  # all tied
    probs[1, :300] = probs[1, 300]  # ties across the k-th
    partitions = []
    original = np.partition
    monkeypatch.setattr(np, "partition", lambda *a, **kw: partitions.append(1) or original(*a, **kw))
    for k in (1, 50, 250, 2048):
        ref = torch.topk(probs, k, dim=-1).values[..., -1:]
        assert torch.equal(fs.kth_largest(probs, k), ref)
        with monkeypatch.context() as m:  # the other route
            m.setattr(fs, "_KTHVALUE_NUMEL", 0 if probs.numel() <= fs._KTHVALUE_NUMEL else 1 << 40)
            assert torch.equal(fs.kth_largest(probs, k), ref)
    assert len(partitions) == 4  # one route of the two used numpy, four times
    assert fs._KTHVALUE_NUMEL == 0  # the default route is numpy's, whatever the size
