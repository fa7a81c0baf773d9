"""Memory modes measured on CPU: the estimate against real training steps, and full vs LoRA vs 8-bit.

For each case (model, micro-batch, clip seconds; full fine-tune, LoRA rank 16, 8-bit optimiser
states; activation checkpointing) a fresh subprocess loads the model, prepares training exactly as
``train.py`` does, warms the runtime up on a 1-second forward/backward (threads, kernel caches:
what the CUDA context is on a GPU), then runs a few ``train_step`` calls on random codes.

- "measured": the peak resident memory during the steps (Linux's high-water mark, reset just
  before them) minus the resident memory just before them;
- "estimated": the same settings' estimate (``memory_estimate.estimate_memory(...).growth_bytes``),
  i.e. without what exists before the first step (the weights) and without the CUDA allocator's
  overhead: optimiser states, EMA, and the larger of gradients and activations + logits.

The subprocesses run with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_), so a freed tensor
leaves RSS at once and RSS follows the live tensors, as a GPU allocator's count does (with glibc's
default, freed memory is kept for reuse and RSS reads up to 2x the live tensors on the tiny model).

Then, per model, the modes side by side from the same run: peak memory of the model and its training
(peak RSS minus the RSS before the model was loaded: the Python libraries, which a GPU does not hold,
left out; weights included, fp32 on the CPU even when frozen) and seconds per training sample (the steps after the first, which also creates the optimiser states), as
ratios to the full fine-tune. CPU figures: on a GPU see bench/gpu_check.py.

Usage: python bench/bench_memory.py [--cases tiny,small] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (model, batch, seconds, mode, checkpointing); mode: full, lora16, adamw8bit, lora16+adamw8bit
CASES = {
    "tiny": [("tiny", 2, 10.0, "full", False), ("tiny", 4, 5.0, "full", False), ("tiny", 2, 10.0, "lora16", False),
             ("tiny", 2, 10.0, "adamw8bit", False), ("tiny", 2, 10.0, "full", True)],
    "small": [("random:small", 1, 10.0, "full", False), ("random:small", 1, 10.0, "lora16", False),
              ("random:small", 1, 10.0, "adamw8bit", False), ("random:small", 1, 10.0, "full", True)],
}
STEPS = 3
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The process's peak resident memory from now on: Linux's high-water mark (VmHWM), reset by
    writing 5 to /proc/self/clear_refs; where that is not allowed, a thread sampling RSS every ms."""

    def __init__(self):
        self.start, self.thread, self.peak = _rss(), None, 0
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact, self.stop = False, threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def read(self) -> int:
        """Peak RSS (bytes) since construction."""
        if self.exact:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
        self.stop.set()
        self.thread.join()
        return max(self.peak, _rss())


def measure(model_name: str, batch: int, seconds: float, mode: str, checkpointing: bool,
            steps: int = STEPS) -> dict:
    """Run ``steps`` training steps in this process; the RSS growth and the estimate's figures."""
    import torch

    from musicgen_trainer.data import CodeBatch
    from musicgen_trainer.models import load_model
    from musicgen_trainer.memory_estimate import estimate_memory
    from musicgen_trainer.models import model_summary
    from musicgen_trainer.optimizers import STATE_BYTES
    from musicgen_trainer.step import make_state, prepare_lm_for_training, train_step
    from musicgen_trainer.train_config import TrainConfig

    class SingleProcess:
        device = torch.device("cpu")
        num_processes, process_index, is_main_process = 1, 0, True

        def prepare_model(self, m):
            return m

    import audiocraft.models  # noqa: F401  (libraries in memory before the baseline)
    torch.manual_seed(0)
    before_model = _rss()
    model = load_model(model_name, device="cpu")
    config = TrainConfig(data="unused", model=model_name, batch_size=batch, segment_seconds=seconds,
                         lora=16 if "lora16" in mode else None,
                         optimizer="adamw8bit" if "adamw8bit" in mode else "adamw",
                         activation_checkpointing=checkpointing, precision="fp32")
    prepare_lm_for_training(model, config, "fp32")
    state = make_state(model, config, SingleProcess(), total_steps=steps + 1, precision="fp32")
    lm = model.lm
    summary = model_summary(model)
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    frames = int(seconds * model.frame_rate)
    gen = torch.Generator().manual_seed(0)
    batches = [CodeBatch(codes=torch.randint(0, summary["card"], (batch, summary["codebooks"], frames), generator=gen),
                         frame_valid=torch.ones(batch, frames, dtype=torch.bool),
                         captions=[f"jazz music, take {i}" for i in range(batch)]) for _ in range(steps)]
    # The runtime's one-time setup (math threads' stacks and arenas, kernel caches: on a GPU, the
    # CUDA context the estimate keeps apart) happens on a 1-second forward/backward before measuring.
    from musicgen_trainer.objective import micro_batch_loss
    warm = torch.randint(0, summary["card"], (1, summary["codebooks"], int(model.frame_rate)), generator=gen)
    loss, _ = micro_batch_loss(lm, warm, torch.ones(1, warm.shape[-1], dtype=torch.bool), ["warm-up"],
                               torch.full((summary["codebooks"],), float(warm.shape[-1])))
    loss.backward()
    lm.zero_grad(set_to_none=True)
    del loss
    peak = PeakRSS()
    times = []
    for mb in batches:
        t0 = time.perf_counter()
        train_step(state, [mb])
        times.append(time.perf_counter() - t0)
    top = peak.read()
    estimate = estimate_memory(summary["lm_parameters"] + (trainable if config.lora else 0), trainable,
                               0, summary["lm_dim"], summary["lm_layers"], batch, frames, summary["codebooks"],
                               summary["card"], "fp32", checkpointing, optimizer_bytes=STATE_BYTES[config.optimizer])
    return {"model": model_name, "batch": batch, "seconds": seconds, "mode": mode, "checkpointing": checkpointing,
            "trainable": trainable, "measured_bytes": top - peak.start, "estimated_bytes": estimate.growth_bytes,
            "estimate_parts": {k: v for k, v in vars(estimate).items() if k != "weights"},
            "peak_rss_bytes": top, "exact_peak": peak.exact,
            # what a GPU would hold: the model and training, not the Python libraries
            "model_and_training_bytes": top - before_model,
            # the first step also creates the optimiser states: time the others
            "seconds_per_sample": sum(times[1:]) / max(1, len(times) - 1) / batch}


def run_cases(cases: list) -> list:
    """``measure(*case)`` for each case, in one fresh subprocess (its own allocator settings; the
    peak is reset before each case's steps)."""
    code = ("import json, sys; sys.path.insert(0, %r); from bench.bench_memory import measure; "
            "print('RESULT', json.dumps([measure(*c) for c in json.loads(sys.argv[1])]))" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, json.dumps([list(c) for c in cases])], capture_output=True,
                         text=True, env={**os.environ, **ENV}, cwd=ROOT)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{cases}: {out.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def describe(r: dict) -> str:
    ratio = r["estimated_bytes"] / r["measured_bytes"]
    return (f"{r['model']:>13} b{r['batch']} x {r['seconds']:g} s {r['mode']:<17}{' ckpt' if r['checkpointing'] else '     '}"
            f"  measured {r['measured_bytes'] / 2**20:8.1f} MiB  estimated {r['estimated_bytes'] / 2**20:8.1f} MiB"
            f"  estimate/measured {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="tiny,small", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    results = []
    for group in args.cases.split(","):
        for case in CASES[group]:
            results += run_cases([case])  # one process per case: each starts from a clean allocator
            print(describe(results[-1]), flush=True)
    print()
    for model in dict.fromkeys(r["model"] for r in results):
        full = next((r for r in results if r["model"] == model and r["mode"] == "full" and not r["checkpointing"]), None)
        for r in results:
            if r["model"] != model or r["checkpointing"] or full is None:
                continue
            used, used_full = r["model_and_training_bytes"], full["model_and_training_bytes"]
            print(f"{model:>13} b{r['batch']} x {r['seconds']:g} s {r['mode']:<10} model + training {used / 2**30:6.2f} GiB "
                  f"({used / used_full:.2f}x full)  {r['seconds_per_sample']:7.2f} s/sample "
                  f"({r['seconds_per_sample'] / full['seconds_per_sample']:.2f}x full)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
