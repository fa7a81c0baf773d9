"""Checks before a run, printed by ``train.py --show`` and at the start of a real run: will the
training states fit on the disk, and does the dataset have captions.

A training state (``checkpoints/step_*.pt``, see ``finetune._training_state_dict``) holds the LM's
trainable weights (fp32 master weights; frozen parameters, which never change, only under
``--sharding fsdp``), AdamW's two fp32 moments per trainable parameter, the EMA's fp32 shadow when ``--ema`` is on, and a little
metadata (options, RNG states, the last 1000 steps' metrics). Full fine-tunes: musicgen-small
5.0 GB (6.7 GB with EMA), medium 22 GB (29), large 39 GB (52). ``--keep-last`` of them stay on
disk, and one more is being written (to a temporary file) before the oldest is deleted.
"""
from __future__ import annotations

import os
import shutil
import typing as tp
from pathlib import Path

ADAM_MOMENTS_BYTES = 8      # exp_avg + exp_avg_sq, fp32, per trainable parameter
EMA_BYTES = 4               # fp32 shadow per trainable parameter
METADATA_BYTES = 1 << 18    # options, RNG states, metrics history, the zip container's headers


def training_state_bytes(lm, ema: bool, frozen_bytes: tp.Optional[int] = None,
                         optimizer_bytes: float = ADAM_MOMENTS_BYTES, sharded: bool = False) -> int:
    """Bytes of one training state of ``lm`` on disk, from its real contents.

    Args:
        lm: the LM with ``--freeze`` applied (frozen parameters have ``requires_grad`` False).
        ema: whether the state carries an EMA of the trainable parameters.
        frozen_bytes: bytes per frozen parameter in the run (2 when they are kept in bf16/fp16
            on CUDA); default: as they are stored in ``lm`` now.
        optimizer_bytes: optimiser state per trainable parameter (``optimizers.STATE_BYTES``).
        sharded: ``--sharding fsdp``, whose states also hold the frozen parameters.
    """
    trainable = total = 0
    for param in lm.parameters():
        if param.requires_grad:
            trainable += param.numel()
            total += param.numel() * 4  # fp32 master weights
        elif sharded:
            total += param.numel() * (frozen_bytes or param.element_size())
    param_ids = {id(p) for p in lm.parameters()}
    total += sum(b.numel() * b.element_size() for b in lm.buffers() if id(b) not in param_ids)
    total += trainable * (optimizer_bytes + (EMA_BYTES if ema else 0))
    return int(total) + METADATA_BYTES


def disk_free_bytes(path: tp.Union[str, os.PathLike]) -> int:
    """Free bytes on the filesystem that holds ``path`` (or would: its nearest existing folder)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_space_warning(out: tp.Union[str, os.PathLike], keep_last: int, state_bytes: int,
                       existing: int = 0, export_bytes: int = 0) -> tp.Optional[str]:
    """A one-line warning when ``keep_last + 1`` training states (``keep_last`` kept, one more
    written before the oldest goes) and the exports (``export_bytes``: see ``exports_bytes``) do not
    fit the free space of ``out``'s filesystem; else None. ``existing``: states of this run already
    on disk (a resume), which the free space excludes."""
    need = (keep_last + 1) * state_bytes + export_bytes
    free = disk_free_bytes(out)
    if need - min(existing, keep_last) * state_bytes <= free:
        return None
    exports = f" and {_size(export_bytes)} of exports" if export_bytes else ""
    return (f"warning: the training states{exports} will not fit on the disk of {out}: each state is "
            f"{_size(state_bytes)} and {keep_last + 1} exist at once (--keep-last {keep_last}, plus "
            f"the one being written): {_size(need)} in all, but only {_size(free)} is free. "
            f"Lower --keep-last, free space, or choose an --out on a larger disk")


def exports_bytes(model, export_dtype: str, keep_best: bool) -> int:
    """Disk of the exports a run writes: export/ (the LM in ``export_dtype``, the codec in fp32),
    and with ``--keep-best`` export-best/ plus the new best written beside it before the swap."""
    lm_bytes = 4 if export_dtype == "fp32" else 2
    one = sum(p.numel() for p in model.lm.parameters()) * lm_bytes + \
        sum(p.numel() for p in model.compression_model.parameters()) * 4
    return one * (3 if keep_best else 1)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def disk_usage_line(keep_last: int, state_bytes: int) -> str:
    """``--show``'s line about the training states' disk use."""
    return (f"{_size(state_bytes)} each; up to {keep_last + 1} on disk at once "
            f"(--keep-last {keep_last} + the one being written) = {_size((keep_last + 1) * state_bytes)}")


def captions_warning(data: tp.Union[str, os.PathLike]) -> str:
    """The warning for a dataset with no captions at all: where they were looked for, and how
    ``dataset_tools prepare`` makes them."""
    data = Path(data)
    where = data.parent if data.is_file() else data
    prepared = where.with_name(where.name + "-prepared")
    return (f"warning: no captions found in {data}: training unconditioned (the model learns the sound, not to "
            f"follow prompts). Captions are a .json (with a 'description') or .txt file next to each audio "
            f"file, as in a folder made by `python -m dataset_tools prepare` (manifest.jsonl + WAVs with "
            f".json/.txt captions). Make one with: python -m dataset_tools prepare {where} {prepared} "
            f"and train with --data {prepared}")
