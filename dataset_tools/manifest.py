"""Write the dataset manifests in audiocraft's ``data.jsonl`` format, with a leak-free split.

One JSON object per line and per segment. The first six keys are audiocraft's
``AudioMeta`` exactly; the rest are for our own trainer and genre classifier (audiocraft
ignores unknown keys)::

    {"path": "rock/Song__000.wav", "duration": 30.0, "sample_rate": 44100,
     "amplitude": null, "weight": null, "info_path": null,
     "genre": "rock", "source": "rock/Song.mp3", "split": "train", "segment": 0}

``path`` is relative to OUT (join it with the manifest's folder) unless the run asked for
absolute paths. ``genre`` is the genre folder's name in SRC, or null for unlabelled tracks
(``unknown/``, ``unknow/``, files directly in SRC).

Files (all rewritten atomically at the end of every run):
    manifest.jsonl   every segment
    train.jsonl      segments of the training tracks
    valid.jsonl      segments of the validation tracks
    unlabelled.jsonl segments of unlabelled tracks, for the genre classifier to tag
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .files import write_text_atomic

MANIFEST = "manifest.jsonl"
TRAIN = "train.jsonl"
VALID = "valid.jsonl"
UNLABELLED = "unlabelled.jsonl"


def split_tracks(tracks: dict[str, str | None], valid_fraction: float, seed: int) -> set[str]:
    """Choose the validation tracks: returns the set of source paths in ``valid``.

    ``tracks`` maps source path -> genre (None = unlabelled). The split is made by source
    track, so the segments of one track never straddle train and valid, and per genre, so
    every genre with at least two tracks is in both splits. Tracks are ranked by a hash of
    (seed, path): the split is deterministic and a track keeps its side when others are
    added or removed.
    """
    valid: set[str] = set()
    if valid_fraction <= 0:
        return valid
    by_genre: dict[str | None, list[str]] = {}
    for source, genre in tracks.items():
        by_genre.setdefault(genre, []).append(source)
    for sources in by_genre.values():
        if len(sources) < 2:
            continue  # a lone track trains; validating on it would leave its genre untrained
        count = min(len(sources) - 1, max(1, math.floor(valid_fraction * len(sources) + 0.5)))
        ranked = sorted(sources, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
        valid.update(ranked[:count])
    return valid


def manifest_rows(records: dict[str, dict], valid: set[str], out: Path,
                  absolute_paths: bool = False) -> list[dict]:
    """One row per segment of every converted record (see module doc), sorted by path."""
    rows = []
    for source, rec in records.items():
        if rec.get("status") != "converted":
            continue
        split = "valid" if source in valid else "train"
        for seg in rec["segments"]:
            path = str((out / seg["path"]).resolve()) if absolute_paths else seg["path"]
            rows.append({"path": path, "duration": seg["duration"], "sample_rate": seg["sample_rate"],
                         "amplitude": None, "weight": None, "info_path": None,
                         "genre": rec["track"]["genre"], "source": source,
                         "split": split, "segment": seg["segment"]})
    rows.sort(key=lambda r: (r["path"], r["segment"]))
    return rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_manifests(out: Path, rows: list[dict], unlabelled_sources: set[str]) -> dict[str, int]:
    """Write the four manifest files; returns how many rows each got."""
    files = {
        MANIFEST: rows,
        TRAIN: [r for r in rows if r["split"] == "train"],
        VALID: [r for r in rows if r["split"] == "valid"],
        UNLABELLED: [r for r in rows if r["source"] in unlabelled_sources],
    }
    for name, subset in files.items():
        write_text_atomic(out / name, _jsonl(subset))
    return {name: len(subset) for name, subset in files.items()}


def read_manifest(path) -> list[dict]:
    """Rows of a ``.jsonl`` manifest (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
