"""Distributed training that cannot silently go wrong: 2-process CPU runs (gloo) of the tiny model.

One data-parallel run (module fixture) is the reference; FSDP (sharded) runs, a resumed FSDP run
and a run under an accelerate config that asks for mixed precision must give the same losses and
weights. Launches we do not run (DeepSpeed, accelerate's FSDP without --sharding fsdp) stop at
start-up with one line. Each torchrun takes ~25 s here, so each run checks several things.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import run_folder

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _tone(seconds, freq, sr=44100):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))).astype(np.float32)


def _run(args, extra_env=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(extra_env or {})})
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def _state(out, step=None):
    states = run_folder.list_states(Path(out) / "checkpoints")
    path = states[-1] if step is None else Path(out) / "checkpoints" / f"step_{step:08d}.pt"
    return run_folder.load_state(path)


def _export(out):
    return torch.load(Path(out) / "export" / "state_dict.bin", weights_only=False)["best_state"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Six clips in two genres plus one file that cannot be decoded; the common flags."""
    root = tmp_path_factory.mktemp("dist")
    data = root / "data"
    for genre, base in (("jazz", 220.0), ("rock", 330.0)):
        (data / genre).mkdir(parents=True)
        for i, seconds in enumerate((2.0, 1.3, 0.6)):
            sf.write(data / genre / f"{genre}_{i}.wav", _tone(seconds, base * (i + 1)), 44100)
            (data / genre / f"{genre}_{i}.txt").write_text(f"{genre}, take {i}")
    (data / "rock" / "broken.wav").write_bytes(b"RIFF not really a wave file" * 10)
    common = ["--data", str(data), "--model", "tiny", "--steps", "3", "--batch-size", "1", "--segment-seconds", "1",
              "--lr", "1e-3", "--warmup-steps", "1", "--sample-every", "0", "--valid-fraction", "0.5",
              "--valid-every", "2", "--save-every", "2", "--ema", "--ema-every", "1",
              "--cache-dir", str(root / "cache"), "--device", "cpu", "--no-progress", "--export-dtype", "fp32"]
    return root, common


@pytest.fixture(scope="module")
def ddp(setup):
    """The reference: data parallel over 2 processes (the first run: it also encodes the data)."""
    root, common = setup
    done = _run([*TORCHRUN, "train.py", *common, "--out", str(root / "ddp")])
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "ddp", done


def test_encoding_is_shared_and_failures_reported_once(ddp):
    """Each process encodes its share of the clips (not rank 0 all of them while the other
    waits at a barrier), the undecodable file is reported once, and both processes trained on
    the same clips (else the run would have stopped)."""
    out, done = ddp
    lines = re.findall(r"process (\d) of 2: encoded (\d+) new clip\(s\), (\d+) failed", done.stdout)
    encoded = {rank: 0 for rank in "01"}
    failed = 0
    for rank, n, bad in lines:
        encoded[rank] += int(n)
        failed += int(bad)
    assert encoded["0"] > 0 and encoded["1"] > 0, done.stdout
    assert encoded["0"] + encoded["1"] == 6 and failed == 1, done.stdout
    assert done.stdout.count("broken.wav") == 1, done.stdout
    history = _state(out)["history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert "valid_loss" in history[1] and "valid_loss" in history[2]


def test_fsdp_matches_ddp_resumes_and_exports(setup, ddp):
    """--sharding fsdp gives DDP's losses, gradient norms (global-norm clipping), validation
    losses and exported (EMA) weights; a run resumed from its step-2 state continues with the
    same losses and weights; the export loads with load_model."""
    from musicgen_trainer.models import load_model

    root, common = setup
    ddp_out, _ = ddp
    fsdp = _run([*TORCHRUN, "train.py", *common, "--sharding", "fsdp", "--out", str(root / "fsdp")])
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    reference, sharded = _state(ddp_out)["history"], _state(root / "fsdp")["history"]
    assert len(reference) == len(sharded) == 3
    for a, b in zip(reference, sharded):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a.get("valid_loss", 0.0) == pytest.approx(b.get("valid_loss", 0.0), rel=1e-5)
    saved = _state(root / "fsdp")
    assert saved["config"]["sharding"] == "fsdp" and saved["world_size"] == 2
    assert set(saved["ema"]) <= set(saved["lm"]) and all(v.ndim >= 1 for v in saved["lm"].values())
    a, b = _export(ddp_out), _export(root / "fsdp")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # export-best/ (train_eval.py; gathered under FSDP, written by the main process): same step, same weights
    best = [json.loads((out / "export-best" / "export_info.json").read_text())["best"] for out in (ddp_out, root / "fsdp")]
    assert best[0]["step"] == best[1]["step"] and best[0]["valid_ce"] == pytest.approx(best[1]["valid_ce"], rel=1e-5)
    best_a, best_b = (torch.load(out / "export-best" / "state_dict.bin", weights_only=True)["best_state"]
                      for out in (ddp_out, root / "fsdp"))
    for key in best_a:
        torch.testing.assert_close(best_a[key], best_b[key], rtol=1e-5, atol=1e-6)

    resumed = _run([*TORCHRUN, "train.py", *common, "--sharding", "fsdp", "--out", str(root / "resumed"),
                    "--resume", str(root / "fsdp" / "checkpoints" / "step_00000002.pt")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stdout
    history = _state(root / "resumed")["history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert history[2]["loss"] == pytest.approx(sharded[2]["loss"], rel=1e-5)
    assert history[2]["lr"] == pytest.approx(sharded[2]["lr"], rel=1e-9)
    c = _export(root / "resumed")
    for key in b:
        torch.testing.assert_close(b[key], c[key], rtol=1e-5, atol=1e-6)

    # One process cannot shard: the sharded state (optimiser keyed by names) is refused in one line.
    alone = _run([sys.executable, "train.py", *common, "--sharding", "fsdp", "--grad-accum", "2",
                  "--out", str(root / "alone"), "--resume", str(root / "fsdp" / "checkpoints" / "step_00000002.pt")])
    assert alone.returncode == 2 and "saved by a sharded (--sharding fsdp) run" in alone.stderr, alone.stderr[-2000:]
    assert alone.stderr.strip().splitlines() == [next(l for l in alone.stderr.splitlines() if "sharded" in l)]
    assert alone.stderr.startswith("error: ")  # refused before any encoding or model loading

    model = load_model(str(root / "fsdp" / "export"), device="cpu")
    for key, value in model.lm.state_dict().items():
        torch.testing.assert_close(value, a[key], rtol=1e-5, atol=1e-6)


def test_fsdp_fp16_checkpointing_and_samples(setup, ddp, tmp_path):
    """fp16 under FSDP: the sharded gradient scaler (inf/NaN agreed over processes) with the
    non-fused AdamW (the fused one rejects that scaler), activation checkpointing, and samples
    generated by all processes in step (the sharded LM's forward is collective), written once."""
    import soundfile

    root, common = setup
    done = _run([*TORCHRUN, "train.py", *common, "--sharding", "fsdp", "--steps", "2", "--precision", "fp16",
                 "--activation-checkpointing", "--sample-every", "2", "--sample-seconds", "0.3",
                 "--sample-prompt", "jazz", "--out", str(tmp_path / "fp16")])
    assert done.returncode == 0, done.stderr[-3000:]
    saved = _state(tmp_path / "fp16")
    assert saved["scaler"] is not None and saved["scaler"]["scale"] > 0
    assert [h["step"] for h in saved["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in saved["history"])
    # fp16 compute, fp32 weights: close to the fp32 reference, not equal
    assert saved["history"][0]["loss"] == pytest.approx(_state(ddp[0])["history"][0]["loss"], rel=1e-2)
    samples = sorted((tmp_path / "fp16" / "samples" / "step_00000002").iterdir())
    assert [p.name for p in samples] == ["00_jazz.wav"] and soundfile.info(str(samples[0])).frames == 9600


def test_accelerate_mixed_precision_config_is_ignored(setup, ddp, tmp_path):
    """An accelerate config with mixed_precision must not wrap our forward in its autocast:
    --precision (fp32 on CPU here) is the only source of truth. On CPU accelerate applies bf16
    (its fp16 is a no-op without a GPU; on GPUs fp16 takes the same path). Before the fix this
    run differed from the fp32 reference by ~2e-4 in loss."""
    root, common = setup
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nmixed_precision: bf16\n"
                      "num_machines: 1\nnum_processes: 2\nuse_cpu: true\n")
    done = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "train.py",
                 *common, "--out", str(tmp_path / "acc")])
    assert done.returncode == 0, done.stderr[-3000:]
    saved = _state(tmp_path / "acc")
    assert saved["world_size"] == 2
    for a, b in zip(_state(ddp[0])["history"], saved["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    a, b = _export(ddp[0]), _export(tmp_path / "acc")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_unsupported_launches_stop_at_once(setup, tmp_path, monkeypatch):
    """DeepSpeed (as `accelerate launch` with a DeepSpeed config sets it) stops before any work
    with one line naming what is supported; so does accelerate's FSDP without --sharding fsdp."""
    root, common = setup
    done = _run([sys.executable, "train.py", *common, "--out", str(tmp_path / "ds")],
                extra_env={"ACCELERATE_USE_DEEPSPEED": "true"})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "DeepSpeed" in lines[0], done.stderr
    assert "supported are" in lines[0] and "--sharding fsdp" in lines[0]
    assert not (tmp_path / "ds").exists()  # stopped before claiming the run folder

    from musicgen_trainer.distributed import check_launch
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="add --sharding fsdp"):
        check_launch("none")
    check_launch("fsdp")


def test_fsdp_trains_melody_models_like_one_process(setup):
    """A melody model's condition tensors are made with LM weights outside its forward: sharded,
    they are made inside one gathered FSDP call (objective.CONDITIONED_FORWARD), so the losses,
    gradient norms, validation losses and export equal one process with --grad-accum 2."""
    root, common = setup
    melody = [a if a != "tiny" else "tiny-melody" for a in common]
    i = melody.index("--save-every")
    melody[i + 1] = "10"
    one = _run([sys.executable, "train.py", *melody, "--grad-accum", "2", "--out", str(root / "melody_one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run([*TORCHRUN, "train.py", *melody, "--sharding", "fsdp", "--out", str(root / "melody_fsdp")])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _state(root / "melody_one")["history"], _state(root / "melody_fsdp")["history"]
    assert len(a) == len(b) == 3 and any("valid_loss" in h for h in b)
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
        assert x.get("valid_loss", 0.0) == pytest.approx(y.get("valid_loss", 0.0), rel=1e-5)
    exported_one, exported_two = _export(root / "melody_one"), _export(root / "melody_fsdp")
    for key in exported_one:
        torch.testing.assert_close(exported_one[key], exported_two[key], rtol=1e-5, atol=1e-6)
