"""Full training states on disk: written atomically, read without running code, found again
for --resume. Which states belong to a run (and so may be pruned) is the run folder's record
(``run_folder.py``), not a file-name pattern."""
from __future__ import annotations

import random
import re
import typing as tp
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_torch_save
from .safe_load import load_checkpoint

STATE_FORMAT = "musicgen_trainer.train_state"
STATE_VERSION = 2  # 2: RNG states as plain lists (loads weights-only); 1 pickled numpy arrays
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def state_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_states(folder: Path) -> list[Path]:
    """Saved states in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def save_state(folder: Path, step: int, state: dict) -> Path:
    """Write the state for ``step`` (atomically: a crash leaves the previous file or none)."""
    path = state_path(folder, step)
    atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, **state}, path)
    return path


def load_state(path: Path) -> dict:
    """A training state written by train.py; ``CheckpointError``/``ValueError`` (one line) otherwise.
    Loaded weights-only: a state that holds other Python objects is refused, never run."""
    state = load_checkpoint(path, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training state written by train.py")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} has training-state version {state.get('version')}; "
                         f"this version of train.py reads version {STATE_VERSION}")
    return state


def resolve_resume(resume: tp.Optional[str], own_states: tp.Sequence[Path]) -> tp.Optional[Path]:
    """``auto`` → the newest of the run's own states (None if there is none); a path → that
    file, or the newest ``step_*.pt`` in that folder."""
    if not resume:
        return None
    if resume == "auto":
        return own_states[-1] if own_states else None
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
    """Every RNG's state as tensors and plain numbers/lists, so the state loads weights-only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
