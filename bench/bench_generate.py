"""Benchmark generation: our ``generate()`` wrapper vs calling audiocraft's ``MusicGen.generate``.

In one process, on the same model, same prompts and same seed, alternating the two calls
(A B A B ...) so that machine load hits both alike:

- ``audiocraft``: ``model.set_generation_params(...)`` + ``torch.manual_seed`` + ``model.generate``;
- ``ours``: ``musicgen_trainer.generation.generate`` (exact lengths, seeding with the global
  RNG restored, progress accounting, trimming).

Both produce the same audio (checked). Reported per model: median wall time, real-time
factor (RTF = generation time / audio duration; below 1 is faster than real time), frames/s
(LM steps per second), tokens/s (batch x codebooks x frames per second), process CPU time,
the measured difference (ours / audiocraft - 1: on a shared machine mostly noise), and the
wrapper's own cost measured directly: ``generate()`` timed with audiocraft's call replaced by
a stub that returns a ready tensor (and fires the per-step progress callback as audiocraft does).

Models (random weights, built offline):
- ``tiny``: the project's tiny MusicGen (2 layers, dim 64);
- ``small``: musicgen-small's language model size (24 layers, dim 1024, 16 heads, ~420 M
  parameters with cross-attention), tiny codec and text encoder.

    python bench/bench_generate.py                          # tiny 5 s + small-size 1 s, CPU: a few minutes
    python bench/bench_generate.py --models tiny --repeats 5 --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROMPTS = ["lo-fi jazz piano, 80 bpm", "driving rock with distorted guitars", "ambient pads", "funk bass groove"]


def build(name: str, device: str):
    from musicgen_trainer.runtime import import_audiocraft
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    import_audiocraft()
    cfg = TinyConfig() if name == "tiny" else TinyConfig(lm_dim=1024, lm_heads=16, lm_layers=24)
    return build_tiny_musicgen(cfg, device=device)


def direct(model, prompts, seconds: float, seed: int):
    """What a user of audiocraft writes: set the parameters, seed, generate."""
    import torch
    frames = math.ceil(seconds * model.frame_rate - 1e-9)
    model.set_generation_params(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                                duration=(frames + 0.5) / model.frame_rate, cfg_coef=3.0, extend_stride=15.0)
    torch.manual_seed(seed)
    return model.generate(prompts)


def ours(model, prompts, seconds: float, seed: int):
    from musicgen_trainer.generation import GenerationConfig, generate
    return generate(model, prompts, GenerationConfig(duration=seconds, seed=seed, extend_stride=15.0))


def timed(fn, *args):
    """(wall seconds, process CPU seconds, result)."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, out


def wrapper_only(model, prompts, seconds: float, calls: int = 20) -> float:
    """Median seconds of everything ``generate()`` does around audiocraft's call: the model's
    ``generate`` is replaced by one returning a ready tensor after calling the progress
    callback once per planned step, exactly as audiocraft does."""
    import torch
    from musicgen_trainer.generation import planned_steps
    frames = math.ceil(seconds * model.frame_rate - 1e-9)
    ready = torch.zeros(len(prompts), model.audio_channels, frames * int(model.sample_rate / model.frame_rate))
    real = model.generate

    def stub(descriptions, progress=False):
        steps = planned_steps(model, frames)
        for i in range(steps):
            model._progress_callback(i + 1, steps)
        return ready
    model.generate = stub
    try:
        times = [timed(ours, model, prompts, seconds, 0)[0] for _ in range(calls)]
    finally:
        model.generate = real
    return statistics.median(times)


def bench_model(name: str, seconds: float, batch: int, repeats: int, device: str) -> dict:
    import torch
    from musicgen_trainer.models import count_parameters
    model = build(name, device)
    prompts = PROMPTS[:batch]
    timed(ours, model, prompts, min(seconds, 0.2), 0)  # warm-up (kernels, allocator)
    times = {"audiocraft": [], "ours": []}
    cpu = {"audiocraft": [], "ours": []}
    same = True
    for r in range(repeats):
        order = ("audiocraft", "ours") if r % 2 == 0 else ("ours", "audiocraft")
        outs = {}
        for which in order:
            fn = direct if which == "audiocraft" else ours
            t, c, out = timed(fn, model, prompts, seconds, 1234 + r)
            times[which].append(t)
            cpu[which].append(c)
            outs[which] = out
        n = outs["ours"].shape[-1]
        same &= torch.equal(outs["audiocraft"][..., :n].float().cpu(), outs["ours"])
    frames = math.ceil(seconds * model.frame_rate - 1e-9)
    row = {"model": name, "lm_parameters": count_parameters(model.lm), "device": device, "batch": batch,
           "seconds": seconds, "frames": frames, "codebooks": int(model.lm.n_q), "repeats": repeats,
           "same_audio": bool(same)}
    for which, ts in times.items():
        med = statistics.median(ts)
        row[which] = {"median_s": round(med, 4), "min_s": round(min(ts), 4),
                      "cpu_median_s": round(statistics.median(cpu[which]), 4), "rtf": round(med / seconds, 4),
                      "frames_per_s": round(frames / med, 2),
                      "tokens_per_s": round(batch * model.lm.n_q * frames / med, 1)}
    row["overhead_pct"] = round(100 * (row["ours"]["median_s"] / row["audiocraft"]["median_s"] - 1), 2)
    row["wrapper_only_ms"] = round(1000 * wrapper_only(model, prompts, seconds), 3)
    row["wrapper_only_pct"] = round(100 * row["wrapper_only_ms"] / 1000 / row["audiocraft"]["median_s"], 4)
    del model
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small", help="comma-separated: tiny, small (default both)")
    p.add_argument("--tiny-seconds", type=float, default=5.0)
    p.add_argument("--small-seconds", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    import torch
    from musicgen_trainer.runtime import default_device
    device = default_device(args.device)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in ("tiny", "small"):
            print(f"error: unknown model {name!r} (tiny, small)", file=sys.stderr)
            return 2
        seconds = args.tiny_seconds if name == "tiny" else args.small_seconds
        rows.append(bench_model(name, seconds, args.batch, args.repeats, device))
        r = rows[-1]
        print(f"{name:5s} {r['lm_parameters'] / 1e6:7.1f} M  {seconds:g} s x{args.batch}  "
              f"audiocraft {r['audiocraft']['median_s']:7.2f} s (RTF {r['audiocraft']['rtf']:.2f}, "
              f"{r['audiocraft']['tokens_per_s']:.0f} tok/s)  ours {r['ours']['median_s']:7.2f} s "
              f"(RTF {r['ours']['rtf']:.2f}, {r['ours']['tokens_per_s']:.0f} tok/s)  "
              f"difference {r['overhead_pct']:+.1f}% (noise)  wrapper alone {r['wrapper_only_ms']:.2f} ms "
              f"= {r['wrapper_only_pct']:.3f}%  same audio: {r['same_audio']}", flush=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
