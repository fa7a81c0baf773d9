"""End-to-end training runs of the tiny model on CPU: memorisation, resume, precision,
data parallel, divergence handling, and the train.py command."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import run_folder
from musicgen_trainer.train_config import TrainConfig
from musicgen_trainer.finetune import train
from mt_helpers import greedy_reproduction, train_stopped_after

ROOT = Path(__file__).resolve().parents[2]


def _tone(seconds, freq, sr=44100, wobble=3.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * wobble * t))).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two genre folders of short WAV + .txt pairs (one clip shorter than the window)."""
    root = tmp_path_factory.mktemp("data")
    for genre, base in (("jazz", 220.0), ("rock", 330.0)):
        (root / genre).mkdir()
        for i, seconds in enumerate((2.0, 1.3, 0.6)):
            sf.write(root / genre / f"{genre}_{i}.wav", _tone(seconds, base * (i + 1)), 44100)
            (root / genre / f"{genre}_{i}.txt").write_text(f"{genre}, take {i}")
    return root


def _config(data, out, cache, **kw):
    base = dict(data=str(data), model="tiny", out=str(out), cache_dir=str(cache), batch_size=2,
                segment_seconds=1.0, lr=2e-3, warmup_steps=2, sample_every=0, valid_every=3,
                save_every=1000, progress=False, device="cpu", export_dtype="fp32")  # exports compared exactly
    base.update(kw)
    return TrainConfig(**base)


def _history(out):
    return run_folder.load_state(run_folder.list_states(Path(out) / "checkpoints")[-1])["history"]


def test_memorisation_reproduces_training_codes(tmp_path):
    """Train on two 1 s clips until the loss is ~0, export, load the export, generate with
    the same captions and top-k 1: the generated codes are the training codes. This checks
    that data, delay pattern, conditioning, export and generation line up."""
    data = tmp_path / "two"
    data.mkdir()
    for i, (freq, caption) in enumerate(((220.0, "jazz piano"), (330.0, "rock guitar"))):
        sf.write(data / f"clip{i}.wav", _tone(1.0, freq, sr=32000), 32000)
        (data / f"clip{i}.txt").write_text(caption)
    config = _config(data, tmp_path / "run", tmp_path / "cache", steps=200, lr=5e-3, warmup_steps=10,
                     word_dropout=0.0, valid_fraction=0.0, weight_decay=0.0)
    export = train(config)
    history = _history(tmp_path / "run")
    assert history[-1]["loss"] < 0.05 < history[0]["loss"]

    tokens, reference, agreement = greedy_reproduction(export, data, tmp_path / "cache")
    assert tokens.shape == reference.shape == (2, 4, 50)
    assert agreement >= 0.99, agreement


def test_resume_continues_exactly(dataset, tmp_path):
    cache = tmp_path / "cache"
    full = _config(dataset, tmp_path / "full", cache, steps=6, save_every=3)
    train(full)
    uninterrupted = _history(tmp_path / "full")

    # Same run, "killed" after step 3 (the state of step 3 is on disk), then resumed.
    train_stopped_after(3, _config(dataset, tmp_path / "cut", cache, steps=6, save_every=3))
    assert [p.name for p in run_folder.list_states(tmp_path / "cut" / "checkpoints")] == ["step_00000003.pt"]
    assert not (tmp_path / "cut" / "export").exists()
    train(_config(dataset, tmp_path / "cut", cache, steps=6, save_every=3, resume="auto"))
    resumed = _history(tmp_path / "cut")
    assert [h["step"] for h in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(uninterrupted, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)  # the schedule was not restarted
    a = torch.load(tmp_path / "full" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    b = torch.load(tmp_path / "cut" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_states_hold_only_what_trains_and_resume_with_frozen_parameters_is_exact(dataset, tmp_path):
    """Frozen parameters never change: a state without them is smaller (a LoRA state of
    musicgen-medium: ~0.2 GB instead of 3.7 GB) and resume takes them from the base model."""
    cache = tmp_path / "cache"
    frozen = dict(freeze=["emb", "transformer.layers.0"], steps=4, save_every=2)
    train(_config(dataset, tmp_path / "full", cache, **frozen))
    train_stopped_after(2, _config(dataset, tmp_path / "cut", cache, **frozen))
    saved = run_folder.load_state(run_folder.list_states(tmp_path / "cut" / "checkpoints")[-1])
    assert saved["lm"] and not [k for k in saved["lm"] if k.startswith(("emb.", "transformer.layers.0."))]
    assert "linears.0.weight" in saved["lm"]
    train(_config(dataset, tmp_path / "cut", cache, resume="auto", **frozen))
    for a, b in zip(_history(tmp_path / "full"), _history(tmp_path / "cut")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    a = torch.load(tmp_path / "full" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    b = torch.load(tmp_path / "cut" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    assert a.keys() == b.keys() and "emb.0.weight" in b  # exports stay whole
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_give_finite_losses(dataset, tmp_path, precision):
    train(_config(dataset, tmp_path / precision, tmp_path / "cache", steps=3, precision=precision))
    history = _history(tmp_path / precision)
    assert all(math.isfinite(h["loss"]) for h in history)
    saved = run_folder.load_state(run_folder.list_states(tmp_path / precision / "checkpoints")[-1])
    assert (saved["scaler"] is not None) == (precision == "fp16")
    assert (tmp_path / precision / "export" / "state_dict.bin").is_file()


def test_validation_loss_and_options(dataset, tmp_path):
    config = _config(dataset, tmp_path / "opts", tmp_path / "cache", steps=3, valid_fraction=0.5,
                     ema=True, ema_every=1, freeze=["emb"], activation_checkpointing=True,
                     sample_every=3, sample_seconds=0.5, sample_prompts=["jazz, take 9"])
    from musicgen_trainer.models import load_model
    before = load_model("tiny", device="cpu").lm.state_dict()
    export = train(config)
    history = _history(tmp_path / "opts")
    assert "valid_loss" in history[-1] and math.isfinite(history[-1]["valid_loss"])
    after = torch.load(export / "state_dict.bin", weights_only=False)["best_state"]
    assert torch.equal(after["emb.0.weight"], before["emb.0.weight"])  # frozen
    assert not torch.equal(after["linears.0.weight"], before["linears.0.weight"])  # trained (EMA)
    samples = list((tmp_path / "opts" / "samples" / "step_00000003").glob("*.wav"))
    assert [p.name for p in samples] == ["00_jazz_take_9.wav"]
    assert sf.info(str(samples[0])).frames == 16000  # 0.5 s at 32 kHz, from the text alone
    assert list((tmp_path / "opts" / "tensorboard").glob("events.out.tfevents.*"))


def test_non_finite_losses_stop_the_run_without_export(dataset, tmp_path, monkeypatch):
    import musicgen_trainer.step as training
    real = training.micro_batch_loss

    def poisoned(*args, **kwargs):
        loss, shares = real(*args, **kwargs)
        return loss * float("nan"), shares

    monkeypatch.setattr(training, "micro_batch_loss", poisoned)
    with pytest.raises(training.TrainingDiverged, match="consecutive non-finite"):
        train(_config(dataset, tmp_path / "nan", tmp_path / "cache", steps=10, max_nonfinite=3))
    assert not (tmp_path / "nan" / "export").exists()


def _run(args, extra_env=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def test_two_process_data_parallel_matches_accumulation(dataset, tmp_path):
    """torchrun with 2 CPU processes (gloo) == 1 process with --grad-accum 2."""
    common = ["--data", str(dataset), "--model", "tiny", "--steps", "3", "--batch-size", "2",
              "--segment-seconds", "1", "--lr", "1e-3", "--warmup-steps", "1", "--sample-every", "0",
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress",
              "--export-dtype", "fp32"]
    single = _run([sys.executable, "train.py", *common, "--grad-accum", "2", "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "train.py", *common, "--out", str(tmp_path / "two")])
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    a = torch.load(tmp_path / "one" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    b = torch.load(tmp_path / "two" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_train_cli_show_and_errors(dataset, tmp_path):
    show = _run([sys.executable, "train.py", "--data", str(dataset), "--model", "tiny", "--show",
                 "--batch-size", "2"])
    assert show.returncode == 0, show.stderr[-2000:]
    assert "trainable parameters" in show.stdout and "jazz, rock" in show.stdout
    assert "estimated peak memory" in show.stdout
    missing = _run([sys.executable, "train.py", "--data", str(tmp_path / "nope"), "--model", "tiny"])
    assert missing.returncode == 2 and missing.stderr.startswith("error: dataset not found")
    bad = _run([sys.executable, "train.py", "--data", str(dataset), "--model", "tiny", "--lr", "-1"])
    assert bad.returncode == 2 and "lr must be > 0" in bad.stderr
    (tmp_path / "cfg.yaml").write_text(f"data: {dataset}\nmodel: tiny\nbatch_size: 3\nbogus: 1\n")
    unknown = _run([sys.executable, "train.py", "--config", str(tmp_path / "cfg.yaml"), "--show"])
    assert unknown.returncode == 2 and "unknown option(s): bogus" in unknown.stderr
