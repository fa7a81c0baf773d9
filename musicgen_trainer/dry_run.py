"""`train.py --show`: what a run would do, without encoding or training anything.

Sizes, hours, steps, the memory estimate by component (memory_estimate.py: arithmetic, not a
measurement; docs/training.md compares it with measurements), the ``--gpu-memory`` plan
(planner.py), and the disk size of one training state (``preflight.training_state_bytes``).
"""
from __future__ import annotations

import math
import typing as tp
from dataclasses import asdict

from .code_cache import check_stereo_data
from .data import find_clips, split_clips
from .optimizers import STATE_BYTES
# re-exported: --show's callers and tests know the estimate from here
from .memory_estimate import (CUDA_CONTEXT_GIB, ENCODEC_32KHZ, RELEASED_LM, T5_BASE_ENCODER,  # noqa: F401
                              MemoryEstimate, condition_prefix, estimate_memory, estimate_memory_gib, gpu_tables,
                              released_estimate)
from .preflight import (captions_warning, disk_space_warning, disk_usage_line, exports_bytes,
                        training_state_bytes)
from .train_config import TrainConfig, total_steps


def clip_seconds(path) -> float:
    """Duration from the file header (no decoding); 0 when the header cannot tell."""
    import soundfile as sf
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:
        return 0.0


def describe(config: TrainConfig) -> dict:
    from .models import load_model, model_summary
    from .step import apply_freeze, resolve_precision

    clips = find_clips(config.data, config.valid_fraction, config.seed)
    model = load_model(config.model, device="cpu")
    import torch
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(config.precision, device)
    from .planner import apply_plan
    config, plan_line = apply_plan(config, model, precision, [c.caption for c in clips])
    reparametrised = 0
    if config.lora:  # adapters as training adds them: only they (and what --lora-train-* asks) train
        from .lora import apply_lora_from_config
        from .planner import lora_reparametrised
        reparametrised = lora_reparametrised(model.lm, config.lora_targets)
        apply_lora_from_config(model.lm, config)
    summary = model_summary(model)
    frozen = apply_freeze(model.lm, config.freeze)
    trainable = sum(p.numel() for p in model.lm.parameters() if p.requires_grad)
    train, valid = split_clips(clips)
    seconds = [clip_seconds(c.path) for c in train]
    frames = int(round(min(config.segment_seconds, model.max_duration) * model.frame_rate))
    prefix, separator = condition_prefix(model.lm, [c.caption for c in train])
    # On CUDA with bf16/fp16 (and not sharded), frozen LM parameters are stored in that dtype (2 bytes).
    frozen_bytes = 2 if device.type == "cuda" and precision != "fp32" and config.sharding != "fsdp" else 4
    estimate = estimate_memory(
        summary["lm_parameters"], trainable,
        summary["text_encoder_parameters_frozen"] + summary["compression_parameters"] + separator,
        summary["lm_dim"], summary["lm_layers"], config.batch_size, frames, summary["codebooks"],
        summary["card"], precision, config.activation_checkpointing, ema=config.ema, prefix=prefix,
        frozen_lm_bytes=frozen_bytes, optimizer_bytes=STATE_BYTES[config.optimizer],
        grad_accum=config.grad_accum, reparametrised=reparametrised // summary["lm_layers"])
    memory = estimate.total_gib
    state_bytes = training_state_bytes(model.lm, config.ema, frozen_bytes=frozen_bytes,
                                       optimizer_bytes=STATE_BYTES[config.optimizer],
                                       sharded=config.sharding == "fsdp")
    export_bytes = exports_bytes(model, config.export_dtype, config.keep_best and config.eval_every > 0)
    warnings = [w for w in (disk_space_warning(config.out, config.keep_last, state_bytes, export_bytes=export_bytes),
                            None if any(c.caption for c in clips) else captions_warning(config.data)) if w]
    steps = total_steps(config, len(train), 1)
    per_step = config.batch_size * config.grad_accum
    return {
        "model": summary, "trainable_parameters": trainable, "frozen_by_option": frozen, "lora": config.lora,
        "plan": plan_line, "planned_config": config.to_dict(),
        "train_clips": len(train), "valid_clips": len(valid),
        "train_hours": sum(seconds) / 3600, "unknown_durations": sum(s == 0 for s in seconds),
        "genres": sorted({c.genre for c in clips if c.genre}),
        "captioned": sum(bool(c.caption) for c in clips),
        "steps_per_epoch": math.ceil(len(train) / per_step), "total_steps": steps,
        "clips_per_step": per_step, "segment_frames": frames, "precision": precision,
        "condition_prefix": prefix, "separator_parameters": separator,
        "device": str(device), "estimated_peak_memory_gib": memory, "memory_breakdown": {k: v for k, v in asdict(estimate).items() if k != "accumulating"},
        "memory_breakdown_line": estimate.breakdown(), "ema": config.ema,
        "training_state_bytes": state_bytes, "keep_last": config.keep_last, "warnings": warnings,
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
                                 + (f" (LoRA rank {d['lora']} adapters; the base is frozen)" if d.get("lora") else "")
                                 + (f" ({d['frozen_by_option'] / 1e6:.2f} M frozen by --freeze)"
                                    if d["frozen_by_option"] else "")),
        ("dataset", f"{d['train_clips']} training clips ({d['train_hours']:.2f} h"
                    + (f", {d['unknown_durations']} of unknown length" if d["unknown_durations"] else "")
                    + f"), {d['valid_clips']} validation clips, {d['captioned']} captioned"),
        ("genres", ", ".join(d["genres"]) or "(none)"),
        ("steps", f"{d['steps_per_epoch']} per epoch at {d['clips_per_step']} clips/step, "
                  f"{d['total_steps']} in total"),
        ("window", f"{d['segment_frames']} frames x {m['codebooks']} codebooks"
                   + (f", after {d['condition_prefix']} prepended condition positions"
                      if d.get("condition_prefix") else "")),
        ("precision", f"{d['precision']} on {d['device']}"),
        ("estimated peak memory", f"{d['estimated_peak_memory_gib']:.1f} GiB per GPU (estimate"
                                  + (", EMA included" if d["ema"] else "") + ")"),
        ("  of which", d["memory_breakdown_line"]),
        ("training states", disk_usage_line(d["keep_last"], d["training_state_bytes"])),
    ]
    if d.get("plan"):
        rows.insert(0, ("memory plan", d["plan"]))
    if d.get("mono_files"):
        rows.insert(3, ("mono files", f"{d['mono_files']} (a stereo model refuses them unless "
                                      f"--allow-mono-for-stereo)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{k:<{width}}  {v}" for k, v in rows] + list(d["warnings"]))
