"""--optimizer: AdamW with fp32 states, or bitsandbytes' 8-bit states (on CPU too), resumable."""
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import run_folder
from musicgen_trainer.data import collate
from musicgen_trainer.finetune import train
from musicgen_trainer.models import load_model
from musicgen_trainer.optimizers import STATE_BYTES, check_optimizer
from musicgen_trainer.step import make_state, prepare_lm_for_training, train_step
from musicgen_trainer.train_config import TrainConfig
from mt_helpers import train_stopped_after


class OneProcess:
    num_processes, process_index, is_main_process = 1, 0, True
    device = torch.device("cpu")

    def prepare_model(self, model):
        return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt_data")
    t = np.arange(44100) / 44100
    for i in range(4):
        sf.write(root / f"clip_{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 44100)
        (root / f"clip_{i}.txt").write_text(f"take {i}")
    return root


def test_adamw8bit_keeps_8bit_states_and_learns():
    model = load_model("tiny", device="cpu")
    config = TrainConfig(data="x", model="tiny", optimizer="adamw8bit", lr=3e-3, warmup_steps=0,
                         cond_dropout=0.0, word_dropout=0.0)
    prepare_lm_for_training(model, config)
    state = make_state(model, config, OneProcess(), total_steps=20, precision="fp32")
    codes = np.random.default_rng(0).integers(0, 2048, (4, 50))
    batch = collate([codes, codes], ["a tone", "a tone"], 50)
    losses = [train_step(state, [batch])["loss"] for _ in range(8)]
    assert losses[-1] < losses[0] - 0.5  # it learns the batch
    big = [s for s in state.optimizer.state.values() if "state1" in s and s["state1"].numel() >= 4096]
    assert big and all(s["state1"].dtype == torch.uint8 and s["state2"].dtype == torch.uint8 for s in big)


def test_adamw8bit_run_resumes_exactly(dataset, tmp_path):
    """A run stopped after step 2 and resumed has the uninterrupted run's losses: the 8-bit states
    (plain uint8/float tensors) go through the weights-only training state."""
    common = dict(data=str(dataset), model="tiny", cache_dir=str(tmp_path / "cache"), steps=4, save_every=2,
                  batch_size=2, segment_seconds=1.0, lr=1e-3, warmup_steps=1, sample_every=0, valid_fraction=0.0,
                  device="cpu", progress=False, optimizer="adamw8bit")
    train(TrainConfig(out=str(tmp_path / "whole"), **common))
    train_stopped_after(2, TrainConfig(out=str(tmp_path / "cut"), **common))
    train(TrainConfig(out=str(tmp_path / "cut"), resume="auto", **common))

    def history(name):
        return run_folder.load_state(run_folder.list_states(tmp_path / name / "checkpoints")[-1])["history"]
    whole, cut = history("whole"), history("cut")
    assert [h["step"] for h in cut] == [1, 2, 3, 4]
    for a, b in zip(whole, cut):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    # the optimiser is part of what a resume must match
    with pytest.raises(ValueError, match="optimizer"):
        train(TrainConfig(out=str(tmp_path / "cut"), resume="auto", **{**common, "optimizer": "adamw", "steps": 6}))


def test_optimizer_errors_are_one_line(monkeypatch):
    with pytest.raises(ValueError, match="needs a CUDA device") as err:
        check_optimizer("paged-adamw8bit", torch.device("cpu"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(data="x", optimizer="sgd")
    with pytest.raises(ValueError, match="FSDP"):
        TrainConfig(data="x", optimizer="adamw8bit", sharding="fsdp")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(ValueError, match="pip install") as err:
        check_optimizer("adamw8bit", torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_show_counts_8bit_states(dataset):
    from musicgen_trainer.dry_run import describe
    full = describe(TrainConfig(data=str(dataset), model="tiny", device="cpu"))
    small = describe(TrainConfig(data=str(dataset), model="tiny", device="cpu", optimizer="adamw8bit"))
    n = full["trainable_parameters"]
    assert full["memory_breakdown"]["optimizer"] == n * 8
    assert small["memory_breakdown"]["optimizer"] == pytest.approx(n * STATE_BYTES["adamw8bit"])
    assert full["training_state_bytes"] - small["training_state_bytes"] == pytest.approx(n * (8 - STATE_BYTES["adamw8bit"]), abs=2)
