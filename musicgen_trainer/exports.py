"""Find exported fine-tunes and read what they were trained on, without loading them.

An export folder (what ``train.py`` writes, audiocraft's layout) holds ``state_dict.bin``,
``compression_state_dict.bin`` and ``export_info.json``: the training data's ``genres``,
``caption_examples``, base model, steps and window, in plain JSON. Listing exports (the web
app does it at start-up and on Rescan) reads only that JSON: no weights file is opened, so a
booby-trapped download in checkpoints/ is inert until someone loads it, and loading is
weights-only (``safe_load.py``). An export without the JSON (audiocraft's own, or an older
one of ours) is listed with defaults.
"""
from __future__ import annotations

import json
import os
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_path
from .loading import COMPRESSION_FILE, EXPORT_INFO_FILE, LM_FILE

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


INFO_FORMAT = "musicgen_trainer.export_info"


def write_export_info(folder: tp.Union[str, os.PathLike], xp_cfg: dict) -> Path:
    """Write ``export_info.json`` from the export's ``xp.cfg`` (called by ``export_model``)."""
    extra = xp_cfg.get("musicgen_trainer") or {}
    info = {"format": INFO_FORMAT, "version": 1,
            "genres": [str(g) for g in extra.get("genres") or []],
            "caption_examples": [str(c) for c in extra.get("caption_examples") or []],
            "base_model": str(extra.get("base_model") or ""),
            "trained_steps": int(extra.get("trained_steps") or 0),
            "max_duration": float((xp_cfg.get("dataset") or {}).get("segment_duration") or 30.0)}
    path = Path(folder) / EXPORT_INFO_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def export_info(folder: tp.Union[str, os.PathLike]) -> ExportInfo:
    """The training facts an export records in ``export_info.json`` (defaults when it has none,
    or when the file is not what we write). Reads JSON only, never the weights."""
    folder = Path(folder)
    try:
        with open(folder / EXPORT_INFO_FILE, encoding="utf-8") as f:
            data = json.loads(f.read(1 << 20))  # ours are a few KB; a huge one is not ours
        if not isinstance(data, dict) or data.get("format") != INFO_FORMAT:
            raise ValueError("not an export_info.json")
        return ExportInfo(path=str(folder),
                          genres=[str(g) for g in data.get("genres") or []][:64],
                          caption_examples=[str(c) for c in data.get("caption_examples") or []][:16],
                          base_model=str(data.get("base_model") or ""),
                          trained_steps=int(data.get("trained_steps") or 0),
                          max_duration=float(data.get("max_duration") or 30.0))
    except (OSError, ValueError, TypeError):
        return ExportInfo(path=str(folder))
