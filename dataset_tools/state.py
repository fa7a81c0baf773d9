"""Remember what ``prepare`` already did, so a re-run only redoes what changed.

``OUT/.prepare_state.json`` holds one record per source file, keyed by its path relative
to SRC::

    {"size": 1234, "mtime_ns": 1700000000000000000, "options": "<hash>", "stem": "rock/Song",
     "status": "converted" | "skipped", "reason": "...", "track": {...}, "segments": [...]}

A source is up to date when size, mtime, output stem and the hash of every option that
changes outputs are equal, and (for converted sources) each segment's WAV, caption and
JSON still exist. The file is rewritten atomically every few seconds during a run, so a
killed run keeps most of its progress; whatever it did not record is simply redone.

It is also the ledger of what ``prepare`` wrote, because ``prepare`` replaces and deletes
only its own files (OUT may hold the user's files too)::

    "pending": ["rock/Song", ...]       stems claimed by a run before converting them
    "outputs": ["manifest.jsonl", ...]  top-level files claimed before writing them

A track's files are ``prepare``'s when a record lists them as segments, or when its stem is
claimed: a run claims (and saves) the stems it converts only after checking that nothing
named like their outputs is someone else's, so whatever a killed run left under a claimed
stem is its own. A claim ends when the track's result is recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath

from .files import SEGMENT_SEPARATOR, segment_file_pattern, write_text_atomic

STATE_FILE = ".prepare_state.json"
STATE_VERSION = 1


def options_hash(fields: dict) -> str:
    """Stable short hash of the options that change outputs."""
    blob = json.dumps({"state_version": STATE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class PrepareState:
    """Per-source records of one OUT folder, and what prepare wrote there (see module doc).

    ``foreign``: OUT holds a file named like the state file that prepare did not write.
    ``top_files``: top-level files claimed; None for a state saved before that was
    recorded, when prepare wrote all of them.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / STATE_FILE
        self.records: dict[str, dict] = {}
        self.pending: set[str] = set()
        self.top_files: set[str] | None = set()
        self.foreign = False
        if not os.path.lexists(self.path):
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        # Written atomically, so ours always parses: anything else is not ours to replace.
        if not (isinstance(data, dict) and "version" in data and isinstance(data.get("sources"), dict)):
            self.foreign = True
            return
        if data["version"] == STATE_VERSION:  # another version: everything is redone
            self.records = dict(data["sources"])
            self.pending = set(data.get("pending", []))
        self.top_files = set(data["outputs"]) if "outputs" in data else None
        # Every path it names must stay inside OUT: a crafted state ("/home/you/notes",
        # "../x") must not make prepare delete files elsewhere. Such a state is not ours.
        try:
            named = list(self.pending) + list(self.top_files or ())
            for rec in self.records.values():
                named += [rec["stem"]] if rec.get("stem") else []
                named += list(record_files(rec))
            inside = all(_inside_out(p) for p in named)
        except (TypeError, AttributeError, KeyError):
            inside = False
        if not inside:
            self.records, self.pending, self.top_files, self.foreign = {}, set(), set(), True

    def owns_top_file(self, name: str) -> bool:
        return self.top_files is None or name in self.top_files

    def claim(self, stems, top_files=()) -> None:
        """Mark ``stems`` and ``top_files`` as being written by this run (save() before writing)."""
        self.pending.update(stems)
        self.top_files = set(self.top_files or ()) | set(top_files)

    def release(self, stem: str) -> None:
        self.pending.discard(stem)

    def files_by_stem(self) -> dict[str, set[str]]:
        """Output stem -> the files its records list (relative paths), over every record."""
        index: dict[str, set[str]] = {}
        for rec in self.records.values():
            if rec.get("stem"):
                index.setdefault(rec["stem"], set()).update(record_files(rec))
        return index

    def owned_outputs(self, out: Path, stem: str, *records: dict | None) -> set[str]:
        """The files of ``stem`` in OUT that prepare wrote: every one while the stem is
        claimed, else those ``records`` list."""
        present = set(stem_files(out, stem))
        if stem in self.pending:
            return present
        listed: set[str] = set()
        for rec in records:
            if rec and rec.get("stem") == stem:
                listed |= record_files(rec)
        return present & listed

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
        data = {"version": STATE_VERSION, "sources": self.records, "pending": sorted(self.pending),
                "outputs": sorted(self.top_files or ())}
        write_text_atomic(self.path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def record_files(rec: dict) -> set[str]:
    """The WAV, caption and JSON (relative paths) of every segment a record lists."""
    return {seg["path"][:-len(".wav")] + ext for seg in rec.get("segments") or ()
            for ext in (".wav", ".txt", ".json")}


def stem_files(out: Path, stem: str) -> list[str]:
    """Relative paths of the entries named like a track's outputs (``stem.wav``,
    ``stem__NNN.wav`` and their .txt/.json), whoever wrote them."""
    folder = (out / stem).parent
    pattern = segment_file_pattern(Path(stem).name)
    if not folder.is_dir():
        return []
    return sorted((Path(stem).parent / entry.name).as_posix()
                  for entry in os.scandir(folder) if pattern.match(entry.name))


# A track output's name: the stem's name, maybe a segment number, and an extension.
_OUTPUT_NAME = re.compile(rf"^(.+?)(?:{SEGMENT_SEPARATOR}\d{{3,}})?\.(?:wav|txt|json)$")


def output_names(folder: Path) -> dict[str, list[str]]:
    """Entries of ``folder`` named like track outputs, by the stem name they would belong
    to, case-folded (one scan of the folder for all its stems)."""
    names: dict[str, list[str]] = {}
    if folder.is_dir():
        for entry in os.scandir(folder):
            match = _OUTPUT_NAME.match(entry.name)
            if match:
                names.setdefault(match.group(1).casefold(), []).append(entry.name)
    return names


def remove_outputs(out: Path, owned: set[str], keep: set[str] = frozenset()) -> int:
    """Delete the files in ``owned`` (relative paths: a track's outputs prepare wrote, from
    ``PrepareState.owned_outputs``) except those in ``keep``; returns how many were removed.
    Nothing else is ever deleted, however it is named."""
    removed = 0
    for rel in sorted(owned - set(keep)):
        try:
            os.unlink(out / rel)
            removed += 1
        except OSError:
            pass
    return removed


def _inside_out(rel) -> bool:
    """A relative POSIX path that stays inside OUT (no root, no drive, no "..")."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts and ":" not in path.parts[0]
