"""Remember what ``prepare`` already did, so a re-run only redoes what changed.

``OUT/.prepare_state.json`` holds one record per source file, keyed by its path relative
to SRC::

    {"size": 1234, "mtime_ns": 1700000000000000000, "options": "<hash>", "stem": "rock/Song",
     "status": "converted" | "skipped", "reason": "...", "track": {...}, "segments": [...]}

A source is up to date when size, mtime, output stem and the hash of every option that
changes outputs are equal, and (for converted sources) each segment's WAV, caption and
JSON still exist. The file is rewritten atomically every few seconds during a run, so a
killed run keeps most of its progress; whatever it did not record is simply redone.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .files import write_text_atomic

STATE_FILE = ".prepare_state.json"
STATE_VERSION = 1


def options_hash(fields: dict) -> str:
    """Stable short hash of the options that change outputs."""
    blob = json.dumps({"state_version": STATE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class PrepareState:
    """Per-source records of one OUT folder (see module doc)."""

    def __init__(self, out: Path):
        self.path = Path(out) / STATE_FILE
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == STATE_VERSION:
                    self.records = dict(data.get("sources", {}))
            except (OSError, ValueError, AttributeError):
                self.records = {}  # unreadable state: everything is redone, nothing breaks

    def is_up_to_date(self, rel: str, size: int, mtime_ns: int, opts: str, stem: str,
                      out: Path) -> bool:
        rec = self.records.get(rel)
        if not rec or (rec.get("size"), rec.get("mtime_ns"), rec.get("options"), rec.get("stem")) != \
                (size, mtime_ns, opts, stem):
            return False
        if rec.get("status") != "converted":
            return rec.get("status") == "skipped"
        for seg in rec.get("segments", []):
            wav = out / seg["path"]
            if not (wav.is_file() and wav.with_suffix(".txt").is_file() and wav.with_suffix(".json").is_file()):
                return False
        return True

    def put(self, rel: str, record: dict) -> None:
        self.records[rel] = record

    def drop(self, rel: str) -> dict | None:
        return self.records.pop(rel, None)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": STATE_VERSION, "sources": self.records}
        write_text_atomic(self.path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def remove_outputs(out: Path, stem: str, keep: set[str] = frozenset()) -> int:
    """Delete a track's outputs (``stem.wav``, ``stem__NNN.wav`` and their .txt/.json)
    except the relative paths in ``keep``; returns how many files were removed."""
    from .files import segment_file_pattern
    folder = (out / stem).parent
    name = Path(stem).name
    pattern = segment_file_pattern(name)
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in os.scandir(folder):
        if pattern.match(entry.name):
            rel = (Path(stem).parent / entry.name).as_posix()
            if rel not in keep:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass
    return removed
