"""The loss is audiocraft's, and accumulation is exactly a larger batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicgen_trainer.data import CropSampler, collate
from musicgen_trainer.objective import conditions_for, micro_batch_loss, token_counts
from musicgen_trainer.train_config import TrainConfig
from musicgen_trainer.step import make_state, prepare_lm_for_training, train_step


class SingleProcess:
    """The parts of accelerate's Accelerator that train_step uses, for one CPU process."""
    device = torch.device("cpu")
    num_processes = 1
    process_index = 0
    is_main_process = True

    def prepare_model(self, model):
        return model


def _fresh_model():
    from musicgen_trainer.models import load_model
    model = load_model("tiny", device="cpu")
    return model


def _batch(lengths, n_frames=24, seed=0, captions=None):
    rng = np.random.default_rng(seed)
    crops = [rng.integers(0, 2048, size=(4, t)).astype(np.int16) for t in lengths]
    captions = captions or [f"caption {i}" for i in range(len(lengths))]
    return collate(crops, captions, n_frames)


def test_loss_equals_direct_computation_from_compute_predictions():
    model = _fresh_model()
    lm = model.lm.eval()
    batch = _batch([24, 17, 9])  # two padded items
    counts = token_counts(lm, batch.frame_valid)
    with torch.no_grad():
        ours, shares = micro_batch_loss(lm, batch.codes, batch.frame_valid, batch.captions, counts)
        # Independent computation: audiocraft's own compute_predictions, then per-codebook CE
        # over valid, unpadded positions, then the mean over codebooks.
        # Padded frames are given to the LM as the special token (audiocraft's option).
        inputs = batch.codes.masked_fill(~batch.frame_valid[:, None, :], lm.special_token_id)
        out = lm.compute_predictions(inputs, conditions_for(batch.captions))
        expected = []
        for k in range(4):
            mask = out.mask[:, k] & batch.frame_valid
            expected.append(F.cross_entropy(out.logits[:, k][mask], batch.codes[:, k][mask]))
        expected = torch.stack(expected)
    torch.testing.assert_close(shares, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, expected.mean(), rtol=1e-5, atol=1e-6)
    # Padding really is excluded: changing padded codes leaves the loss unchanged.
    noisy = batch.codes.clone()
    noisy[~batch.frame_valid[:, None, :].expand_as(noisy)] = 7
    with torch.no_grad():
        again, _ = micro_batch_loss(lm, noisy, batch.frame_valid, batch.captions, counts)
    torch.testing.assert_close(again, ours)


def _one_update(micro_batches, config, optimizer=None):
    """One train_step from the same fresh model; returns (new LM weights, metrics, the gradients
    the optimiser was handed: after accumulation and clipping, before the update)."""
    model = _fresh_model()
    prepare_lm_for_training(model, config)
    state = make_state(model, config, SingleProcess(), total_steps=10)
    if optimizer is not None:
        state.optimizer = optimizer(model.lm)
        state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda step: 1.0)
    grads = {}
    names = {p: n for n, p in model.lm.named_parameters()}

    def record(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[names[p]] = p.grad.detach().clone()
    state.optimizer.register_step_pre_hook(record)
    metrics = train_step(state, micro_batches)
    return {k: v.clone() for k, v in model.lm.state_dict().items()}, metrics, grads


def _accumulation_case():
    """One batch of 4 and the same 4 items as k=2 micro-batches of 2, padding differing between them."""
    lengths = [24, 10, 24, 5]
    captions = ["jazz", "rock", None, "folk"]
    full = _batch(lengths, captions=captions)
    first = collate([full.codes[i, :, :lengths[i]].numpy() for i in (0, 1)], captions[:2], 24)
    second = collate([full.codes[i, :, :lengths[i]].numpy() for i in (2, 3)], captions[2:], 24)
    return full, first, second


def test_accumulation_gives_the_gradients_of_one_larger_batch():
    """k=2 micro-batches of 2 hand the optimiser the gradients of one batch of 4."""
    config = TrainConfig(data="unused", lr=1e-3, warmup_steps=0, grad_clip=0.5)
    full, first, second = _accumulation_case()
    _, big, big_grads = _one_update([full], config)
    _, acc, acc_grads = _one_update([first, second], config)
    assert acc["loss"] == pytest.approx(big["loss"], rel=1e-5)
    for k in range(1, 5):
        assert acc[f"ce_q{k}"] == pytest.approx(big[f"ce_q{k}"], rel=1e-5)
    assert acc["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-4)
    assert acc_grads.keys() == big_grads.keys() and len(big_grads) > 10
    for name, grad in big_grads.items():
        # The two sides sum the same float32 terms in a different order (two backward passes
        # added into .grad vs one; the batch of 4 vs 2 changes the BLAS blocking). Rounding
        # then differs by a few ulps of the tensor's largest terms, not of each element, so
        # the absolute tolerance scales with the tensor's magnitude: 1e-5 of its largest
        # element is ~100x float32 rounding yet far below any real difference (a dropped or
        # double-counted micro-batch changes gradients by tens of percent).
        scale = grad.abs().max().item()
        torch.testing.assert_close(acc_grads[name], grad, rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=name)


def test_accumulation_update_equals_one_larger_batch():
    """The weights after one update agree too: exactly to rounding through SGD, whose step is
    linear in the gradient, and within AdamW's own step size for AdamW (see below)."""
    lr = 1e-3
    config = TrainConfig(data="unused", lr=lr, warmup_steps=0, grad_clip=0.5)
    full, first, second = _accumulation_case()
    sgd = lambda lm: torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=lr)  # noqa: E731
    before = _fresh_model().lm.state_dict()
    big_state, _, big_grads = _one_update([full], config, optimizer=sgd)
    acc_state, _, _ = _one_update([first, second], config, optimizer=sgd)
    moved = 0
    for name, value in big_state.items():
        # SGD: new = old - lr*grad, so the difference is lr times the gradient difference
        # (bounded above) plus one rounding of the weight: 2 ulps of the weight's magnitude.
        step = lr * big_grads[name].abs().max().item() if name in big_grads else 0.0
        atol = 2e-4 * step + 2 * torch.finfo(torch.float32).eps * value.abs().max().item() + 1e-12
        torch.testing.assert_close(acc_state[name], value, rtol=0, atol=atol, msg=name)
        moved += int(not torch.equal(value, before[name]))
    assert moved > 10  # the update really changed the weights

    # AdamW's first step moves each weight by lr * g / (|g| + eps): about lr for every element
    # whatever its size, so rounding noise in a near-zero gradient element (|g| ~ 1e-9) turns
    # into a difference up to 2*lr (issue 11). The tolerance is therefore tied to lr; the
    # gradient test above is the exact check.
    big_adam, _, _ = _one_update([full], config)
    acc_adam, _, _ = _one_update([first, second], config)
    differing = total = 0
    for name, value in big_adam.items():
        torch.testing.assert_close(acc_adam[name], value, rtol=0, atol=2.01 * lr, msg=name)
        differing += int((acc_adam[name] - value).abs().gt(1e-6).sum())
        total += value.numel()
    assert differing < 0.001 * total  # and only in a handful of near-zero-gradient elements


def test_naive_mean_of_micro_batch_means_differs_from_one_larger_batch():
    """What most trainers do (a mean of micro-batch means) is not the larger batch here, so the
    tests above would notice if our normalisation by global token counts were dropped."""
    config = TrainConfig(data="unused", lr=1e-3, warmup_steps=0, grad_clip=0.5)
    full, first, second = _accumulation_case()
    big = _one_update([full], config)[1]
    naive = (_one_update([first], config)[1]["loss"] + _one_update([second], config)[1]["loss"]) / 2
    assert naive != pytest.approx(big["loss"], rel=1e-4)


def test_condition_dropout_happens_at_the_configured_rate():
    codes = [np.zeros((4, 30), dtype=np.int16) for _ in range(5)]
    captions = [f"genre {i} piano and strings" for i in range(5)]
    for p in (0.0, 0.3, 0.7):
        sampler = CropSampler(codes, captions, 20, batch_size=3, seed=1, cond_dropout=p, word_dropout_p=0.0)
        batches = [sampler.micro_batch(i) for i in range(3000)]
        rate = np.mean([b.dropped for b in batches])
        assert abs(rate - p) < 0.03, (p, rate)
        for b in batches[:200]:
            # batch-level: all captions of a micro-batch are dropped together, or none
            assert all(c is None for c in b.captions) == b.dropped
            assert any(c is None for c in b.captions) == b.dropped


def test_word_dropout_rate_and_determinism():
    codes = [np.zeros((4, 30), dtype=np.int16)]
    caption = " ".join(f"w{i}" for i in range(50))
    sampler = CropSampler(codes, [caption], 20, batch_size=1, seed=0, cond_dropout=0.0, word_dropout_p=0.3)
    kept = [len(sampler.micro_batch(i).captions[0].split()) for i in range(400)]
    assert abs(1 - np.mean(kept) / 50 - 0.3) < 0.02
    again = CropSampler(codes, [caption], 20, batch_size=1, seed=0, cond_dropout=0.0, word_dropout_p=0.3)
    assert again.micro_batch(17).captions == sampler.micro_batch(17).captions


def test_crops_cover_clips_and_short_clips_are_padded():
    long_clip = np.arange(4 * 100, dtype=np.int16).reshape(4, 100) % 2048
    short_clip = np.ones((4, 7), dtype=np.int16)
    sampler = CropSampler([long_clip, short_clip], ["a", "b"], 30, batch_size=2, seed=3,
                          cond_dropout=0.0, word_dropout_p=0.0)
    starts = set()
    for i in range(200):
        batch = sampler.micro_batch(i)
        for row in range(2):
            valid = batch.frame_valid[row]
            if valid.sum() == 7:
                assert (batch.codes[row, :, :7] == 1).all() and not valid[7:].any()
            else:
                assert valid.all()
                starts.add(int(batch.codes[row, 0, 0]))
    assert len(starts) > 20  # random crop offsets, not always the beginning
