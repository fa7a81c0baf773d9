"""`train.py --show`: what a run would do, without encoding or training anything.

The memory figure is an estimate from arithmetic, not a measurement (see docs/training.md
for measured figures): fp32 master weights + gradients + AdamW moments for the trainable
LM parameters, the frozen modules' weights, transformer activations for one micro-batch
(none kept per layer but one when activation checkpointing is on), and the logits.
"""
from __future__ import annotations

import math
import typing as tp

from .data import check_stereo_data, find_clips, split_clips
from .train_config import TrainConfig


def clip_seconds(path) -> float:
    """Duration from the file header (no decoding); 0 when the header cannot tell."""
    import soundfile as sf
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:
        return 0.0


def estimate_memory_gib(lm_params: int, trainable: int, frozen_other: int, lm_dim: int, layers: int,
                        batch: int, frames: int, codebooks: int, card: int, precision: str,
                        checkpointing: bool) -> float:
    """Rough peak GPU memory of one training step, in GiB."""
    act_bytes = 4 if precision == "fp32" else 2
    weights = lm_params * 4 + frozen_other * 4
    optimiser = trainable * (4 + 8)                     # gradients + AdamW's two moments
    # Per layer and token: ~34 x dim values saved for backward (self- and cross-attention with
    # SDPA, feed-forward x4); with checkpointing only each layer's input is kept.
    per_layer = (34 if not checkpointing else 1) * lm_dim * act_bytes
    acts = batch * frames * (per_layer * layers + (34 * lm_dim * act_bytes if checkpointing else 0))
    logits = batch * codebooks * frames * card * (act_bytes + 4 + 4)  # logits, fp32 copy, its grad
    return (weights + optimiser + acts + logits) * 1.1 / 2**30  # +10 % allocator overhead


def describe(config: TrainConfig) -> dict:
    from .models import load_model, model_summary
    from .finetune import total_steps
    from .step import apply_freeze, resolve_precision

    clips = find_clips(config.data, config.valid_fraction, config.seed)
    model = load_model(config.model, device="cpu")
    summary = model_summary(model)
    frozen = apply_freeze(model.lm, config.freeze)
    trainable = sum(p.numel() for p in model.lm.parameters() if p.requires_grad)
    train, valid = split_clips(clips)
    seconds = [clip_seconds(c.path) for c in train]
    import torch
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(config.precision, device)
    frames = int(round(min(config.segment_seconds, model.max_duration) * model.frame_rate))
    memory = estimate_memory_gib(
        summary["lm_parameters"], trainable,
        summary["text_encoder_parameters_frozen"] + summary["compression_parameters"],
        summary["lm_dim"], summary["lm_layers"], config.batch_size, frames, summary["codebooks"],
        summary["card"], precision, config.activation_checkpointing)
    steps = total_steps(config, len(train), 1)
    per_step = config.batch_size * config.grad_accum
    return {
        "model": summary, "trainable_parameters": trainable, "frozen_by_option": frozen,
        "train_clips": len(train), "valid_clips": len(valid),
        "train_hours": sum(seconds) / 3600, "unknown_durations": sum(s == 0 for s in seconds),
        "genres": sorted({c.genre for c in clips if c.genre}),
        "captioned": sum(bool(c.caption) for c in clips),
        "steps_per_epoch": math.ceil(len(train) / per_step), "total_steps": steps,
        "clips_per_step": per_step, "segment_frames": frames, "precision": precision,
        "device": str(device), "estimated_peak_memory_gib": memory,
        # a stereo model: files that would reach it mono (training refuses them unless allowed)
        "mono_files": check_stereo_data(clips, summary["audio_channels"], allow_mono=True),
    }


def format_description(d: dict) -> str:
    m = d["model"]
    rows: list[tuple[str, tp.Any]] = [
        ("model", f"{m['name']} ({m['lm_parameters'] / 1e6:.1f} M LM parameters, "
                  f"{m['text_encoder_parameters_frozen'] / 1e6:.1f} M frozen text encoder"
                  + (", stereo" if m.get("stereo") else "") + ")"),
        ("trainable parameters", f"{d['trainable_parameters'] / 1e6:.2f} M"
                                 + (f" ({d['frozen_by_option'] / 1e6:.2f} M frozen by --freeze)"
                                    if d["frozen_by_option"] else "")),
        ("dataset", f"{d['train_clips']} training clips ({d['train_hours']:.2f} h"
                    + (f", {d['unknown_durations']} of unknown length" if d["unknown_durations"] else "")
                    + f"), {d['valid_clips']} validation clips, {d['captioned']} captioned"),
        ("genres", ", ".join(d["genres"]) or "(none)"),
        ("steps", f"{d['steps_per_epoch']} per epoch at {d['clips_per_step']} clips/step, "
                  f"{d['total_steps']} in total"),
        ("window", f"{d['segment_frames']} frames x {m['codebooks']} codebooks"),
        ("precision", f"{d['precision']} on {d['device']}"),
        ("estimated peak memory", f"{d['estimated_peak_memory_gib']:.1f} GiB per GPU (estimate)"),
    ]
    if d.get("mono_files"):
        rows.insert(3, ("mono files", f"{d['mono_files']} (a stereo model refuses them unless "
                                      f"--allow-mono-for-stereo)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
