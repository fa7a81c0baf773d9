"""Find exported fine-tunes and read what they were trained on, without loading them.

An export folder (what ``train.py`` writes, audiocraft's layout) holds ``state_dict.bin``,
``compression_state_dict.bin`` and ``export_info.json``: the training data's ``genres``,
``caption_examples``, base model, steps and window, in plain JSON. Listing exports (the web
app does it at start-up and on Rescan) reads only that JSON: no weights file is opened, so a
booby-trapped download in checkpoints/ is inert until someone loads it, and loading is
weights-only (``checkpoint_io.py``). An export without the JSON (audiocraft's own, or an older
one of ours) is listed with defaults.
"""
from __future__ import annotations

import json
import os
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from dataset_tools.atomic import atomic_path

from .checkpoint_io import atomic_torch_save
from .tiny import is_tiny_config, tiny_export_extras

LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
EXPORT_INFO_FILE = "export_info.json"  # what an export was trained on, readable without opening the weights

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


def export_model(model, folder: tp.Union[str, os.PathLike], lm_state: tp.Optional[dict] = None,
                 extra: tp.Optional[dict] = None) -> Path:
    """Write ``model`` to ``folder`` in audiocraft's layout; returns the folder.

    ``state_dict.bin`` holds ``{'xp.cfg', 'best_state'}`` (plus, for tiny models, the frozen
    text encoder's weights) and ``compression_state_dict.bin`` the compression model, so
    ``MusicGen.get_pretrained(folder)`` and ``load_model(folder)`` both accept it. Files are
    written to temporary names and renamed, so a crash never leaves a half-written export.

    Args:
        lm_state: LM weights to export instead of ``model.lm.state_dict()`` (e.g. EMA weights).
        extra: JSON-able facts merged into ``xp.cfg['musicgen_trainer']`` (e.g. training data genres).
    """
    from omegaconf import OmegaConf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    xp_cfg = OmegaConf.to_container(model.lm.cfg, resolve=True)
    xp_cfg["device"] = "cpu"
    if extra:
        xp_cfg.setdefault("musicgen_trainer", {}).update(extra)
    state = lm_state if lm_state is not None else model.lm.state_dict()
    lm_pkg = {"xp.cfg": xp_cfg, "best_state": {k: v.detach().cpu() for k, v in state.items()}}
    if is_tiny_config(xp_cfg):
        lm_pkg.update(tiny_export_extras(model))
    compression_pkg = _compression_package(model, xp_cfg)
    atomic_torch_save(lm_pkg, folder / LM_FILE)
    atomic_torch_save(compression_pkg, folder / COMPRESSION_FILE)
    write_export_info(folder, xp_cfg)
    return folder


def _compression_package(model, xp_cfg: dict) -> dict:
    """The compression model's package: rebuilt from config for local models, or the
    pretrained one's own package (copied from the hub cache) for released models."""
    ours = xp_cfg.get("musicgen_trainer") or {}
    if not is_tiny_config(xp_cfg):
        # A released model (or a fine-tune of one): its compression model is unchanged by
        # training, so the base's own package (hub cache or export folder) is copied as is.
        from audiocraft.models.loaders import load_compression_model_ckpt
        return load_compression_model_ckpt(ours.get("base_model") or model.name)
    compression = getattr(model.compression_model, "model", model.compression_model)  # unwrap stereo wrapper
    return {"xp.cfg": xp_cfg, "best_state": {k: v.detach().cpu() for k, v in compression.state_dict().items()}}


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
