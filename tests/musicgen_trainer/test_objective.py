"""The loss is audiocraft's, and accumulation is exactly a larger batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicgen_trainer.batches import CropSampler, collate
from musicgen_trainer.objective import conditions_for, micro_batch_loss, token_counts
from musicgen_trainer.train_config import TrainConfig
from musicgen_trainer.training import make_state, prepare_lm_for_training, train_step


class SingleProcess:
    """The parts of accelerate's Accelerator that train_step uses, for one CPU process."""
    device = torch.device("cpu")
    num_processes = 1
    process_index = 0
    is_main_process = True

    def prepare_model(self, model):
        return model


def _fresh_model():
    from musicgen_trainer.loading import load_model
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


def _one_update(micro_batches, config):
    model = _fresh_model()
    prepare_lm_for_training(model, config)
    state = make_state(model, config, SingleProcess(), total_steps=10)
    metrics = train_step(state, micro_batches)
    return model.lm.state_dict(), metrics


def test_accumulation_equals_one_larger_batch():
    """k=2 micro-batches of 2 == one batch of 4, also when padding differs between them."""
    config = TrainConfig(data="unused", lr=1e-3, warmup_steps=0, grad_clip=0.5)
    lengths = [24, 10, 24, 5]
    captions = ["jazz", "rock", None, "folk"]
    full = _batch(lengths, captions=captions)
    first = collate([full.codes[i, :, :lengths[i]].numpy() for i in (0, 1)], captions[:2], 24)
    second = collate([full.codes[i, :, :lengths[i]].numpy() for i in (2, 3)], captions[2:], 24)
    big_state, big = _one_update([full], config)
    acc_state, acc = _one_update([first, second], config)
    assert acc["loss"] == pytest.approx(big["loss"], rel=1e-5)
    for k in range(1, 5):
        assert acc[f"ce_q{k}"] == pytest.approx(big[f"ce_q{k}"], rel=1e-5)
    assert acc["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-4)
    for name, value in big_state.items():
        torch.testing.assert_close(acc_state[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # And a naive mean of micro-batch means (what most trainers do) would differ here.
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
