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
