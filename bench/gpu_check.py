"""One short script that exercises the CUDA paths we cannot test on our CPU-only machines.

GPU time is scarce (a few minutes when a machine is lent), so everything that needs a GPU runs
here, once, in under ~8 minutes on one GPU, and prints one table to paste into
docs/benchmarks.md. Each check runs in its own ``try`` so one failure still leaves the others'
figures; the exit status is 1 when any check failed.

Checks:
- ``step``: real training steps (``make_state`` + ``train_step``, the product's code) of
  random-weight musicgen-small and -medium shapes at 30 s crops, in bf16 and in fp16 (with the
  gradient scaler): peak CUDA memory, tokens/s (valid code positions per second) and model
  FLOPs utilisation (nanoGPT's estimate: 6·N + 12·L·d·S FLOPs per position, against the
  GPU's dense bf16/fp16 peak when the GPU is in ``PEAK_TFLOPS``);
- ``train``: ``train()`` end to end on CUDA (cached codes, export, reload, generation) for the
  tiny melody and stereo variants, on a small synthetic dataset;
- ``resume``: 4 steps in one go vs 2 steps + resume to 4: the losses after resuming must match;
- ``generate``: generation with random musicgen-small shapes: seconds per second of audio;
- ``decode``: the LM decoding loop alone, musicgen-small shapes in bf16 (weights cast, no
  autocast), batch 1 and 8, our fast decoder (static cache; compiled with CUDA graphs,
  ``mode="reduce-overhead"``, warmed once first, and eager) against audiocraft's loop, alternating:
  steps/s of each, the ratio, the share of codes identical to audiocraft's, and steps/s against
  the bandwidth bound (LM weight bytes / the GPU's memory bandwidth, when it is in ``BANDWIDTH_GBS``).

Usage:
    python bench/gpu_check.py [--json results.json]      # on a CUDA machine (~5-8 min)
    python bench/gpu_check.py --smoke                    # CPU, tiny shapes: checks the script itself
``--json`` defaults to ``$OUT/gpu_check.json`` when ``$OUT`` is set (the device tool's folder).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
               "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}

# HBM bandwidth (GB/s) from the vendors' data sheets: one decode step streams every LM weight once.
BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L40S": 864.0, "L4": 300.0, "A10": 600.0,
                 "RTX 4090": 1008.0, "RTX 3090": 936.0, "V100": 900.0, "T4": 320.0}
# (model, batch, seconds): the decode check's cases.
DECODE_PLAN = [("random:small", 1, 5.0), ("random:small", 8, 5.0)]
SMOKE_DECODE_PLAN = [("tiny", 1, 0.5)]

# (model, batch, seconds per crop, measured steps): 30 s crops as users train.
STEP_PLAN = [("random:small", 2, 30.0, 4), ("random:medium", 2, 30.0, 3)]
SMOKE_STEP_PLAN = [("tiny", 2, 1.0, 2)]
# Memory modes, bf16: (model, batch, seconds, steps, optimizer, activation checkpointing, LoRA rank).
MODE_PLAN = [("random:small", 2, 30.0, 3, "adamw8bit", False, 0), ("random:small", 2, 30.0, 3, "adamw", False, 16),
             ("random:medium", 2, 30.0, 2, "adamw8bit", True, 0), ("random:medium", 2, 30.0, 2, "adamw", True, 16),
             ("random:large", 1, 30.0, 2, "adamw", True, 16)]
SMOKE_MODE_PLAN = [("tiny", 2, 1.0, 2, "adamw8bit", True, 0), ("tiny", 2, 1.0, 2, "adamw", False, 8)]


class SingleProcess:
    """The accelerator surface ``make_state``/``train_step`` use, for one process."""
    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, device):
        import torch
        self.device = torch.device(device)

    def prepare_model(self, model):
        return model


def peak_tflops(device) -> float | None:
    import torch
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def check_step(model_name: str, batch: int, seconds: float, steps: int, precision: str, device: str,
               optimizer: str = "adamw", checkpointing: bool = False, lora: int = 0) -> dict:
    """Training steps on synthetic codes: peak memory (next to --show's estimate), tokens/s, MFU."""
    import torch

    from musicgen_trainer.data import collate
    from musicgen_trainer.models import load_model
    from musicgen_trainer.step import make_state, prepare_lm_for_training, train_step
    from musicgen_trainer.train_config import TrainConfig

    acc = SingleProcess(device)
    cuda = acc.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = load_model(model_name, device=device)
    config = TrainConfig(data="unused", model=model_name, batch_size=batch, segment_seconds=seconds,
                         precision=precision, warmup_steps=1, optimizer=optimizer,
                         activation_checkpointing=checkpointing, lora=lora or None)
    prepare_lm_for_training(model, config)
    state = make_state(model, config, acc, total_steps=steps + 2, precision=precision)
    lm = model.lm
    frames = int(seconds * model.frame_rate)
    gen = torch.Generator().manual_seed(0)
    captions = ["an upbeat rock song with electric guitars", "slow piano jazz"] * batch
    batches = [collate([torch.randint(0, lm.card, (lm.n_q, frames), generator=gen).numpy() for _ in range(batch)],
                       captions[:batch], frames).to(acc.device) for _ in range(2)]
    times, tokens, losses, skipped = [], 0.0, [], 0
    for i in range(steps + 1):  # step 0 warms up (kernels, allocator)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        metrics = train_step(state, [batches[i % 2]])
        if cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
            tokens += metrics["tokens"]
            losses.append(metrics["loss"])
            skipped += metrics["skipped"]
    elapsed = sum(times)
    n_params = sum(p.numel() for p in lm.parameters())
    layers, dim = len(lm.transformer.layers), lm.dim
    positions = batch * (frames + lm.n_q - 1) * steps  # sequence steps the transformer ran
    flops = positions * (6 * n_params + 12 * layers * dim * (frames + lm.n_q - 1))
    peak = peak_tflops(acc.device)
    from musicgen_trainer.dry_run import estimate_memory
    from musicgen_trainer.models import model_summary
    from musicgen_trainer.optimizers import STATE_BYTES
    from musicgen_trainer.planner import lora_reparametrised
    summary = model_summary(model)
    planner = estimate_memory(summary["lm_parameters"], sum(p.numel() for p in lm.parameters() if p.requires_grad),
                              summary["text_encoder_parameters_frozen"] + summary["compression_parameters"],
                              summary["lm_dim"], summary["lm_layers"], batch, frames, summary["codebooks"],
                              summary["card"], precision, checkpointing, optimizer_bytes=STATE_BYTES[optimizer],
                              reparametrised=lora_reparametrised(lm, config.lora_targets) // layers if lora else 0)
    result = {"check": "step", "model": model_name, "precision": precision, "optimizer": optimizer,
              "checkpointing": checkpointing, "lora": lora, "planner_gib": planner.total_gib,
              "batch": batch, "seconds": seconds,
              "steps": steps, "s_per_step": elapsed / steps, "tokens_per_s": tokens / elapsed,
              "tflops": flops / elapsed / 1e12, "mfu": (flops / elapsed / 1e12 / peak) if peak else None,
              "losses": losses, "skipped": skipped, "lm_parameters": n_params}
    if cuda:
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del state, model
    return result


def make_dataset(folder: Path, channels: int, n: int = 4, seconds: float = 4.0) -> Path:
    """Captioned synthetic WAVs (44.1 kHz); stereo files have different left and right."""
    import numpy as np
    import soundfile as sf
    folder.mkdir(parents=True, exist_ok=True)
    sr = 44100
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        left = 0.3 * np.sin(2 * np.pi * 220 * 2 ** (i / 12) * t)
        audio = left if channels == 1 else np.stack([left, 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1)
        sf.write(folder / f"clip_{i}.wav", audio.astype(np.float32), sr, subtype="PCM_16")
        (folder / f"clip_{i}.txt").write_text(f"test tone number {i}")
    return folder


def _train(tmp: Path, name: str, model: str, channels: int, device: str, **overrides):
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig
    data = make_dataset(tmp / f"data_{channels}", channels)
    config = dict(data=str(data), model=model, out=str(tmp / name), cache_dir=str(tmp / "cache"), steps=3,
                  batch_size=2, segment_seconds=1.0, lr=1e-3, warmup_steps=1, sample_every=0, valid_every=1000,
                  valid_fraction=0.0, device=device, progress=False)
    config.update(overrides)
    return train(TrainConfig(**config))


def check_train(variant: str, device: str, tmp: Path) -> dict:
    """train() -> export -> load_model -> generate, for a tiny variant, on ``device``."""
    import torch

    from musicgen_trainer.generation import GenerationConfig, generate, generate_with_melody
    from musicgen_trainer.models import load_model
    channels = 2 if "stereo" in variant else 1
    t0 = time.perf_counter()
    export = _train(tmp, variant, variant, channels, device)
    model = load_model(str(export), device=device)
    wavs = generate(model, ["test tone"], GenerationConfig(duration=1.0, seed=0))
    result = {"check": "train", "model": variant, "seconds": time.perf_counter() - t0,
              "wav_shape": list(wavs[0].shape)}
    if "melody" in variant:
        melody = torch.sin(torch.arange(32000) / 32000 * 2 * torch.pi * 440)
        wavs = generate_with_melody(model, melody, 32000, ["test tone"], GenerationConfig(duration=1.0, seed=0))
        result["melody_wav_shape"] = list(wavs[0].shape)
    assert wavs[0].shape[0] == channels, f"expected {channels} channel(s), got {wavs[0].shape}"
    return result


def check_resume(device: str, tmp: Path, model: str = "tiny") -> dict:
    """4 steps in one run vs the same run stopped after step 2 and resumed: same losses, same weights."""
    import musicgen_trainer.finetune as finetune
    from musicgen_trainer.checkpoint_io import load_checkpoint
    from musicgen_trainer.run_folder import list_states, load_state

    def history(name):
        return load_state(list_states(tmp / name / "checkpoints")[-1])["history"]

    common = dict(steps=4, save_every=2, keep_last=3)
    whole = _train(tmp, "whole", model, 1, device, **common)
    real_step = finetune.train_step

    def stop_after_two(state, micro):  # a "killed" run: the state of step 2 is on disk
        if state.step == 2:
            raise KeyboardInterrupt
        return real_step(state, micro)
    finetune.train_step = stop_after_two
    try:
        _train(tmp, "split", model, 1, device, **common)
    except KeyboardInterrupt:
        pass
    finally:
        finetune.train_step = real_step
    split = _train(tmp, "split", model, 1, device, **common, resume="auto")
    losses = [(a["loss"], b["loss"]) for a, b in zip(history("whole"), history("split"))]
    a = load_checkpoint(whole / "state_dict.bin", "export")["best_state"]
    b = load_checkpoint(split / "state_dict.bin", "export")["best_state"]
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    loss_diff = max(abs(x - y) for x, y in losses)
    # CUDA may pick other kernels in a fresh start: equal up to float noise, not bit for bit.
    assert len(losses) == 4 and loss_diff < 1e-3 and diff < 1e-3, \
        f"resumed run differs: losses {losses}, max weight difference {diff:.3g}"
    return {"check": "resume", "model": model, "max_loss_diff": loss_diff, "max_weight_diff": diff}


def check_generate(model_name: str, device: str, seconds: float) -> dict:
    import torch

    from musicgen_trainer.generation import GenerationConfig, generate
    from musicgen_trainer.models import load_model
    model = load_model(model_name, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    wavs = generate(model, ["a calm piano piece"], GenerationConfig(duration=seconds, seed=0))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {"check": "generate", "model": model_name, "seconds_of_audio": seconds, "wall_s": elapsed,
            "realtime_factor": elapsed / seconds, "frames_per_s": seconds * model.frame_rate / elapsed,
            "wav_shape": list(wavs[0].shape)}


def bandwidth_gbs(device) -> float | None:
    import torch
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BANDWIDTH_GBS.items() if k in name), None)


def check_decode(model_name: str, batch: int, seconds: float, device: str, smoke: bool) -> dict:
    """Our fast decoder (compiled and eager) vs audiocraft's loop on the same model, same seed."""
    import torch

    from audiocraft.utils.autocast import TorchAutocast
    from musicgen_trainer.fast_generate import fast_decoding
    from musicgen_trainer.models import load_model
    model = load_model(model_name, device=device)
    dtype = torch.float32 if smoke else torch.bfloat16
    model.lm.to(dtype)
    model.autocast = TorchAutocast(enabled=False)  # the weights' own dtype, for both loops
    frames = max(1, round(seconds * model.frame_rate))
    model.set_generation_params(duration=(frames + 0.5) / model.frame_rate, top_k=250, cfg_coef=3.0)
    attributes, _ = model._prepare_tokens_and_attributes(["a calm piano piece"] * batch, None)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run(which: str):
        torch.manual_seed(0)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            if which == "audiocraft":
                out = model._generate_tokens(attributes, None)
            else:
                with fast_decoding(model, compile=which == "compiled") as state:
                    assert state["fast"], state["reason"]
                    out = model._generate_tokens(attributes, None)
        sync()
        return time.perf_counter() - t0, out

    kinds = ("audiocraft", "eager") if smoke else ("audiocraft", "eager", "compiled")
    warm = {k: run(k)[0] for k in kinds}  # the compiled step is captured here (once per shape)
    times = {k: [] for k in kinds}
    outs = {}
    for r in range(1 if smoke else 2):
        for k in (kinds if r % 2 == 0 else kinds[::-1]):
            t, outs[k] = run(k)
            times[k].append(t)
    best = {k: min(v) for k, v in times.items()}
    weight_bytes = sum(p.numel() * p.element_size() for p in model.lm.parameters())
    bw = bandwidth_gbs(device)
    fastest = min(best[k] for k in kinds if k != "audiocraft")
    return {"check": "decode", "model": model_name, "batch": batch, "seconds_of_audio": seconds, "frames": frames,
            "dtype": str(dtype).replace("torch.", ""), "warmup_s": warm,
            **{f"{k}_steps_per_s": frames / best[k] for k in kinds},
            "ratio": best["audiocraft"] / fastest,
            "same_codes": {k: float((outs[k] == outs["audiocraft"]).float().mean()) for k in kinds if k != "audiocraft"},
            "lm_weight_gb": weight_bytes / 1e9,
            "bound_steps_per_s": (bw * 1e9 / weight_bytes) if bw else None}


def _fmt(r: dict) -> str:
    if "error" in r:
        return f"| {r['check']} | {r.get('model', '')} {r.get('precision', '')} | FAILED: {r['error']} |"
    if r["check"] == "step":
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a"
        mem = f"{r['peak_cuda_gib']:.1f} GiB" if "peak_cuda_gib" in r else "n/a"
        mode = r["optimizer"] + (" +ckpt" if r["checkpointing"] else "") + (f" LoRA r{r['lora']}" if r["lora"] else "")
        return (f"| step | {r['model']} {r['precision']} {mode} b{r['batch']}x{r['seconds']:g}s | "
                f"{r['s_per_step']:.2f} s/step, {r['tokens_per_s']:.0f} tokens/s, {r['tflops']:.1f} TFLOP/s, "
                f"MFU {mfu}, peak {mem} (--show estimate {r['planner_gib']:.1f} GiB), skipped {r['skipped']} |")
    if r["check"] == "generate":
        return (f"| generate | {r['model']} {r['seconds_of_audio']:g} s | {r['wall_s']:.1f} s "
                f"({r['realtime_factor']:.2f}x real time, {r['frames_per_s']:.1f} frames/s) |")
    if r["check"] == "decode":
        steps = ", ".join(f"{k} {r[k + '_steps_per_s']:.1f}" for k in ("audiocraft", "eager", "compiled")
                          if k + "_steps_per_s" in r)
        bound = f", bound {r['bound_steps_per_s']:.0f} steps/s" if r.get("bound_steps_per_s") else ""
        return (f"| decode | {r['model']} {r['dtype']} b{r['batch']} {r['seconds_of_audio']:g} s | steps/s: {steps}; "
                f"ratio {r['ratio']:.2f}x{bound}; same codes {r['same_codes']} |")
    rest = {k: v for k, v in r.items() if k not in ("check", "model")}
    return f"| {r['check']} | {r.get('model', '')} | {json.dumps(rest)} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script runs")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--only", default="step,train,resume,generate,decode", help="comma-separated checks to run")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    import torch
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device (use --smoke to check the script on the CPU)", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    start = time.perf_counter()
    if device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    plan = []
    if "step" in only:
        precisions = ("fp32",) if args.smoke else ("bf16", "fp16")
        for model, batch, seconds, steps in (SMOKE_STEP_PLAN if args.smoke else STEP_PLAN):
            for precision in precisions:
                plan.append(("step", lambda m=model, b=batch, s=seconds, n=steps, p=precision:
                             check_step(m, b, s, n, p, device), {"model": model, "precision": precision}))
        precision = "fp32" if args.smoke else "bf16"
        for model, batch, seconds, steps, opt, ckpt, rank in (SMOKE_MODE_PLAN if args.smoke else MODE_PLAN):
            plan.append(("step", lambda m=model, b=batch, s=seconds, n=steps, o=opt, c=ckpt, r=rank:
                         check_step(m, b, s, n, precision, device, o, c, r),
                         {"model": model, "precision": precision, "optimizer": opt, "lora": rank}))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "train" in only:
            for variant in ("tiny-melody", "tiny-stereo"):
                plan.append(("train", lambda v=variant: check_train(v, device, tmp), {"model": variant}))
        if "resume" in only:
            plan.append(("resume", lambda: check_resume(device, tmp), {"model": "tiny"}))
        if "generate" in only:
            name, seconds = ("tiny", 1.0) if args.smoke else ("random:small", 5.0)
            plan.append(("generate", lambda: check_generate(name, device, seconds), {"model": name}))
        if "decode" in only:
            for d_model, d_batch, d_seconds in (SMOKE_DECODE_PLAN if args.smoke else DECODE_PLAN):
                plan.append(("decode", lambda m=d_model, b=d_batch, s=d_seconds: check_decode(m, b, s, device, args.smoke),
                             {"model": d_model, "batch": d_batch}))
        for check, run, about in plan:
            t0 = time.perf_counter()
            try:
                result = run()
            except Exception as exc:  # one failed check must not cost the others' figures
                traceback.print_exc()
                result = {"check": check, **about, "error": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
            result["wall_s_total"] = time.perf_counter() - t0
            results.append(result)
            print(_fmt(result), flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"\n{len(results)} checks, {sum('error' in r for r in results)} failed, "
          f"{time.perf_counter() - start:.0f} s in all")
    target = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if target:
        Path(target).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
