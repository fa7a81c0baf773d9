"""The memory estimate (``--show``, ``--gpu-memory``) against real training steps.

bench/bench_memory.py measures the peak resident-memory growth of a few real ``train_step`` calls
on the CPU and sets it against the estimate for the same settings; the issue's bar is 15 %. Here on
the tiny model, whose memory is mostly logits; random:small (where it is mostly gradients and
optimiser states) is the bench's, recorded in docs/benchmarks.md.
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.bench_memory import run_cases  # noqa: E402

TOLERANCE = 0.15


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for resident memory")
def test_estimate_is_within_15_percent_of_measured_training_steps():
    cases = [("tiny", 2, 10.0, "full", False), ("tiny", 2, 10.0, "lora16", False),
             ("tiny", 2, 10.0, "adamw8bit", False), ("tiny", 4, 5.0, "full", True)]
    results = run_cases(cases)
    for r in results:
        ratio = r["estimated_bytes"] / r["measured_bytes"]
        assert abs(ratio - 1) <= TOLERANCE, (r["mode"], r["checkpointing"], ratio, r["estimate_parts"])
    full, lora, eight = results[:3]
    # what the modes change is really there: LoRA trains ~100x fewer parameters, 8-bit keeps 1/4 of the state
    assert lora["trainable"] * 10 < full["trainable"] and eight["trainable"] == full["trainable"]
    assert lora["measured_bytes"] < full["measured_bytes"] and eight["measured_bytes"] < full["measured_bytes"]
