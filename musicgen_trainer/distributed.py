"""Processes and sharding: the accelerator, what launches are accepted, FSDP, full state dicts.

Three ways to run, and nothing else:

- one process (``python train.py``);
- data parallel (DDP): ``torchrun``/``accelerate launch`` with several processes; every process
  holds the whole LM and gradients are averaged;
- sharded (FSDP, ``--sharding fsdp``): each process holds 1/N of the LM's weights, gradients
  and AdamW state, so models that do not fit one GPU (medium, large) train on several.

Our options are the only source of truth. The accelerator is built with ``mixed_precision="no"``
whatever a user's ``accelerate config`` says (step.py's autocast, from ``--precision``, is the
only one: accelerate's would wrap the forward in a second autocast, fp16 without a scaler), and
sharding is ``--sharding``. A launch configured for anything else (DeepSpeed, Megatron-LM, TPU,
or accelerate's own FSDP settings without ``--sharding fsdp``) stops at start-up with one line.

FSDP here is torch's FSDP2 (``fully_shard``), applied by us rather than by
``accelerator.prepare_model``: accelerate switches to FSDP only on accelerator devices (on CPU it
stays DDP), so its path could not be tested without GPUs, while ``fully_shard`` runs the same on
CPU (gloo) and GPUs (NCCL). FSDP2 also keeps the LM's parameter names and module (parameters
become DTensors), so the optimiser, EMA and freezing code are the same as without sharding, and
``torch.distributed.checkpoint``'s state-dict helpers gather and scatter full state dicts. FSDP1
(``FullyShardedDataParallel``) was not tried: FSDP2 did everything needed on CPU/gloo with torch
2.10, and FSDP1 wraps modules in flat parameters with their own state-dict and optimiser APIs.
"""
from __future__ import annotations

import datetime
import os
import types
import typing as tp

import torch

# Collectives wait this long before failing. Ranks do wait on each other for minutes: the main
# process writes a full training state (tens of GB for medium/large), generates samples, and
# the first run encodes the dataset (sharded, but one slow file or disk can hold a rank back).
# NCCL's default (10 min) kills such runs; a genuinely hung run now takes this long to fail.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=3)

SUPPORTED = "one process, data parallel (torchrun/accelerate launch) or --sharding fsdp"

# accelerate's environment switches (set by `accelerate launch` from a config file or flags)
# that select a distributed type we do not run.
_REFUSED_ENV = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
                "ACCELERATE_USE_SAGEMAKER": "SageMaker distributed", "ACCELERATE_USE_PARALLELISM_CONFIG":
                "accelerate's parallelism config (tensor/context parallel)"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def check_launch(sharding: str) -> None:
    """Refuse an unsupported launch from the environment alone, before anything is loaded.

    Raises:
        ValueError: one line naming what was asked for and what is supported.
    """
    for name, what in _REFUSED_ENV.items():
        if _env_flag(name):
            raise ValueError(f"this launch asks for {what} ({name}), which train.py does not run: "
                             f"supported are {SUPPORTED}")
    if _env_flag("ACCELERATE_USE_FSDP") and sharding != "fsdp":
        raise ValueError("this launch is configured for accelerate's FSDP (ACCELERATE_USE_FSDP): add "
                         "--sharding fsdp (train.py shards the LM itself; accelerate's fsdp_* settings are "
                         "not used), or launch without FSDP for data parallel")


def make_accelerator(config):
    """The accelerator for ``config``: explicit precision "no" and a long collective timeout;
    refused (one-line ``ValueError``) for an unsupported distributed type."""
    check_launch(config.sharding)
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs
    acc = Accelerator(cpu=config.device == "cpu", mixed_precision="no",
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])
    allowed = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP)
    if acc.distributed_type not in allowed:
        raise ValueError(f"accelerate set up {acc.distributed_type.value}, which train.py does not run: "
                         f"supported are {SUPPORTED}")
    return acc


def is_sharded(lm) -> bool:
    """True once :func:`shard_lm` has wrapped ``lm``."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(lm, FSDPModule)


def shard_lm(lm, device: torch.device) -> None:
    """FSDP2 full sharding of an audiocraft ``LMModel``, in place (names and module unchanged).

    One FSDP unit per transformer layer (its weights are gathered just before its forward and
    freed after it), then the root unit for the rest: embeddings, output heads, norms and the
    condition provider's trainable projection (the frozen T5 is not a submodule, so each process
    keeps its own copy). Gradients are reduce-scattered and averaged over processes, like DDP's.
    Call before building the optimiser: the optimiser must hold the sharded parameters.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from .melody import melody_conditioner
    from .objective import CONDITIONED_FORWARD, forward_with_condition_tensors
    # The mesh on the accelerator's device type (fully_shard would pick CUDA whenever it exists,
    # also for a --device cpu run on a GPU machine).
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in lm.transformer.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(lm, mesh=mesh)
    if melody_conditioner(lm) is not None:
        # Condition tensors made and used inside one gathered call (objective.CONDITIONED_FORWARD).
        setattr(lm, CONDITIONED_FORWARD, types.MethodType(forward_with_condition_tensors, lm))
        register_fsdp_forward_method(lm, CONDITIONED_FORWARD)


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a (replicated) DTensor, e.g. the global gradient norm."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_tensors(tensors: tp.Mapping[str, torch.Tensor], keep: bool) -> dict:
    """Gather sharded tensors one at a time onto the CPU (every process must call it); the
    result is kept where ``keep`` (the main process), so no process holds two full copies."""
    out = {}
    for name, t in tensors.items():
        full = local_value(t).detach().cpu()
        if keep:
            out[name] = full
    return out


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(lm, keep: bool) -> dict:
    """The LM's full state dict on the CPU of the main process (``{}`` elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    state = get_model_state_dict(lm, options=_options(cpu_offload=True))
    return state if keep else {}


def full_optimizer_state(lm, optimizer, keep: bool) -> dict:
    """The optimiser's full state, keyed by parameter names, on the main process; collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    state = get_optimizer_state_dict(lm, optimizer, options=_options(cpu_offload=True))
    return state if keep else {}


def load_full_state(lm, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Shard full state dicts (as written by the two functions above) back into ``lm`` and
    ``optimizer``; every process passes the full dicts (read from the same file)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    set_model_state_dict(lm, model_state, options=_options())
    set_optimizer_state_dict(lm, optimizer, optimizer_state, options=_options())


def shard_like(full: tp.Mapping[str, torch.Tensor], lm) -> dict:
    """Full tensors (e.g. a saved EMA) cut into this process's shards of ``lm``'s parameters."""
    from torch.distributed.tensor import distribute_tensor
    params = dict(lm.named_parameters())
    out = {}
    for name, t in full.items():
        p = params[name]
        out[name] = distribute_tensor(t.to(p.device, torch.float32), p.device_mesh, p.placements)
    return out


def encode_clips(cache, clips: tp.Sequence, acc, progress: bool) -> tuple[list, list, list]:
    """``cache.codes_for(clips)`` with the encoding shared by all processes.

    Clip i is encoded by process ``i % N`` (cache entries are written atomically, so processes
    never see half a file); after a barrier every process reads every entry. Files that failed
    are gathered from the process that tried them, so all processes keep the same clips and
    report the same failures, once each, with that process's reason.

    Returns:
        (codes, kept_clips, skipped) as ``CodeCache.codes_for``: int16 arrays ``[K, T]``.
    Raises:
        ValueError: the processes ended up with different clips (a file changed meanwhile).
    """
    world, rank = acc.num_processes, acc.process_index
    if world == 1:
        return cache.codes_for(clips, progress=progress)
    from accelerate.utils import gather_object
    share = list(clips[rank::world])
    new = sum(not cache.is_cached(c) for c in share)
    _, _, failed = cache.codes_for(share, progress=progress)
    if new:
        # One line per process that encoded something: shows the work was shared.
        print(f"process {rank} of {world}: encoded {new - len(failed)} new clip(s), "
              f"{len(failed)} failed", flush=True)
    reasons = dict(gather_object([(str(c.path), why) for c, why in failed]))  # also the barrier
    codes, kept, late = cache.codes_for([c for c in clips if str(c.path) not in reasons], progress=False)
    reasons.update((str(c.path), why) for c, why in late)
    counts = gather_object([len(kept)])
    if len(set(counts)) != 1:
        raise ValueError(f"the processes read different numbers of usable clips ({counts}): did the "
                         f"dataset change during encoding? Run again")
    skipped = [(c, reasons[str(c.path)]) for c in clips if str(c.path) in reasons]
    return codes, kept, skipped
