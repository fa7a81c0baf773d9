"""The optimisers ``--optimizer`` offers, and what their states cost.

- ``adamw``: torch's fused AdamW, fp32 moments (8 bytes per trainable parameter).
- ``adamw8bit``: bitsandbytes' AdamW8bit: both moments stored blockwise-quantised in 8 bits
  (2 bytes per parameter plus a float scale per 256-value block; tensors under 4096 values stay
  fp32), the update computed in fp32. For a full fine-tune of musicgen-small that is 0.8 GB of
  optimiser state instead of 3.4 GB.
- ``paged-adamw8bit``: the same, with the states in CUDA unified memory that bitsandbytes pages to
  CPU RAM when the GPU runs short (CUDA only).

Why bitsandbytes and not torchao's low-bit AdamW: bitsandbytes is what the ecosystem's trainers
use on CUDA, it offers paged states, its states are plain uint8/float tensors (training states
still load weights-only), and its CPU backend runs the same optimiser, so the tests exercise it
on CPU. torchao 0.18 keeps its states as tensor subclasses (weights-only loading would need them
allow-listed) and its compiled extensions want a newer torch than ours (measured: it warns and
falls back on torch 2.10).
"""
from __future__ import annotations

import logging
import typing as tp

import torch

OPTIMIZERS = ("adamw", "adamw8bit", "paged-adamw8bit")
# Bytes of optimiser state per trainable parameter (the planner's and the disk estimate's figure).
STATE_BYTES = {"adamw": 8.0, "adamw8bit": 2.0 + 2 * 4 / 256, "paged-adamw8bit": 2.0 + 2 * 4 / 256}


def check_optimizer(name: str, device: tp.Optional[torch.device] = None) -> None:
    """One-line ``ValueError`` when ``name`` cannot run here (unknown, library missing, paged off CUDA)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if name == "adamw":
        return
    # Its CPU backend logs a warning about an optional 4-bit kernel package we never use.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(f"--optimizer {name} needs bitsandbytes: pip install 'bitsandbytes>=0.45'") from None
    if name.startswith("paged") and device is not None and device.type != "cuda":
        raise ValueError(f"--optimizer {name} pages optimiser states between GPU and CPU: it needs a CUDA device "
                         f"(use --optimizer adamw8bit on {device.type})")


def build_optimizer(name: str, groups: list, lr: float, betas: tp.Tuple[float, float],
                    device: torch.device, fused: bool = True) -> torch.optim.Optimizer:
    """The optimiser ``name`` over parameter ``groups`` (each with its own weight decay).
    ``fused`` (adamw): one kernel for all parameters (CUDA, and CPU in current torch)."""
    check_optimizer(name, device)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    import bitsandbytes as bnb
    cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
    return cls(groups, lr=lr, betas=tuple(betas))
