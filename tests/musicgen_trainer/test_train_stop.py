"""Stopping a training run (Ctrl-C, SIGTERM, the studio's Stop) saves a resumable state at the
last completed step and --resume continues exactly; OUT/metrics.jsonl holds the curve."""
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import run_folder
from musicgen_trainer.finetune import train
from musicgen_trainer.metrics_log import MetricsLog, read_metrics
from musicgen_trainer.stop_request import TrainingStopped
from musicgen_trainer.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    t = np.arange(44100 * 2) / 44100
    for genre, base in (("jazz", 220.0), ("rock", 330.0)):
        (root / genre).mkdir()
        for i in range(3):
            sf.write(root / genre / f"{genre}_{i}.wav", (0.3 * np.sin(2 * np.pi * base * (i + 1) * t)).astype(np.float32),
                     44100)
            (root / genre / f"{genre}_{i}.txt").write_text(f"{genre}, take {i}")
    return root


def _config(data, out, cache, **kw):
    base = dict(data=str(data), model="tiny", out=str(out), cache_dir=str(cache), batch_size=2,
                segment_seconds=1.0, lr=2e-3, warmup_steps=2, sample_every=0, eval_every=2, valid_fraction=0.3,
                save_every=1000, log_every=1, progress=False, device="cpu", export_dtype="fp32")
    base.update(kw)
    return TrainConfig(**base)


def _history(out):
    return run_folder.load_state(run_folder.list_states(Path(out) / "checkpoints")[-1])["history"]


def _signal_at(step, signum, monkeypatch):
    """Deliver ``signum`` to this process while step ``step`` runs (as Ctrl-C / kill would)."""
    import musicgen_trainer.finetune as finetune
    real_step = finetune.train_step

    def step_with_signal(state, micro):
        if state.step == step - 1:
            os.kill(os.getpid(), signum)
        return real_step(state, micro)
    monkeypatch.setattr(finetune, "train_step", step_with_signal)


def _unhandled(signum, frame):
    raise RuntimeError(f"signal {signum} reached the test's own handler: train() did not handle it")


@pytest.fixture
def own_handlers():
    """The test's handlers for SIGINT/SIGTERM while it runs: a signal train() does not handle
    fails the test instead of stopping (SIGINT) or killing (SIGTERM) pytest."""
    previous = {sig: signal.signal(sig, _unhandled) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_saves_it_and_resume_is_exact(dataset, tmp_path, monkeypatch, own_handlers,
                                                                     signum):
    cache = tmp_path / "cache"
    train(_config(dataset, tmp_path / "full", cache, steps=5))
    uninterrupted = _history(tmp_path / "full")

    _signal_at(3, signum, monkeypatch)
    with pytest.raises(TrainingStopped) as stopped:
        train(_config(dataset, tmp_path / "cut", cache, steps=5))
    assert stopped.value.step == 3 and str(stopped.value) == "stopped at step 3; resume with --resume"
    # the state of step 3 (not save_every's: there was none), nothing exported
    assert [p.name for p in run_folder.list_states(tmp_path / "cut" / "checkpoints")] == ["step_00000003.pt"]
    assert not (tmp_path / "cut" / "export").exists()
    assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is _unhandled  # given back
    monkeypatch.undo()

    train(_config(dataset, tmp_path / "cut", cache, steps=5, resume="auto"))
    resumed = _history(tmp_path / "cut")
    assert [h["step"] for h in resumed] == [1, 2, 3, 4, 5]
    for a, b in zip(uninterrupted, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    a = torch.load(tmp_path / "full" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    b = torch.load(tmp_path / "cut" / "export" / "state_dict.bin", weights_only=False)["best_state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
    # the curve: one line per step, not doubled, held-out loss where evaluated (steps 2, 4, 5)
    rows = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "valid_loss" in r] == [2, 4, 5]
    for row, h in zip(rows, resumed):
        assert row["loss"] == pytest.approx(h["loss"], rel=1e-6) and row["lr"] == pytest.approx(h["lr"])
        assert row["tokens_per_s"] > 0 and row["elapsed"] >= 0
    elapsed = [r["elapsed"] for r in rows]
    assert elapsed == sorted(elapsed)  # the resumed part continues the clock


def test_metrics_log_keeps_the_lines_up_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "elapsed": float(s)}) + "\n" for s in (1, 2, 3, 4))
                    + '{"step": 5, "lo')  # a half-written last line (a kill while writing)
    log = MetricsLog(path, resumed_step=2)
    row = log.write({"step": 3, "loss": float("nan"), "lr": 1e-3, "tokens_per_s": 10.0, "ce_q1": 2.0})
    log.close()
    assert row["loss"] is None and "ce_q1" not in row and row["elapsed"] >= 2.0
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines())  # strict JSON
    MetricsLog(path).close()  # a new run starts the file afresh
    assert read_metrics(path) == []


def test_a_resume_keeps_the_early_lines_of_a_file_larger_than_a_reader_takes(tmp_path, monkeypatch):
    """A reader takes the file's last MAX_READ_BYTES (16 MB); the rewrite on resume takes it all
    (the cap made small here, so the file need not be 16 MB)."""
    monkeypatch.setattr(read_metrics, "__defaults__", (200,))
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0, "elapsed": float(s)}) + "\n" for s in range(1, 41)))
    assert read_metrics(path)[0]["step"] > 1  # the reader's window does not reach the start
    log = MetricsLog(path, resumed_step=30)
    log.close()
    assert log.offset == 30.0
    assert [r["step"] for r in read_metrics(path, max_bytes=1 << 20)] == list(range(1, 31))


def test_the_studio_stop_is_ctrl_c_and_resume_finishes(dataset, tmp_path):
    """train.py as the page runs it (jobs.start_job): Stop once metrics.jsonl shows a step, the
    job exits 130 ("stopped") with the state of that step saved; resuming finishes and exports."""
    from musicgen_trainer.app import jobs
    out = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train.py"), "--data", str(dataset), "--model", "tiny", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2", "--segment-seconds", "1", "--steps", "400",
            "--log-every", "1", "--sample-every", "0", "--eval-every", "0", "--device", "cpu", "--no-progress"]
    jobs.start_job("train", argv, out, cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 120
        while not read_metrics(out / "metrics.jsonl") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert read_metrics(out / "metrics.jsonl"), jobs.read_log(out)[-2000:]
        assert jobs.stop_job(out)
        info = jobs.wait_job(out, timeout=60)
    finally:
        jobs.stop_job(out, force=True)
    log = jobs.read_log(out)
    assert info.state == "stopped" and info.returncode == 130, log[-2000:]
    states = run_folder.list_states(out / "checkpoints")
    assert len(states) == 1
    step = run_folder.load_state(states[0])["step"]
    assert f"stopped at step {step}; resume with --resume" in log and "Traceback" not in log
    assert 1 <= step < 400 and not (out / "export").exists()
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == step

    # resumed in this process (one train.py start is enough to test the command's side)
    train(_config(dataset, out, tmp_path / "cache", steps=step + 2, log_every=1, eval_every=0, resume="auto", valid_fraction=0.1,
                  batch_size=2, export_dtype="fp16"))
    assert (out / "export" / "state_dict.bin").is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, step + 3))


def _agree(rank: int, world: int, init: str, asked: bool, results) -> None:
    import torch.distributed as dist

    from musicgen_trainer.stop_request import StopRequest

    class Acc:  # what StopRequest reads of accelerate's Accelerator
        num_processes, device = world, "cpu"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        stop = StopRequest(Acc())
        first = stop.agreed()  # nobody asked yet
        stop.requested = asked
        results.put((rank, first, stop.agreed()))
    finally:
        dist.destroy_process_group()


def test_a_stop_asked_of_one_process_stops_every_process(tmp_path):
    """``kill -INT`` of one rank: after the step every rank agrees to stop (none is left waiting in
    the next step's collectives)."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_agree, args=(rank, 2, init, rank == 1, results)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(results.get(timeout=5) for _ in procs) == [(0, False, True), (1, False, True)]


def test_sigterm_after_a_stop_request_does_not_abandon_the_step():
    from musicgen_trainer.stop_request import StopRequest
    stop = StopRequest()
    stop._handle(signal.SIGINT, None)
    stop._handle(signal.SIGTERM, None)  # torchrun's agent passing Ctrl-C on
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)  # a second Ctrl-C


def test_a_foreign_metrics_file_stops_a_new_run_before_any_work(dataset, tmp_path):
    from musicgen_trainer.run_folder import RunFolderError
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own notes\n")
    with pytest.raises(RunFolderError, match=r"metrics.jsonl exists and was not written by a run"):
        train(_config(dataset, out, tmp_path / "cache", steps=1))
    assert (out / "metrics.jsonl").read_text() == "my own notes\n"
