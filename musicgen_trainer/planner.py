"""``--gpu-memory GB``: choose memory settings that fit a GPU, before the run starts.

From the user's settings, in this order, the first plan whose estimate (``memory_estimate.estimate_memory``)
fits ``GB`` minus the CUDA context:

1. the user's settings, with the largest micro-batch that divides the effective batch
   (``--batch-size`` x ``--grad-accum``, which stays the same: accumulation makes up the rest);
2. + activation checkpointing;
3. + 8-bit optimiser states (``--optimizer adamw8bit``);
4. + LoRA rank 16 (when the user did not ask for LoRA), then + 8-bit states.

Each step is taken only when the previous ones do not fit even at micro-batch 1. Nothing that
fits: a one-line ``ValueError`` with the smallest plan's figure. The figures are the estimate's
(arithmetic; see docs/training.md for how they compare with measurement).
"""
from __future__ import annotations

import dataclasses
import typing as tp

from .memory_estimate import CUDA_CONTEXT_GIB, estimate_memory
from .optimizers import STATE_BYTES
from .train_config import TrainConfig

PLANNER_LORA_RANK = 16  # the rank the planner turns on (a common default; peers report r=16 memory figures)


@dataclasses.dataclass
class ModelFacts:
    """What the estimate needs about the model (``from_model``)."""
    lm_parameters: int
    frozen_other: int              # T5, EnCodec, separator: frozen, outside the LM
    lm_dim: int
    layers: int
    codebooks: int
    card: int
    frames: int                    # audio positions per window
    prefix: int                    # condition positions prepended (melody models)
    lora_parameters: tp.Callable[[int, tp.Sequence[str]], int]  # adapter parameters for (rank, targets)
    frozen_by_freeze: int = 0      # LM parameters --freeze keeps frozen
    lora_reparametrised: tp.Callable[[tp.Sequence[str]], int] = lambda targets: 0  # raw weights adapted (in_proj)


def _named(name: str, targets: tp.Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's matching: a name suffix


def lora_parameter_count(lm, rank: int, targets: tp.Sequence[str]) -> int:
    """Parameters LoRA rank ``rank`` adds for ``targets`` (lora.split_targets): ``rank x (in + out)``
    for each ``nn.Linear`` module named by a target and each attention ``in_proj_weight``
    (``[3 x dim, dim]``) when ``in_proj`` is one."""
    import torch
    from .lora import split_targets
    modules, params = split_targets(targets)
    total = 0
    for name, module in lm.named_modules():
        if isinstance(module, torch.nn.Linear) and _named(name, modules):
            total += rank * (module.in_features + module.out_features)
    for name, param in lm.named_parameters():
        if param.dim() == 2 and _named(name.replace(".base_layer.", "."), params):
            total += rank * (param.shape[0] + param.shape[1])
    return total


def lora_reparametrised(lm, targets: tp.Sequence[str]) -> int:
    """Elements of the raw weights ``targets`` adapt (``in_proj_weight``): peft computes
    ``W + scaling B A`` for them at each call and backward keeps it (memory_estimate)."""
    from .lora import split_targets
    params = split_targets(targets)[1]
    return sum(p.numel() for name, p in lm.named_parameters()
               if p.dim() == 2 and _named(name.replace(".base_layer.", "."), params))


@dataclasses.dataclass
class Plan:
    batch_size: int
    grad_accum: int
    activation_checkpointing: bool
    optimizer: str
    lora: tp.Optional[int]
    estimate_gib: float
    reasons: tp.List[str]

    def changes(self, config: TrainConfig) -> dict:
        """The options this plan sets that differ from ``config``."""
        fields = ("batch_size", "grad_accum", "activation_checkpointing", "optimizer", "lora")
        return {f: getattr(self, f) for f in fields if getattr(self, f) != getattr(config, f)}


def estimate_for(facts: ModelFacts, config: TrainConfig, precision: str, batch: int, checkpointing: bool,
                 optimizer: str, lora: tp.Optional[int], grad_accum: int = 1) -> float:
    """The estimate (GiB) of ``config`` with these memory settings."""
    reparametrised = 0
    if lora:
        trainable = facts.lora_parameters(lora, config.lora_targets)
        lm_params = facts.lm_parameters + trainable
        reparametrised = facts.lora_reparametrised(config.lora_targets) // facts.layers
    else:
        lm_params = facts.lm_parameters
        trainable = facts.lm_parameters - facts.frozen_by_freeze
    return estimate_memory(lm_params, trainable, facts.frozen_other, facts.lm_dim, facts.layers, batch,
                           facts.frames, facts.codebooks, facts.card, precision, checkpointing, ema=config.ema,
                           prefix=facts.prefix, optimizer_bytes=STATE_BYTES[optimizer],
                           grad_accum=grad_accum, reparametrised=reparametrised).total_gib


def plan(config: TrainConfig, facts: ModelFacts, precision: str, gpu_gb: float) -> Plan:
    """The first plan (module doc) that fits ``gpu_gb``; ``ValueError`` (one line) when none does."""
    budget = gpu_gb - CUDA_CONTEXT_GIB
    effective = config.batch_size * config.grad_accum
    micro_batches = [b for b in range(effective, 0, -1) if effective % b == 0]
    steps = [(config.activation_checkpointing, config.optimizer, config.lora, [])]
    if not config.activation_checkpointing:
        steps.append((True, config.optimizer, config.lora, ["activation checkpointing"]))
    ckpt = True
    if config.optimizer == "adamw" and config.sharding != "fsdp":
        steps.append((ckpt, "adamw8bit", config.lora, ["activation checkpointing", "8-bit optimiser states"]))
    if not config.lora and config.sharding != "fsdp":
        steps.append((ckpt, config.optimizer, PLANNER_LORA_RANK, ["activation checkpointing", f"LoRA rank {PLANNER_LORA_RANK}"]))
        if config.optimizer == "adamw":
            steps.append((ckpt, "adamw8bit", PLANNER_LORA_RANK, ["activation checkpointing", f"LoRA rank {PLANNER_LORA_RANK}",
                                                                 "8-bit optimiser states"]))
    smallest = None
    for checkpointing, optimizer, lora, added in steps:
        for batch in micro_batches:
            gib = estimate_for(facts, config, precision, batch, checkpointing, optimizer, lora, effective // batch)
            if gib <= budget:
                reasons = [f"estimate {gib:.1f} GiB of {gpu_gb:g} GB ({CUDA_CONTEXT_GIB:g} GiB kept for the CUDA context)"]
                if batch != config.batch_size:
                    reasons.append(f"micro-batch {batch} x {effective // batch} accumulated = your batch of {effective}")
                if added:
                    reasons.append("needs " + ", ".join(added) + " (without, batch 1 does not fit)")
                return Plan(batch, effective // batch, checkpointing, optimizer, lora, gib, reasons)
        smallest = gib  # batch 1 of the most frugal plan tried so far
    raise ValueError(f"nothing fits {gpu_gb:g} GB: even micro-batch 1 with activation checkpointing, LoRA and 8-bit "
                     f"states needs about {smallest:.1f} GiB (estimate); try shorter --segment-seconds, a smaller "
                     f"model, or --sharding fsdp over several GPUs")


def facts_from_model(model, config: TrainConfig, captions: tp.Sequence[str] = ()) -> ModelFacts:
    """``ModelFacts`` of a loaded MusicGen for ``config``'s window (and its --freeze)."""
    from .memory_estimate import condition_prefix
    from .models import model_summary
    summary = model_summary(model)
    prefix, separator = condition_prefix(model.lm, list(captions) or ["music"])
    frozen = sum(p.numel() for name, p in model.lm.named_parameters()
                 if any(name == f or name.startswith(f.rstrip(".") + ".") for f in config.freeze))
    return ModelFacts(
        lm_parameters=summary["lm_parameters"],
        frozen_other=summary["text_encoder_parameters_frozen"] + summary["compression_parameters"] + separator,
        lm_dim=summary["lm_dim"], layers=summary["lm_layers"], codebooks=summary["codebooks"], card=summary["card"],
        frames=int(round(min(config.segment_seconds, model.max_duration) * model.frame_rate)), prefix=prefix,
        lora_parameters=lambda rank, targets: lora_parameter_count(model.lm, rank, targets),
        frozen_by_freeze=frozen, lora_reparametrised=lambda targets: lora_reparametrised(model.lm, targets))


def apply_plan(config: TrainConfig, model, precision: str, captions: tp.Sequence[str] = ()) -> tp.Tuple[TrainConfig, tp.Optional[str]]:
    """(config with the ``--gpu-memory`` plan applied, one line saying what was chosen and why);
    ``config`` unchanged and None without ``--gpu-memory``."""
    if not config.gpu_memory:
        return config, None
    chosen = plan(config, facts_from_model(model, config, captions), precision, config.gpu_memory)
    changes = chosen.changes(config)
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in changes.items()]
    what = ", ".join(flags) or "your settings as they are"
    line = f"--gpu-memory {config.gpu_memory:g}: {what} ({'; '.join(chosen.reasons)})"
    return dataclasses.replace(config, **changes), line


# --- docs/training.md's planner table ------------------------------------------------------

TABLE_GPUS_GB = (8, 12, 16, 24, 40, 80)
TABLE_EFFECTIVE_BATCH = 8


def released_lora_shapes(dim: int) -> tp.Dict[str, tp.Tuple[int, int]]:
    """What LoRA can adapt in one layer of a released LM of width ``dim`` -> its ``(out, in)``."""
    return {"self_attn.in_proj": (3 * dim, dim), "cross_attention.in_proj": (3 * dim, dim),
            "self_attn.out_proj": (dim, dim), "cross_attention.out_proj": (dim, dim),
            "linear1": (4 * dim, dim), "linear2": (dim, 4 * dim)}


def released_facts(size: str) -> ModelFacts:
    """facebook/musicgen-{size} at 30 s, from the released architecture (no weights)."""
    from .memory_estimate import ENCODEC_32KHZ, RELEASED_LM, T5_BASE_ENCODER
    from .lora import PARAM_TARGET
    params, dim, layers = RELEASED_LM[size]
    shapes = released_lora_shapes(dim)

    def adapted(targets, raw_only=False):  # [(out, in)] that ``targets`` adapt in one layer
        return [shape for name, shape in shapes.items()
                if _named(name, targets) and (not raw_only or name.endswith(PARAM_TARGET))]

    return ModelFacts(lm_parameters=params, frozen_other=T5_BASE_ENCODER + ENCODEC_32KHZ, lm_dim=dim, layers=layers,
                      codebooks=4, card=2048, frames=1500, prefix=0,
                      lora_parameters=lambda rank, targets: layers * rank * sum(o + i for o, i in adapted(targets)),
                      lora_reparametrised=lambda targets: layers * sum(o * i for o, i in adapted(targets, True)))


def planner_table() -> str:
    """What ``--gpu-memory`` picks for each released size and GPU (30 s clips, bf16, batch 8)."""
    from .memory_estimate import RELEASED_LM
    config = TrainConfig(data="x", batch_size=TABLE_EFFECTIVE_BATCH)
    lines = ["| GPU | " + " | ".join(RELEASED_LM) + " |", "| --- |" + " --- |" * len(RELEASED_LM)]
    for gb in TABLE_GPUS_GB:
        cells = []
        for size in RELEASED_LM:
            try:
                p = plan(config, released_facts(size), "bf16", gb)
            except ValueError:
                cells.append("does not fit")
                continue
            mode = ["full" if not p.lora else f"LoRA r{p.lora}"]
            mode += ["checkpointing"] * p.activation_checkpointing + ["8-bit states"] * (p.optimizer != "adamw")
            cells.append(f"{', '.join(mode)}; batch {p.batch_size} x {p.grad_accum} ({p.estimate_gib:.1f} GiB)")
        lines.append(f"| {gb} GB | " + " | ".join(cells) + " |")
    return "\n".join(lines)
