"""Which recording each audio file belongs to, so no split puts pieces of one recording on both sides.

Training on the 30 s segments ``dataset_tools prepare`` cuts, a split that treats every segment as
its own track puts segments of one recording in training and in the test, and the test then
measures memory instead of generalisation (on a real held-back set this reported 98 % where most
test "tracks" were segments of training tracks). The recording of a file is found, in order:

1. a ``manifest.jsonl`` written by prepare: in the data folder, in one of its parent folders (the
   folder given is a genre tree inside a prepared dataset) or in a sub-folder (the folder given
   holds prepared datasets); its ``source`` field names the original recording of each segment;
2. prepare's segment names: ``<name>__000.wav``, ``<name>__001.wav``... are the segments of
   ``<name>`` (``dataset_tools.files.SEGMENT_SEPARATOR``; prepare never writes ``__`` otherwise);
3. otherwise the file is its own recording. When that is so for every file, `Grouping.warning`
   says loudly that the split is by file and may leak.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from dataset_tools.files import SEGMENT_SEPARATOR

log = logging.getLogger("genre_classifier")
MANIFEST = "manifest.jsonl"
_SEGMENT_NAME = re.compile(rf"^(?P<base>.+?){re.escape(SEGMENT_SEPARATOR)}\d{{3,}}$")


@dataclass
class Grouping:
    """``keys``: one recording key per input file (same key, same recording). Keys start with
    ``source:`` (a manifest's source), ``recording:`` (segment names) or ``file:`` (the file)."""
    keys: list[str]
    manifests: list[Path] = field(default_factory=list)   # the manifests that named a file's source
    by_manifest: int = 0
    by_name: int = 0
    by_file: int = 0

    @property
    def all_by_file(self) -> bool:
        return bool(self.keys) and self.by_file == len(self.keys)

    def describe(self) -> str:
        """One line: how the files were grouped into recordings."""
        parts = []
        if self.by_manifest:
            shown = ", ".join(str(m) for m in self.manifests[:2]) + (" ..." if len(self.manifests) > 2 else "")
            parts.append(f"{self.by_manifest} by the manifest ({shown})")
        if self.by_name:
            parts.append(f"{self.by_name} by segment name (name{SEGMENT_SEPARATOR}000.wav, ...)")
        if self.by_file:
            parts.append(f"{self.by_file} as one file per recording")
        return f"{len(self.keys)} files in {len(set(self.keys))} recordings: " + ", ".join(parts)

    def warning(self, root) -> str | None:
        """The loud warning when no file could be tied to a recording, else None."""
        if not self.all_by_file:
            return None
        return (f"warning: no {MANIFEST} in {root}, its parent or sub-folders, and no segment names "
                f"(name{SEGMENT_SEPARATOR}000.wav): every file is treated as its own recording, so the split "
                f"is BY FILE. If these files are pieces cut from longer recordings, pieces of one recording "
                f"can land in training and test and the accuracy will be overstated: train on the prepared "
                f"folder with its {MANIFEST}, or keep prepare's file names")


def read_manifest(root: Path) -> dict[str, dict]:
    """``{relative path: manifest entry}`` from ``root/manifest.jsonl``; {} when there is none."""
    file = Path(root) / MANIFEST
    if not file.is_file():
        return {}
    entries, bad = {}, 0
    for line in file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries[str(entry["path"])] = entry
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        log.warning("warning: %d unreadable line(s) in %s were ignored", bad, file)
    return entries


def _read_sources(manifest: Path) -> dict[str, str]:
    """``{path relative to the manifest's folder: source}`` of one manifest (bad lines skipped)."""
    return {rel: str(entry["source"]) for rel, entry in read_manifest(manifest.parent).items()
            if entry.get("source")}


def find_manifests(root: Path) -> list[Path]:
    """Manifests that may describe files under ``root``: in ``root`` or a parent (nearest first),
    then in sub-folders (hidden ones skipped)."""
    root = Path(root).resolve()
    found = [folder / MANIFEST for folder in (root, *root.parents) if (folder / MANIFEST).is_file()]
    for path in sorted(root.rglob(MANIFEST)):
        rel = path.relative_to(root).parts
        if len(rel) > 1 and not any(p.startswith(".") for p in rel) and path not in found:
            found.append(path)
    return found


def segment_base(path: Path) -> str | None:
    """``name`` for ``name__003.wav``; None when the file name is not a segment name."""
    match = _SEGMENT_NAME.match(path.stem)
    return match.group("base") if match else None


def group_recordings(root, paths: list[Path]) -> Grouping:
    """The recording of each of ``paths`` (absolute files under ``root``), see the module doc."""
    root = Path(root).resolve()
    paths = [Path(p) for p in paths]
    keys: list[str | None] = [None] * len(paths)
    grouping = Grouping(keys=[])
    for manifest in find_manifests(root):
        sources = _read_sources(manifest)
        if not sources:
            continue
        used = False
        for i, path in enumerate(paths):
            if keys[i] is not None:
                continue
            try:
                rel = path.relative_to(manifest.parent).as_posix()
            except ValueError:
                continue
            if rel in sources:
                keys[i], used = f"source:{sources[rel]}", True
                grouping.by_manifest += 1
        if used:
            grouping.manifests.append(manifest)
    for i, path in enumerate(paths):
        if keys[i] is not None:
            continue
        try:
            folder = path.parent.relative_to(root).as_posix()
        except ValueError:
            folder = path.parent.as_posix()
        base = segment_base(path)
        if base is not None:
            keys[i] = f"recording:{folder}/{base}" if folder != "." else f"recording:{base}"
            grouping.by_name += 1
        else:
            keys[i] = f"file:{path.relative_to(root).as_posix() if path.is_relative_to(root) else path}"
            grouping.by_file += 1
    grouping.keys = [k for k in keys if k is not None]
    return grouping
