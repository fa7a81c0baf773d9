"""Find the training clips and their captions in any of the dataset layouts we accept.

Accepted ``--data``:
- a folder written by ``dataset_tools prepare`` (``manifest.jsonl`` + ``.wav``/``.txt``/``.json``);
- an audiocraft ``data.jsonl`` file (or a folder holding one), whose lines give ``path``;
- a plain folder of audio files with same-named ``.txt`` captions (searched recursively).

The caption of a clip is the ``description`` of its ``.json`` (what audiocraft feeds T5), else
its ``.txt``, else the manifest line's ``description``, else empty (trained unconditioned,
with a warning). The validation split is fixed by track: taken from the manifest's ``split``
when present, otherwise decided by a hash of the track name, so segments of one track never
straddle the split and the split never changes between runs.
"""
from __future__ import annotations

import hashlib
import json
import re
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from .constants import AUDIO_EXTENSIONS

MANIFEST_NAMES = ("manifest.jsonl", "data.jsonl")


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Clip:
    """One training file."""
    path: Path           # audio file
    caption: str         # description text given to the text encoder
    track: str           # source-track id: segments of one track share it
    split: str           # "train" or "valid"
    genre: str = ""


def _caption_for(audio: Path, fallback: str = "") -> str:
    meta = audio.with_suffix(".json")
    if meta.is_file():
        try:
            description = json.loads(meta.read_text(encoding="utf-8")).get("description")
            if isinstance(description, str) and description.strip():
                return description.strip()
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    txt = audio.with_suffix(".txt")
    if txt.is_file():
        try:
            return txt.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            return txt.read_text(encoding="latin-1").strip()
    return fallback.strip()


def _hash_split(track: str, valid_fraction: float, seed: int) -> str:
    digest = hashlib.sha1(f"{seed}:{track}".encode()).digest()
    return "valid" if int.from_bytes(digest[:8], "big") / 2**64 < valid_fraction else "train"


_SEGMENT_SUFFIX = re.compile(r"(_|-)(seg)?\d{2,4}$")


def _track_of(rel: Path) -> str:
    """Track id of a file with no manifest: its path without a trailing segment number."""
    return str(rel.with_suffix("")).replace("\\", "/") if not _SEGMENT_SUFFIX.search(rel.stem) \
        else str(rel.parent / _SEGMENT_SUFFIX.sub("", rel.stem))


def _from_manifest(manifest: Path, valid_fraction: float, seed: int) -> list[Clip]:
    root = manifest.parent
    clips = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path = Path(row["path"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"{manifest}:{n}: not a manifest line with a 'path'") from None
        if not path.is_absolute():
            path = root / path
        track = str(row.get("source") or _track_of(path.relative_to(root) if path.is_relative_to(root) else path))
        split = row.get("split") if row.get("split") in ("train", "valid") else \
            _hash_split(track, valid_fraction, seed)
        clips.append(Clip(path=path, caption=_caption_for(path, row.get("description") or ""),
                          track=track, split=split, genre=str(row.get("genre") or "")))
    return clips


def _from_folder(folder: Path, valid_fraction: float, seed: int) -> list[Clip]:
    clips = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # hidden folders: caches, partial files
        rel = path.relative_to(folder)
        track = _track_of(rel)
        genre = rel.parts[0] if len(rel.parts) > 1 else ""
        clips.append(Clip(path=path, caption=_caption_for(path), track=track,
                          split=_hash_split(track, valid_fraction, seed), genre=genre))
    return clips


def find_clips(data: tp.Union[str, Path], valid_fraction: float = 0.1, seed: int = 0) -> list[Clip]:
    """All clips of a dataset (see module doc), in a stable order.

    Raises:
        DatasetError: missing path, unreadable manifest, or no audio found.
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise DatasetError(f"dataset not found: {data}")
    if data.is_file():
        if data.suffix != ".jsonl":
            raise DatasetError(f"{data} is a file but not a .jsonl manifest")
        clips = _from_manifest(data, valid_fraction, seed)
    else:
        manifest = next((data / n for n in MANIFEST_NAMES if (data / n).is_file()), None)
        clips = _from_manifest(manifest, valid_fraction, seed) if manifest else \
            _from_folder(data, valid_fraction, seed)
    if not clips:
        raise DatasetError(f"no audio files found in {data} (expected a dataset_tools output folder, "
                           f"a data.jsonl, or audio files with .txt captions)")
    missing = [c.path for c in clips if not c.path.is_file()]
    if len(missing) == len(clips):
        raise DatasetError(f"none of the {len(clips)} files listed in {data} exist (first: {missing[0]})")
    return clips


def split_clips(clips: tp.Sequence[Clip]) -> tuple[list[Clip], list[Clip]]:
    """(train, valid); if the split left no training clip, everything trains."""
    train = [c for c in clips if c.split == "train"]
    valid = [c for c in clips if c.split == "valid"]
    if not train:
        return list(clips), []
    return train, valid
