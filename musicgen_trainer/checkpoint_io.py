"""Read and write checkpoint files: reading never runs code from them, writing is atomic.

A ``.bin``/``.pt`` file written by ``torch.save`` is a pickle: loaded as a full pickle (torch's
old default) it can import and call anything, so a booby-trapped download in checkpoints/
would run code the moment it is opened. Every checkpoint this project reads (exports, training
states, a released model's two files) is read by, or checked with, ``load_checkpoint`` first: torch's weights-only unpickler, which rebuilds tensors, numbers, strings,
lists, tuples and dicts and refuses every other Python object. Our own files need nothing
more (training states store RNG states as plain lists, see ``run_folder.rng_state``), so
there is no allow-list and no "trust this file" switch. audiocraft's released checkpoints
hold the same kinds of values (weights and a YAML string) and pass too.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import typing as tp
import warnings
from pathlib import Path

from dataset_tools.atomic import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely: refused (foreign objects) or damaged.
    The message is one line meant for the user."""


def load_checkpoint(path: tp.Union[str, os.PathLike], what: str = "checkpoint", mmap: bool = False):
    """``torch.load`` restricted to tensors and plain data, on the CPU.

    Args:
        path: the file.
        what: what the file is for the user ("training state", "model file"), used in errors.
        mmap: map the file instead of reading it (tensors stay on disk until touched; the
            cheap way to check a multi-GB file). Files in torch's old non-zip format cannot be
            mapped and are read normally.
    Raises:
        CheckpointError: the file holds Python objects other than tensors and plain data
            (it is not loaded: nothing in it runs), or it is truncated or not a PyTorch file.
    """
    import torch
    path = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if not (mmap and "mmap" in str(exc)):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except pickle.UnpicklingError as exc:
        foreign = _foreign_object(str(exc))
        if foreign:
            raise CheckpointError(
                f"refused to load {what} {path}: it holds Python objects other than tensors and plain "
                f"data ({foreign}), and loading those could run code from the file") from None
        raise CheckpointError(f"cannot read {what} {path}: not a PyTorch file, or damaged") from None
    except Exception as exc:  # truncated zips and damaged pickles fail anywhere (RuntimeError, EOFError...)
        first = (str(exc).splitlines() or [""])[0][:120]
        raise CheckpointError(f"cannot read {what} {path}: truncated, damaged or not a PyTorch file "
                              f"({type(exc).__name__}: {first})") from None


def check_checkpoint(path: tp.Union[str, os.PathLike], what: str = "checkpoint") -> None:
    """Refuse ``path`` (``CheckpointError``) unless it loads weights-only; cheap (memory-mapped).

    Used before handing a file to a library (audiocraft) that calls ``torch.load`` itself:
    whatever that library's default, the file has been checked first.
    """
    load_checkpoint(path, what, mmap=True)


def _foreign_object(message: str) -> str:
    """The object a weights-only load refused (``posix.system``), or '' when the message is
    about something else (a damaged or non-PyTorch pickle: "Unsupported operand 120"). torch
    2.10 words it "Unsupported global: GLOBAL mod.name ..." or "unsupported GLOBAL mod.name whose
    module mod is blocked"."""
    if "Weights only load failed" not in message:
        return ""
    for marker in ("GLOBAL ", "Unsupported class "):
        if marker in message:
            return message.split(marker, 1)[1].split()[0].rstrip(".,:;")
    return ""


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` to a temporary file, then renamed: a crash leaves the old file or the new one."""
    import torch
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            # torch reports a failed write as "[enforce fail at inline_container.cc] unexpected
            # pos ..."; a full disk must read as one (OSError ENOSPC), not as a bug.
            raise _as_disk_error(exc, tmp.parent) from None


LOW_SPACE_BYTES = 16 << 20


def _as_disk_error(exc: BaseException, folder: Path) -> BaseException:
    try:
        full = shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        full = False
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) if full else exc
