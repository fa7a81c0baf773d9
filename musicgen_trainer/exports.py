"""Find exported fine-tunes and read what they were trained on, without loading them.

An export folder (what ``train.py`` writes, audiocraft's layout) holds ``state_dict.bin``
whose ``xp.cfg['musicgen_trainer']`` records the training data's ``genres`` and
``caption_examples``. The file is opened memory-mapped, so reading that small config
costs milliseconds even for multi-GB weights; results are cached by file size and mtime.
"""
from __future__ import annotations

import os
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from .loading import COMPRESSION_FILE, LM_FILE

MAX_DEPTH = 4  # checkpoints/<run>/export is depth 2; leave room for nested layouts


@dataclass
class ExportInfo:
    """What an export folder says about its training (empty lists when it says nothing)."""
    path: str
    genres: tp.List[str] = field(default_factory=list)
    caption_examples: tp.List[str] = field(default_factory=list)
    base_model: str = ""
    trained_steps: int = 0
    max_duration: float = 30.0  # the model's window (seconds), from its config


def is_export(folder: tp.Union[str, os.PathLike]) -> bool:
    folder = Path(folder)
    return (folder / LM_FILE).is_file() and (folder / COMPRESSION_FILE).is_file()


def find_exports(root: tp.Union[str, os.PathLike] = "checkpoints") -> tp.List[Path]:
    """Every export folder under ``root`` (``root`` itself included), sorted by path; hidden folders skipped."""
    root = Path(root)
    found: tp.List[Path] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
        if is_export(here):
            found.append(here)
    return sorted(found)


_CACHE: tp.Dict[tp.Tuple[str, int, int], ExportInfo] = {}


def export_info(folder: tp.Union[str, os.PathLike]) -> ExportInfo:
    """The training facts stored in an export (an empty ``ExportInfo`` for exports without them)."""
    folder = Path(folder)
    path = folder / LM_FILE
    try:
        st = path.stat()
    except OSError:
        return ExportInfo(path=str(folder))
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = _read_info(folder, path)
    return _CACHE[key]


def _read_info(folder: Path, path: Path) -> ExportInfo:
    import torch
    try:
        pkg = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # old (non-zip) format cannot be memory-mapped, or a damaged file
        try:
            pkg = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            return ExportInfo(path=str(folder))
    cfg = pkg.get("xp.cfg") if isinstance(pkg, dict) else None
    extra = (cfg or {}).get("musicgen_trainer") or {}
    return ExportInfo(path=str(folder),
                      genres=[str(g) for g in extra.get("genres") or []],
                      caption_examples=[str(c) for c in extra.get("caption_examples") or []],
                      base_model=str(extra.get("base_model") or ""),
                      trained_steps=int(extra.get("trained_steps") or 0),
                      max_duration=float(((cfg or {}).get("dataset") or {}).get("segment_duration") or 30.0))
