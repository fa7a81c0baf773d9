"""`train.py --show`: what a run would do, without encoding or training anything.

The memory figure is an estimate from arithmetic, not a measurement (see docs/training.md
for measured figures): fp32 master weights + gradients + AdamW moments for the trainable
LM parameters (+ the EMA's fp32 shadow with ``--ema``), the frozen modules' weights (frozen LM
parameters in the compute dtype under bf16/fp16), transformer activations for one
micro-batch (none kept per layer but one when activation checkpointing is on), and the
logits. Models whose fuser prepends conditions to the input (the melody models: the chroma's
``chroma_len`` positions, 235 for 30 s, and the caption's T5 tokens) run the transformer over
those positions too, and keep their frozen stem separator (demucs) on the GPU. The disk figure is one training state's size (``preflight.training_state_bytes``).
docs/training.md's GPU tables are ``gpu_tables()``'s output (a test keeps them equal).
"""
from __future__ import annotations

import math
import typing as tp
from dataclasses import asdict, dataclass

from .data import find_clips, split_clips

from .code_cache import check_stereo_data
from .optimizers import STATE_BYTES
from .preflight import captions_warning, disk_space_warning, disk_usage_line, training_state_bytes
from .train_config import TrainConfig


def clip_seconds(path) -> float:
    """Duration from the file header (no decoding); 0 when the header cannot tell."""
    import soundfile as sf
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:
        return 0.0


ALLOCATOR_OVERHEAD = 0.10  # the caching allocator's fragmentation and workspace, on top of the tensors


@dataclass
class MemoryEstimate:
    """Estimated peak memory of one training step on one GPU, in bytes per component."""
    weights: float       # LM (trainable fp32, frozen in the compute dtype) + frozen T5, EnCodec, separator
    gradients: float     # fp32, trainable parameters only
    optimizer: float     # AdamW's two fp32 moments per trainable parameter
    ema: float           # the EMA's fp32 shadow (--ema)
    activations: float   # what backward keeps per layer and position (one layer's input with checkpointing)
    logits: float        # the logits, their fp32 copy for the loss, and its gradient

    @property
    def total_gib(self) -> float:
        return sum(vars(self).values()) * (1 + ALLOCATOR_OVERHEAD) / 2**30

    def breakdown(self) -> str:
        """One line: each component in GiB."""
        names = {"weights": "weights", "gradients": "gradients", "optimizer": "optimiser states", "ema": "EMA",
                 "activations": "activations", "logits": "logits"}
        parts = [f"{label} {getattr(self, key) / 2**30:.2f}" for key, label in names.items()
                 if key != "ema" or self.ema]
        return ", ".join(parts) + f" GiB, +{ALLOCATOR_OVERHEAD:.0%} allocator"


def estimate_memory(lm_params: int, trainable: int, frozen_other: int, lm_dim: int, layers: int,
                    batch: int, frames: int, codebooks: int, card: int, precision: str,
                    checkpointing: bool, ema: bool = False, prefix: int = 0,
                    frozen_lm_bytes: tp.Optional[int] = None, optimizer_bytes: float = 8.0) -> MemoryEstimate:
    """Peak GPU memory of one training step, by component. ``prefix``: condition positions the
    fuser prepends to the ``frames`` audio positions (the transformer runs over both; the logits
    are the audio positions' only). ``frozen_lm_bytes``: bytes per frozen LM parameter (default:
    the compute dtype's, as ``step.keep_frozen_in_compute_dtype`` stores them on CUDA).
    ``optimizer_bytes``: optimiser state per trainable parameter (``optimizers.STATE_BYTES``: 8
    for AdamW's two fp32 moments, ~2 for the 8-bit ones)."""
    act_bytes = 4 if precision == "fp32" else 2
    frozen_lm_bytes = act_bytes if frozen_lm_bytes is None else frozen_lm_bytes
    weights = trainable * 4 + (lm_params - trainable) * frozen_lm_bytes + frozen_other * 4
    # Per layer and token: ~34 x dim values saved for backward (self- and cross-attention with
    # SDPA, feed-forward x4); with checkpointing only each layer's input is kept.
    per_layer = (34 if not checkpointing else 1) * lm_dim * act_bytes
    acts = batch * (frames + prefix) * (per_layer * layers + (34 * lm_dim * act_bytes if checkpointing else 0))
    return MemoryEstimate(weights=weights, gradients=trainable * 4, optimizer=trainable * optimizer_bytes,
                          ema=trainable * 4 if ema else 0, activations=acts,
                          logits=batch * codebooks * frames * card * (act_bytes + 4 + 4))


def estimate_memory_gib(*args, **kwargs) -> float:
    """``estimate_memory(...).total_gib``: the rough peak GPU memory of one training step, in GiB."""
    return estimate_memory(*args, **kwargs).total_gib


# --- docs/training.md's tables ("What fits on your GPU") ------------------------------------

# The released models' sizes: LM parameters (with cross-attention, as in the checkpoints), width,
# layers; T5-base's encoder and EnCodec 32 kHz are frozen. A test rebuilds the LMs on the meta
# device and checks these counts.
RELEASED_LM = {"small": (420_371_456, 1024, 24), "medium": (1_838_737_920, 1536, 48),
               "large": (3_256_956_928, 2048, 48)}
T5_BASE_ENCODER = 109_628_544
ENCODEC_32KHZ = 56_884_674
TABLE_BATCHES = (1, 2, 4, 8, 16)
TABLE_GPUS_GB = (12, 16, 24, 40, 48, 80)
BATCH_LIMIT = 32  # the tables say 32+ beyond
CUDA_CONTEXT_GIB = 1.0  # what the CUDA context and libraries take before the first tensor


def released_estimate(size: str, batch: int, checkpointing: bool, seconds: float = 30.0) -> float:
    """estimate_memory_gib for a full fine-tune of facebook/musicgen-{size} (bf16 autocast, no EMA)."""
    params, dim, layers = RELEASED_LM[size]
    return estimate_memory_gib(params, params, T5_BASE_ENCODER + ENCODEC_32KHZ, dim, layers, batch,
                               int(seconds * 50), 4, 2048, "bf16", checkpointing)


def largest_batch(size: str, checkpointing: bool, gpu_gb: float, limit: int = BATCH_LIMIT) -> int:
    """The largest batch whose estimate fits a GPU of ``gpu_gb`` GB (0: not even batch 1)."""
    fits = [b for b in range(1, limit + 1) if released_estimate(size, b, checkpointing) <= gpu_gb - CUDA_CONTEXT_GIB]
    return max(fits, default=0)


def gpu_tables() -> str:
    """The two markdown tables of docs/training.md's "What fits on your GPU"."""
    lines = ["| model | checkpointing | " + " | ".join(f"batch {b}" if i == 0 else str(b)
                                                       for i, b in enumerate(TABLE_BATCHES)) + " |",
             "| --- | --- |" + " --- |" * len(TABLE_BATCHES)]
    for size, (params, _, _) in RELEASED_LM.items():
        label = f"{params / 1e6:.0f} M LM" if params < 1e9 else f"{params / 1e9:.1f} B"
        for ckpt in (False, True):
            cells = [f"{released_estimate(size, b, ckpt):.1f}" for b in TABLE_BATCHES]
            cells[0] += " GiB" if size == "small" and not ckpt else ""
            name = f"{size} ({label})" if not ckpt else size
            lines.append(f"| {name} | {'on' if ckpt else 'off'} | " + " | ".join(cells) + " |")
    lines += ["", "| GPU memory | largest batch that fits (full fine-tune, 30 s clips) |", "| --- | --- |"]
    for gb in TABLE_GPUS_GB:
        parts = []
        for size in RELEASED_LM:
            plain, ckpt = (largest_batch(size, c, gb) for c in (False, True))
            plain, ckpt = (f"{b}+" if b == BATCH_LIMIT else b for b in (plain, ckpt))
            if not ckpt:
                parts.append(f"{size}: does not fit")
            elif not plain:
                parts.append(f"{size}: batch {ckpt} with checkpointing only")
            else:
                parts.append(f"{size}: batch {plain} ({ckpt} with checkpointing)")
        lines.append(f"| {gb} GB | " + "; ".join(parts) + " |")
    return "\n".join(lines)


def condition_prefix(lm, captions: tp.Sequence[str]) -> tuple[int, int]:
    """(positions the fuser prepends to the LM input, parameters of frozen modules the prepended
    conditioners keep on the device) for one training micro-batch; (0, 0) for models that
    cross-attend to their conditions. Melody models: ``chroma_len`` chroma positions (the
    match-length chroma, 235 for 30 s) + the longest caption's T5 tokens (a batch is padded to
    its longest), and the demucs separator's weights."""
    positions = separator = 0
    for name in lm.fuser.fuse2cond.get("prepend", []):
        conditioner = lm.condition_provider.conditioners[name]
        if hasattr(conditioner, "chroma_len"):
            positions += int(conditioner.chroma_len)
        tokenizer = getattr(conditioner, "t5_tokenizer", None)
        if tokenizer is not None:
            positions += max([len(tokenizer(c or "").input_ids) for c in captions] or [1])
        demucs = conditioner.__dict__.get("demucs")
        if demucs is not None:
            separator += sum(t.numel() for t in list(demucs.parameters()) + list(demucs.buffers()))
    return positions, separator


def describe(config: TrainConfig) -> dict:
    from .models import load_model, model_summary
    from .finetune import total_steps
    from .step import apply_freeze, resolve_precision

    clips = find_clips(config.data, config.valid_fraction, config.seed)
    model = load_model(config.model, device="cpu")
    if config.lora:  # adapters as training adds them: only they (and what --lora-train-* asks) train
        from .lora import apply_lora_from_config
        apply_lora_from_config(model.lm, config)
    summary = model_summary(model)
    frozen = apply_freeze(model.lm, config.freeze)
    trainable = sum(p.numel() for p in model.lm.parameters() if p.requires_grad)
    train, valid = split_clips(clips)
    seconds = [clip_seconds(c.path) for c in train]
    import torch
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(config.precision, device)
    frames = int(round(min(config.segment_seconds, model.max_duration) * model.frame_rate))
    prefix, separator = condition_prefix(model.lm, [c.caption for c in train])
    # On CUDA with bf16/fp16 (and not sharded), frozen LM parameters are stored in that dtype (2 bytes).
    frozen_bytes = 2 if device.type == "cuda" and precision != "fp32" and config.sharding != "fsdp" else 4
    estimate = estimate_memory(
        summary["lm_parameters"], trainable,
        summary["text_encoder_parameters_frozen"] + summary["compression_parameters"] + separator,
        summary["lm_dim"], summary["lm_layers"], config.batch_size, frames, summary["codebooks"],
        summary["card"], precision, config.activation_checkpointing, ema=config.ema, prefix=prefix,
        frozen_lm_bytes=frozen_bytes, optimizer_bytes=STATE_BYTES[config.optimizer])
    memory = estimate.total_gib
    state_bytes = training_state_bytes(model.lm, config.ema, frozen_bytes=frozen_bytes,
                                       optimizer_bytes=STATE_BYTES[config.optimizer])
    warnings = [w for w in (disk_space_warning(config.out, config.keep_last, state_bytes),
                            None if any(c.caption for c in clips) else captions_warning(config.data)) if w]
    steps = total_steps(config, len(train), 1)
    per_step = config.batch_size * config.grad_accum
    return {
        "model": summary, "trainable_parameters": trainable, "frozen_by_option": frozen, "lora": config.lora,
        "train_clips": len(train), "valid_clips": len(valid),
        "train_hours": sum(seconds) / 3600, "unknown_durations": sum(s == 0 for s in seconds),
        "genres": sorted({c.genre for c in clips if c.genre}),
        "captioned": sum(bool(c.caption) for c in clips),
        "steps_per_epoch": math.ceil(len(train) / per_step), "total_steps": steps,
        "clips_per_step": per_step, "segment_frames": frames, "precision": precision,
        "condition_prefix": prefix, "separator_parameters": separator,
        "device": str(device), "estimated_peak_memory_gib": memory, "memory_breakdown": asdict(estimate),
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
    if d.get("mono_files"):
        rows.insert(3, ("mono files", f"{d['mono_files']} (a stereo model refuses them unless "
                                      f"--allow-mono-for-stereo)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{k:<{width}}  {v}" for k, v in rows] + list(d["warnings"]))
