"""One optimiser step, and the state it works on (called by the loop in ``finetune.py``).

``train_step`` takes the state and the micro-batches of one optimiser step and returns a dict
of metrics; mixed precision, gradient accumulation and data parallelism are handled there,
once. ``make_state`` builds the DDP wrapper (or shards the LM with FSDP, ``--sharding fsdp``), then
the optimiser, schedule, scaler and EMA. accelerate sets up the processes (a plain
``python train.py`` needs no configuration; ``accelerate launch``/``torchrun`` runs data
parallel), and the wrapped LM is what the loss calls, so gradients are synchronised
(distributed.py: which launches run, and FSDP).
"""
from __future__ import annotations

import contextlib
import logging
import math
import typing as tp
from dataclasses import dataclass, field

import torch

from .data import CodeBatch, validation_batches
from .melody import ATT_DROPOUT_AS_LOADED
from .objective import micro_batch_loss, token_counts
from .train_config import TrainConfig

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses: training stopped without exporting."""


@dataclass
class TrainState:
    model: tp.Any                      # audiocraft MusicGen; model.lm is trained
    forward: tp.Callable               # the LM's forward (DDP-wrapped when data parallel; the LM itself,
                                       # sharded in place, under FSDP)
    optimizer: torch.optim.Optimizer
    scheduler: tp.Any
    scaler: tp.Optional[torch.amp.GradScaler]
    autocast: tp.Callable[[], tp.ContextManager]
    accelerator: tp.Any
    config: TrainConfig
    ema: tp.Optional[dict] = None      # parameter name -> float32 shadow (this process's shard under FSDP)
    step: int = 0
    nonfinite_streak: int = 0
    skipped_steps: int = 0
    history: list = field(default_factory=list)

    @property
    def trainable(self) -> list:
        return [p for p in self.model.lm.parameters() if p.requires_grad]

    @property
    def sharded(self) -> bool:
        from .distributed import is_sharded
        return is_sharded(self.model.lm)


# --- setup --------------------------------------------------------------------------

def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        # Plain is_bf16_supported() is also True on T4/V100, which only emulate bf16 (slowly):
        # ask for the hardware. Those cards get fp16 with a gradient scaler.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


def make_autocast(precision: str, device: torch.device) -> tp.Callable[[], tp.ContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def apply_freeze(lm, prefixes: tp.Sequence[str]) -> int:
    """Freeze LM parameters whose names start with any prefix; returns how many were frozen."""
    def matches(name: str, prefix: str) -> bool:
        # Whole dotted components only: "transformer.layers.1" must not match layer 10.
        prefix = prefix.rstrip(".")
        return name == prefix or name.startswith(prefix + ".")

    frozen = 0
    names = [n for n, _ in lm.named_parameters()]
    for prefix in prefixes:
        if not any(matches(n, prefix) for n in names):
            raise ValueError(f"--freeze {prefix!r} matches no LM parameter (examples: emb, "
                             f"transformer.layers.0, linears, condition_provider)")
    for name, param in lm.named_parameters():
        if any(matches(name, p) for p in prefixes):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def lr_lambda(config: TrainConfig, total_steps: int) -> tp.Callable[[int], float]:
    """Linear warm-up, then cosine decay to ``lr_min_ratio``."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return config.lr_min_ratio + (1 - config.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def make_optimizer(lm, config: TrainConfig, fused: bool = True) -> torch.optim.Optimizer:
    """``config.optimizer`` (AdamW, or its 8-bit-state variants: optimizers.py); no weight decay
    on biases, norms and embeddings (1-D or embedding tables)."""
    from .optimizers import build_optimizer
    decay, no_decay = [], []
    for name, p in lm.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or name.startswith("emb") else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    device = next(lm.parameters()).device
    return build_optimizer(config.optimizer, groups, config.lr, config.betas, device, fused=fused)


def resolve_dropouts(config: TrainConfig, lm) -> tp.Tuple[float, float]:
    """(caption dropout, T5 word dropout) for the sampler: the options when given, else the rates
    the model was trained with (its config, as audiocraft built it: e.g. 0.3/0.3 for the text
    models' base config, 0.2/0.2 in the melody grid). Call before ``prepare_lm_for_training``,
    which switches audiocraft's own dropout modules off."""
    cond = config.cond_dropout if config.cond_dropout is not None else float(lm.cfg_dropout.p)
    word = config.word_dropout
    if word is None:
        word = next((float(c.word_dropout) for c in lm.condition_provider.conditioners.values()
                     if hasattr(c, "word_dropout")), 0.0)
    return cond, word


def prepare_lm_for_training(model, config: TrainConfig, precision: str = "fp32") -> None:
    """Train mode with audiocraft's own dropouts off: condition, word and (melody models)
    self_wav attribute dropout are drawn by our sampler, deterministically, so runs resume and
    parallelise exactly. Parameters frozen by ``config.freeze`` are kept in the compute dtype on
    CUDA (``keep_frozen_in_compute_dtype``)."""
    lm = model.lm
    # audiocraft loads released LMs in fp16 on GPUs: train fp32 master weights (autocast
    # supplies the bf16/fp16 compute), or AdamW's small updates round away.
    lm.float()
    if config.lora:  # adapters in place; the base is frozen (lora.py)
        from .lora import apply_lora_from_config
        apply_lora_from_config(lm, config)
    if config.freeze or config.lora:
        apply_freeze(lm, config.freeze)
        # On the CPU fp32 costs little and is safest; FSDP2 shards parameters of one dtype per unit.
        if next(lm.parameters()).device.type == "cuda" and config.sharding != "fsdp":
            keep_frozen_in_compute_dtype(lm, precision)
    lm.train()
    lm.cfg_dropout.p = 0.0
    if not hasattr(lm, ATT_DROPOUT_AS_LOADED):  # melody.melody_dropout_rate falls back to it
        setattr(lm, ATT_DROPOUT_AS_LOADED, {k: dict(v) for k, v in lm.att_dropout.p.items()})
    lm.att_dropout.p = {}  # the sampler draws it (melody.melody_dropout_rate reads the config's rate)
    for conditioner in lm.condition_provider.conditioners.values():
        if hasattr(conditioner, "word_dropout"):
            conditioner.word_dropout = 0.0
    if config.activation_checkpointing:
        lm.transformer.checkpointing = "torch"
    model.compression_model.eval()


FROZEN_BASE = "_musicgen_frozen_base"  # lm attribute: name -> the frozen weights as loaded (CPU)


def keep_frozen_in_compute_dtype(lm, precision: str) -> int:
    """Store the frozen LM parameters in the compute dtype (bf16/fp16) instead of fp32.

    They receive no updates, so fp32 master copies buy nothing and cost 2 bytes per parameter
    (a frozen half of musicgen-medium: 1.8 GB); autocast computes in that dtype anyway. The
    weights as loaded are kept on the CPU (``lm._musicgen_frozen_base``): exports write the
    base's frozen weights, not their bf16 rounding. Returns the number of parameters cast.
    """
    if precision not in ("bf16", "fp16"):
        return 0
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    base = lm.__dict__.setdefault(FROZEN_BASE, {})
    cast = 0
    for name, param in lm.named_parameters():
        if param.requires_grad or param.dtype == dtype:
            continue
        base.setdefault(name, param.detach().to("cpu", copy=True))
        param.data = param.data.to(dtype)
        cast += param.numel()
    return cast


def make_state(model, config: TrainConfig, accelerator, total_steps: int,
               precision: tp.Optional[str] = None) -> TrainState:
    """Optimiser, schedule, scaler, EMA and (when distributed) the DDP wrapper or FSDP sharding
    of ``model.lm``, which must already be on ``accelerator.device`` and prepared for training.

    The LM is wrapped or sharded first and the optimiser built after, on the parameters the
    wrapper trains (FSDP replaces them with shards)."""
    lm = model.lm
    precision = precision or resolve_precision(config.precision, accelerator.device)
    apply_freeze(lm, config.freeze)
    sharded = config.sharding == "fsdp" and accelerator.num_processes > 1
    if sharded:
        from .distributed import shard_lm
        shard_lm(lm, accelerator.device)
        forward = lm
    else:
        forward = accelerator.prepare_model(lm) if accelerator.num_processes > 1 else lm
    scaler = None
    if precision == "fp16" and sharded:
        # Each process sees only its gradient shard: the sharded scaler agrees on inf/NaN over
        # all processes (else one would step and another skip). It does not work with the fused
        # AdamW (shape mismatch of its found-inf tensor), hence the foreach one.
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
        scaler = ShardedGradScaler(accelerator.device.type)
    elif precision == "fp16":
        scaler = torch.amp.GradScaler(accelerator.device.type)
    optimizer = make_optimizer(lm, config, fused=not (sharded and scaler is not None))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total_steps))
    ema = {n: p.detach().float().clone() for n, p in lm.named_parameters() if p.requires_grad} \
        if config.ema else None
    return TrainState(model=model, forward=forward, optimizer=optimizer, scheduler=scheduler,
                      scaler=scaler, autocast=make_autocast(precision, accelerator.device),
                      accelerator=accelerator, config=config, ema=ema)


# --- one optimiser step ---------------------------------------------------------------

def train_step(state: TrainState, micro_batches: tp.Sequence[CodeBatch]) -> dict:
    """Forward/backward every micro-batch, then one optimiser update.

    The loss of each micro-batch is normalised by the valid-token counts of the whole
    global batch (all micro-batches of all processes), so the update equals the update of
    one big batch. Returns metrics: loss, ce_q1..ce_qK, grad_norm, lr, tokens, skipped.
    """
    acc, lm = state.accelerator, state.model.lm
    counts = sum(token_counts(lm, mb.frame_valid) for mb in micro_batches).to(acc.device)
    world = acc.num_processes
    if world > 1:
        counts = acc.reduce(counts, reduction="sum")
    loss_total = torch.zeros((), device=acc.device)
    per_codebook = torch.zeros_like(counts)
    for i, mb in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # FSDP reduce-scatters every micro-batch: skipping the sync would keep whole unsharded
        # gradients, the memory sharding exists to save; the sum is the same.
        sync = contextlib.nullcontext() if last or world == 1 or state.sharded else acc.no_sync(state.forward)
        with sync:
            with state.autocast():
                loss, shares = micro_batch_loss(lm, mb.codes, mb.frame_valid, mb.captions, counts,
                                                forward=state.forward, melody=mb.melody)
            # DDP and FSDP average gradients over processes; each process's share must count fully.
            scaled = loss * world
            (state.scaler.scale(scaled) if state.scaler else scaled).backward()
        loss_total += loss.detach()
        per_codebook += shares
    if world > 1:
        loss_total = acc.reduce(loss_total, reduction="sum")
        per_codebook = acc.reduce(per_codebook, reduction="sum")
    metrics = {"loss": loss_total.item(), "tokens": counts.sum().item(),
               "lr": state.optimizer.param_groups[0]["lr"], "skipped": 0}
    metrics.update({f"ce_q{k + 1}": v.item() for k, v in enumerate(per_codebook)})

    if not math.isfinite(metrics["loss"]):
        state.optimizer.zero_grad(set_to_none=True)
        state.nonfinite_streak += 1
        state.skipped_steps += 1
        metrics.update(skipped=1, grad_norm=float("nan"))
        if state.nonfinite_streak >= state.config.max_nonfinite:
            raise TrainingDiverged(
                f"{state.nonfinite_streak} consecutive non-finite losses at step {state.step}: stopping "
                f"without saving (try a lower --lr, --precision bf16 or fp32, or resume from an earlier state)")
        logger.warning("non-finite loss at step %d: update skipped", state.step)
    else:
        state.nonfinite_streak = 0
        if state.scaler:
            state.scaler.unscale_(state.optimizer)
        clip = state.config.grad_clip if state.config.grad_clip > 0 else float("inf")
        # Under FSDP the gradients are DTensor shards and this is the global norm (a replicated
        # DTensor), so every process clips by the same factor, as without sharding.
        grad_norm = torch.nn.utils.clip_grad_norm_(state.trainable, clip)
        if state.sharded:
            from .distributed import local_value
            grad_norm = local_value(grad_norm)
        metrics["grad_norm"] = grad_norm.item()
        if state.scaler:
            scale_before = state.scaler.get_scale()
            state.scaler.step(state.optimizer)
            state.scaler.update()
            if state.scaler.get_scale() < scale_before:  # inf/NaN gradients: the scaler skipped
                metrics["skipped"] = 1
                state.skipped_steps += 1
        elif math.isfinite(metrics["grad_norm"]):
            state.optimizer.step()
        else:
            metrics["skipped"] = 1
            state.skipped_steps += 1
        state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.step += 1
    if state.ema is not None and state.step % state.config.ema_every == 0 and not metrics["skipped"]:
        update_ema(state)
    return metrics


def update_ema(state: TrainState) -> None:
    decay = state.config.ema_decay
    with torch.no_grad():
        for name, p in state.model.lm.named_parameters():
            if name in state.ema:
                state.ema[name].mul_(decay).add_(p.detach().float(), alpha=1 - decay)


def export_weights(state: TrainState, keep: bool = True) -> dict:
    """The LM state dict to export: EMA weights when enabled, else the current ones.

    Under FSDP the full weights are gathered, so every process must call it; they are returned
    where ``keep`` (the main process) and ``{}`` elsewhere."""
    lm = state.model.lm
    if state.sharded:
        from .distributed import full_model_state, full_tensors
        weights = full_model_state(lm, keep)
        ema = full_tensors(state.ema, keep) if state.ema is not None else None
        if not keep:
            return {}
    else:
        weights = {k: v.detach().clone() for k, v in lm.state_dict().items()}
        ema = state.ema
    if ema is not None:
        for name, shadow in ema.items():
            weights[name] = shadow.to(weights[name].dtype)
    # Frozen weights kept in bf16/fp16 while training: export the base's own, in fp32 like the rest.
    for name, base in lm.__dict__.get(FROZEN_BASE, {}).items():
        weights[name] = base.clone()
    return weights


@torch.no_grad()
def validation_loss(state: TrainState, codes, captions, n_frames: int, melody=None) -> tp.Optional[float]:
    """Mean loss over the fixed validation batches (eval mode, real captions, no dropout; for
    melody models ``melody``, a ``melody.MelodyCrops``, gives the clips' chroma).

    It is the training objective itself (``micro_batch_loss``: padded frames enter the LM as
    the special token, exactly as in training), its per-codebook sums over all validation
    batches divided by their valid-position counts, then the mean over codebooks.
    """
    if not codes:
        return None
    acc, lm = state.accelerator, state.model.lm
    was_training = lm.training
    lm.eval()
    sums = torch.zeros(lm.n_q, device=acc.device)
    counts = torch.zeros(lm.n_q, device=acc.device)
    ones = torch.ones(lm.n_q, device=acc.device)  # normaliser 1: micro_batch_loss returns the sums
    batches = list(validation_batches(codes, captions, n_frames, state.config.batch_size, melody))
    # Under FSDP every forward is collective: each process runs the same number of them (a
    # process short of batches repeats the first one and does not count it).
    world = acc.num_processes
    n = math.ceil(len(batches) / world) * world if state.sharded else len(batches)
    try:
        for i in range(acc.process_index, n, world):
            batch = batches[i if i < len(batches) else 0].to(acc.device)
            with state.autocast():
                _, batch_sums = micro_batch_loss(lm, batch.codes, batch.frame_valid, batch.captions, ones,
                                                 melody=batch.melody)
            if i < len(batches):
                sums += batch_sums
                counts += token_counts(lm, batch.frame_valid).to(acc.device)
    finally:
        lm.train(was_training)
    if acc.num_processes > 1:
        sums, counts = acc.reduce(sums, reduction="sum"), acc.reduce(counts, reduction="sum")
    return (sums / counts.clamp_min(1)).mean().item()
