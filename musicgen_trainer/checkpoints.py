"""Full training states on disk: written atomically, the last k kept, found again for --resume."""
from __future__ import annotations

import random
import re
import typing as tp
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_torch_save

STATE_FORMAT = "musicgen_trainer.train_state"
STATE_VERSION = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def state_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_states(folder: Path) -> list[Path]:
    """Saved states in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def save_state(folder: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write the state for ``step`` and delete all but the newest ``keep_last``."""
    path = state_path(folder, step)
    atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, **state}, path)
    for old in list_states(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read training state {path}: {exc.__class__.__name__}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training state written by train.py")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} has training-state version {state.get('version')}; "
                         f"this version of train.py reads version {STATE_VERSION}")
    return state


def resolve_resume(resume: tp.Optional[str], folder: Path) -> tp.Optional[Path]:
    """``auto`` → newest state in ``folder`` (None if there is none); a path → that file."""
    if not resume:
        return None
    if resume == "auto":
        states = list_states(folder)
        return states[-1] if states else None
    path = Path(resume)
    if path.is_dir():
        states = list_states(path)
        if not states:
            raise ValueError(f"no training state (step_*.pt) in {path}")
        return states[-1]
    if not path.is_file():
        raise ValueError(f"resume checkpoint not found: {path}")
    return path


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
