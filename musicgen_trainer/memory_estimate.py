"""The memory estimate: peak GPU memory of one training step, by component, from arithmetic.

What lives through the whole step: fp32 master weights of the trainable LM parameters (frozen
LM parameters in the compute dtype under bf16/fp16 on CUDA), the frozen T5/EnCodec/separator
weights, the optimiser states and the EMA's fp32 shadow (``--ema``). On top of them, what one
micro-batch adds: activations and logits during the forward, traded for gradients during the
backward (``zero_grad(set_to_none=True)`` frees the gradients after each update, and backward
frees each layer's activations as it makes that layer's gradients). So the peak holds
max(gradients, activations + logits), or their sum with ``--grad-accum`` > 1, when the
gradients of the earlier micro-batches wait through the later ones' forward.

The per-token constants are measured (``bench/bench_memory.py``: peak RSS growth of real
training steps on CPU, within 15 % of this estimate for tiny and musicgen-small shapes, full,
LoRA and 8-bit; a test checks tiny). Models whose fuser prepends conditions to the input (the
melody models: ``chroma_len`` positions, 235 for 30 s, and the caption's T5 tokens) run the
transformer over those positions too and keep their frozen stem separator on the GPU.
``--show`` (dry_run.py) and ``--gpu-memory`` (planner.py) use it; docs/training.md's GPU tables
are ``gpu_tables()``'s output (a test keeps them equal).
"""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

ALLOCATOR_OVERHEAD = 0.10  # the caching allocator's fragmentation and workspace, on top of the tensors
# Values kept for backward per layer, position and model width: measured 20.1 on CPU in fp32
# (random:small, 10 s: activations + logits 960 MiB at the end of the forward). By layer: both
# norms' inputs and outputs, q/k/v and the attention output (fused attention keeps no T x T
# matrix), the cross-attention's query and output, and the feed-forward's 4 x width twice.
ACTIVATIONS_PER_TOKEN = 20
# With activation checkpointing each layer keeps only its input; one layer at a time recomputes
# its full set during the backward.
CHECKPOINTED_PER_TOKEN = 1
# Bytes per logit element at the forward's peak, besides the compute dtype's own copy: the
# reverted (pattern-undone) copy and the fp32 log-softmax the loss keeps (measured on the tiny
# model, whose memory is mostly logits: 12 bytes per element in fp32 = 4 + 4 + 4).
LOGIT_EXTRA_BYTES = 8


@dataclass
class MemoryEstimate:
    """Estimated peak memory of one training step on one GPU, in bytes per component.

    ``peak_bytes`` does not sum them all: gradients and activations take turns (module doc)."""
    weights: float       # LM (trainable fp32, frozen in the compute dtype) + frozen T5, EnCodec, separator
    gradients: float     # fp32, trainable parameters only
    optimizer: float     # AdamW's two fp32 moments per trainable parameter (about 2 bytes when 8-bit)
    ema: float           # the EMA's fp32 shadow (--ema)
    activations: float   # what backward keeps per layer and position (one layer's input with checkpointing),
    #                      + the compute-dtype copies autocast makes of fp32 trainable weights
    logits: float        # the logits, their reverted copy and the fp32 log-softmax of the loss
    accumulating: bool = False  # --grad-accum > 1: gradients and activations coexist

    @property
    def transient(self) -> float:
        """What one micro-batch adds at the peak: gradients and activations + logits, in turn or together."""
        if self.accumulating:
            return self.gradients + self.activations + self.logits
        return max(self.gradients, self.activations + self.logits)

    @property
    def growth_bytes(self) -> float:
        """The peak minus what exists before the first step (the weights), without the allocator's
        overhead: what ``bench/bench_memory.py`` compares with measured RSS growth."""
        return self.optimizer + self.ema + self.transient

    @property
    def total_gib(self) -> float:
        return (self.weights + self.growth_bytes) * (1 + ALLOCATOR_OVERHEAD) / 2**30

    def breakdown(self) -> str:
        """One line: each component in GiB, and how they add up."""
        names = {"weights": "weights", "gradients": "gradients", "optimizer": "optimiser states", "ema": "EMA",
                 "activations": "activations", "logits": "logits"}
        parts = [f"{label} {getattr(self, key) / 2**30:.2f}" for key, label in names.items()
                 if key != "ema" or self.ema]
        how = ("gradients held while the next micro-batches run" if self.accumulating
               else "the peak holds the larger of gradients and activations + logits")
        return ", ".join(parts) + f" GiB ({how}), +{ALLOCATOR_OVERHEAD:.0%} allocator"


def estimate_memory(lm_params: int, trainable: int, frozen_other: int, lm_dim: int, layers: int,
                    batch: int, frames: int, codebooks: int, card: int, precision: str,
                    checkpointing: bool, ema: bool = False, prefix: int = 0,
                    frozen_lm_bytes: tp.Optional[int] = None, optimizer_bytes: float = 8.0,
                    grad_accum: int = 1, reparametrised: int = 0) -> MemoryEstimate:
    """Peak GPU memory of one training step, by component. ``prefix``: condition positions the
    fuser prepends to the ``frames`` audio positions (the transformer runs over both; the logits
    are the audio positions' only). ``frozen_lm_bytes``: bytes per frozen LM parameter (default:
    the compute dtype's, as ``step.keep_frozen_in_compute_dtype`` stores them on CUDA).
    ``optimizer_bytes``: optimiser state per trainable parameter (``optimizers.STATE_BYTES``: 8
    for AdamW's two fp32 moments, ~2 for the 8-bit ones). ``grad_accum``: micro-batches per update."""
    act_bytes = 4 if precision == "fp32" else 2
    frozen_lm_bytes = act_bytes if frozen_lm_bytes is None else frozen_lm_bytes
    weights = trainable * 4 + (lm_params - trainable) * frozen_lm_bytes + frozen_other * 4
    per_token = CHECKPOINTED_PER_TOKEN if checkpointing else ACTIVATIONS_PER_TOKEN
    acts = batch * (frames + prefix) * lm_dim * act_bytes * (per_token * layers + (
        ACTIVATIONS_PER_TOKEN if checkpointing else 0))
    # Under bf16/fp16 autocast each fp32 trainable weight is cast once per forward and the copy is
    # kept for the backward (its layer's input gradient needs it). Not measured yet (CPU runs fp32).
    cast_copies = trainable * act_bytes if precision != "fp32" else 0
    acts += reparametrised * act_bytes * (1 if checkpointing else layers)  # independent of batch and length
    return MemoryEstimate(weights=weights, gradients=trainable * 4, optimizer=trainable * optimizer_bytes,
                          ema=trainable * 4 if ema else 0, activations=acts + cast_copies,
                          logits=batch * codebooks * frames * card * (act_bytes + LOGIT_EXTRA_BYTES),
                          accumulating=grad_accum > 1)


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
