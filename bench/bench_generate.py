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

``--decoders``: the language model's decoding loop alone (``MusicGen._generate_tokens``: the
conditions, every LM step, sampling), our fast decoder (``fast_generate``, the default of
``generate()``) against audiocraft's own loop, alternating, the same seed (the codes are
checked identical). Per case (model:batch:seconds): tokens/s (batch x codebooks x frames per
second) of each, their ratio, process CPU time, and the peak resident memory above the
starting point during the call (sampled every 2 ms) next to the size of our static cache::

    python bench/bench_generate.py --decoders --cases tiny:1:5,tiny:8:30,small:1:5 --repeats 3

On a shared machine read ``cpu per pair`` (the median of each alternated pair's own CPU-time
ratio). ``--split`` adds the fast loop's CPU time per step split into the decode step, the
sampling and the rest (three more fast runs per case, timed through wrappers).
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
    # audiocraft's loop: this compares the wrapper alone (--decoders compares the loops)
    return generate(model, prompts, GenerationConfig(duration=seconds, seed=seed, extend_stride=15.0,
                                                     decoder="audiocraft"))


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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_above_start(fn, *args):
    """(result, peak resident bytes above the value at the start of the call), sampled every 2 ms."""
    import threading
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes() - start)
            time.sleep(0.002)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        out = fn(*args)
    finally:
        done.set()
        t.join()
    return out, max(peak[0], _rss_bytes() - start)


def lm_tokens(model, prompts, seconds: float, seed: int, decoder: str, compile=None):
    """Codes ``[B, K, F]`` from ``MusicGen._generate_tokens`` with ``decoder`` (fast / audiocraft)."""
    import torch
    from musicgen_trainer.fast_generate import fast_decoding
    frames = math.ceil(seconds * model.frame_rate - 1e-9)
    model.set_generation_params(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                                duration=(frames + 0.5) / model.frame_rate, cfg_coef=3.0,
                                extend_stride=min(15.0, model.max_duration / 2))
    torch.manual_seed(seed)
    attributes, _ = model._prepare_tokens_and_attributes(prompts, None)
    with torch.no_grad():
        if decoder == "audiocraft":
            return model._generate_tokens(attributes, None)
        with fast_decoding(model, compile=compile) as state:
            assert state["fast"], state["reason"]
            return model._generate_tokens(attributes, None)


def cache_bytes(model, batch: int, frames: int) -> int:
    """Our static cache for one window: layers x (k, v) x 2B x (positions) x dim x element size."""
    lm = model.lm
    frames = min(frames, int(model.max_duration * model.frame_rate))
    positions = len(lm.pattern_provider.get_pattern(frames).layout)  # the frames + the delays' steps
    return len(lm.transformer.layers) * 2 * 2 * batch * positions * lm.dim * next(lm.parameters()).element_size()


def bench_decoders(name: str, batch: int, seconds: float, repeats: int, device: str, compile=None,
                   split: bool = False) -> dict:
    """Tokens/s of our decoder vs audiocraft's loop (see the module doc)."""
    import torch
    from musicgen_trainer.models import load_model
    model = load_model("tiny" if name == "tiny" else f"random:{name}", device=device)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    for which in ("audiocraft", "fast"):  # warm-up (kernels, allocator; compiled steps when asked)
        lm_tokens(model, prompts, min(seconds, 0.2 if compile is None else seconds), 0, which, compile)
    frames = math.ceil(seconds * model.frame_rate - 1e-9)
    stats = {w: {"wall": [], "cpu": [], "peak": []} for w in ("audiocraft", "fast")}
    same = True
    for r in range(repeats):
        outs = {}
        for which in (("audiocraft", "fast") if r % 2 == 0 else ("fast", "audiocraft")):
            (t, c, out), peak = peak_rss_above_start(timed, lm_tokens, model, prompts, seconds, 100 + r, which, compile)
            stats[which]["wall"].append(t)
            stats[which]["cpu"].append(c)
            stats[which]["peak"].append(peak)
            outs[which] = out
        same &= torch.equal(outs["audiocraft"], outs["fast"])
    tokens = batch * model.lm.n_q * frames
    row = {"model": name, "batch": batch, "seconds": seconds, "frames": frames, "repeats": repeats,
           "device": device, "same_codes": bool(same), "cache_mb": round(cache_bytes(model, batch, frames) / 2 ** 20, 1)}
    for which, st in stats.items():
        med = statistics.median(st["wall"])
        row[which] = {"median_s": round(med, 3), "min_s": round(min(st["wall"]), 3),
                      "cpu_median_s": round(statistics.median(st["cpu"]), 3),
                      "tokens_per_s": round(tokens / med, 1), "steps_per_s": round(frames / med, 2),
                      "peak_rss_mb": round(max(st["peak"]) / 2 ** 20, 1)}
    row["ratio"] = round(row["audiocraft"]["median_s"] / row["fast"]["median_s"], 2)
    row["ratio_min"] = round(row["audiocraft"]["min_s"] / row["fast"]["min_s"], 2)
    row["ratio_cpu"] = round(row["audiocraft"]["cpu_median_s"] / row["fast"]["cpu_median_s"], 2)
    # the median of the pairs' own ratios: each pair ran minutes apart at most, so a neighbour's
    # load hits both of its runs more alike than it hits runs of different pairs
    row["ratio_cpu_pairs"] = round(statistics.median(
        a / f for a, f in zip(stats["audiocraft"]["cpu"], stats["fast"]["cpu"])), 2)
    if split:
        row["fast_split_ms_per_step"] = split_fast_step(model, prompts, seconds)
    del model
    return row


def split_fast_step(model, prompts, seconds: float, runs: int = 3) -> dict:
    """Where the fast loop's process CPU time goes, ms per step (median of ``runs``): the decode
    step (``lean_step``), the sampling (the callable ``loop_sampler`` returns: guidance mix, softmax,
    top-k, variates, argmax) and the rest (bookkeeping, conditions, prefill: the loop's total less
    the two). Before the loop sampler, "sampling" was ``sample_next`` and the guidance mix in "rest"."""
    import musicgen_trainer.fast_decode as fast_decode
    import musicgen_trainer.fast_generate as fast_generate
    spent = {"step": 0.0, "sampling": 0.0}
    originals = {"step": (fast_decode, "lean_step"), "sampling": (fast_generate, "loop_sampler")}

    def timed_call(key, fn):
        if key == "sampling":  # time the sampler it returns, not its making
            return lambda *args, **kwargs: timed_call("sampler", fn(*args, **kwargs))
        key = "sampling" if key == "sampler" else key
        def call(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.process_time() - start
        return call
    saved = {key: getattr(mod, name) for key, (mod, name) in originals.items()}
    rows = []
    try:
        for key, (mod, name) in originals.items():
            setattr(mod, name, timed_call(key, saved[key]))
        for r in range(runs):
            spent.update(step=0.0, sampling=0.0)
            _, total, codes = timed(lm_tokens, model, prompts, seconds, 200 + r, "fast")
            steps = codes.shape[-1] + model.lm.num_codebooks  # the delay pattern's extra steps
            rows.append({k: 1000 * v / steps for k, v in
                         {"total": total, **spent, "rest": total - sum(spent.values())}.items()})
    finally:
        for key, (mod, name) in originals.items():
            setattr(mod, name, saved[key])
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main_decoders(args, device: str) -> int:
    import torch
    rows = []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        try:
            name, batch, seconds = case.split(":")
            batch, seconds = int(batch), float(seconds)
        except ValueError:
            print(f"error: bad case {case!r}: use MODEL:BATCH:SECONDS, e.g. small:1:5", file=sys.stderr)
            return 2
        if name not in ("tiny", "small", "medium", "large"):
            print(f"error: unknown model {name!r} (tiny, small, medium, large)", file=sys.stderr)
            return 2
        r = bench_decoders(name, batch, seconds, args.repeats, device, split=args.split)
        rows.append(r)
        print(f"{name:5s} x{batch} {seconds:g} s  audiocraft {r['audiocraft']['tokens_per_s']:8.0f} tok/s "
              f"({r['audiocraft']['median_s']:.2f} s, cpu {r['audiocraft']['cpu_median_s']:.2f} s, "
              f"peak +{r['audiocraft']['peak_rss_mb']:.0f} MB)  fast {r['fast']['tokens_per_s']:8.0f} tok/s "
              f"({r['fast']['median_s']:.2f} s, cpu {r['fast']['cpu_median_s']:.2f} s, peak +{r['fast']['peak_rss_mb']:.0f} MB, "
              f"cache {r['cache_mb']:.0f} MB)  ratio {r['ratio']:.2f}x (best-of {r['ratio_min']:.2f}x, "
              f"cpu {r['ratio_cpu']:.2f}x, cpu per pair {r['ratio_cpu_pairs']:.2f}x)  same codes: {r['same_codes']}",
              flush=True)
        if args.split:
            print(f"      fast loop, ms of CPU per step: {r['fast_split_ms_per_step']}", flush=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(json.dumps(meta))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small", help="comma-separated: tiny, small (default both)")
    p.add_argument("--tiny-seconds", type=float, default=5.0)
    p.add_argument("--small-seconds", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--decoders", action="store_true", help="the LM loop alone: our fast decoder vs audiocraft's")
    p.add_argument("--cases", default="tiny:1:5,tiny:8:5,tiny:1:30,tiny:8:30,small:1:5,small:8:5",
                   help="with --decoders: MODEL:BATCH:SECONDS, comma-separated")
    p.add_argument("--split", action="store_true",
                   help="with --decoders: also where the fast loop's CPU time goes (step, sampling, rest)")
    args = p.parse_args(argv)
    import torch
    from musicgen_trainer.runtime import default_device
    device = default_device(args.device)
    if args.decoders:
        return main_decoders(args, device)
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
