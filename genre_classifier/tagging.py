"""``predict`` and ``tag``: genres for files nobody labelled, and (optionally) filing them.

``tag DIR`` scores every audio file under DIR (typically a dataset's ``unknown/``), decides a
genre per *track* (segments cut from one source, per ``manifest.jsonl``, are decided together
so they end up in the same folder), and writes a CSV + JSON of the results before anything
moves. Tracks below ``min_confidence`` stay ``unknown``. Without ``apply`` it is a dry run.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset_tools.atomic import write_json_atomic, write_text_atomic
from dataset_tools.cli import option
from dataset_tools.dataset_format import UNKNOWN_GENRE_DIRS

from .data import list_audio_files
from .grouping import group_recordings
from .model_folder import read_info
from .options import RunOptions, existing_dir

log = logging.getLogger("genre_classifier")
APPLY_MODES = ("copy", "move")


@dataclass
class Prediction:
    """``predict`` result for one file: ``top`` is ``[(genre, probability)]`` best first."""
    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    duration: float = 0.0
    reason: str | None = None


def predict(paths: Sequence, model, *, top_k: int = 3, workers: int | None = None,
            cache_dir: Path | None = None, progress: bool = False) -> list[Prediction]:
    """Top-``top_k`` genres of each file (a loaded `Classifier` or a model folder path).
    A folder in ``paths`` stands for the audio files under it."""
    from .data import list_audio_files
    from .inference import score_files

    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top must be a whole number >= 1, got {top_k!r}")
    paths = [f for p in paths for f in (list_audio_files(p) if Path(p).is_dir() else [p])]
    if not paths:
        raise ValueError("no audio files given")
    classifier, scores = score_files(paths, model, workers=workers, cache_dir=cache_dir, progress=progress,
                                     desc="predicting")
    return [Prediction(s.path, s.top(classifier.labels, top_k), s.duration, s.reason) for s in scores]


@dataclass
class TagConfig(RunOptions):
    """``tag DIR --model M``. ``apply``: None (dry run), "copy" or "move" into ``into``
    (default: DIR's parent when DIR is an ``unknown/`` folder). ``report``: CSV path (default
    ``DIR/genre_tags.csv``, never overwriting an older one); the JSON goes next to it."""
    directory: Path = option(help="folder of tracks to tag, e.g. datasets/mine/unknown", metavar="DIR",
                             positional=True)
    model: Path = option(help="model folder written by train", metavar="DIR")
    min_confidence: float = option(0.6, "below this, a track stays unknown", metavar="P")
    apply: str | None = option(None, "file tagged tracks (default: dry run)", choices=APPLY_MODES)
    into: Path | None = option(None, "dataset holding the genre folders (default: DIR's parent when DIR is "
                               "unknown/)", metavar="DATASET")
    report: Path | None = option(None, "results CSV (default: DIR/genre_tags.csv; a JSON twin is written "
                                 "next to it)", metavar="CSV")

    def __post_init__(self):
        self._check_run_options()
        self.directory = existing_dir(self.directory, "folder to tag")
        self.model = Path(self.model).expanduser()
        read_info(self.model)
        if not isinstance(self.min_confidence, (int, float)) or not 0 <= self.min_confidence <= 1:
            raise ValueError(f"min-confidence must be between 0 and 1, got {self.min_confidence!r}")
        if self.apply not in (None, *APPLY_MODES):
            raise ValueError(f"apply must be one of {', '.join(APPLY_MODES)}, got {self.apply!r}")
        if self.into is None and self.directory.name.lower() in UNKNOWN_GENRE_DIRS:
            self.into = self.directory.parent
        if self.into is not None:
            self.into = existing_dir(self.into, "dataset to file tracks into (--into)")
        elif self.apply:
            raise ValueError(f"--apply {self.apply} needs --into DATASET (the folder holding the genre folders)")
        if self.report is None:
            self.report = unused_path(self.directory / "genre_tags.csv")
        self.report = Path(self.report).expanduser().resolve()
        if not os.access(self.report.parent if self.report.parent.exists() else self.directory, os.W_OK):
            raise ValueError(f"cannot write the results to {self.report.parent} (no permission); pass --report")


def unused_path(path: Path) -> Path:
    """``path``, or ``stem-1.ext``, ``stem-2.ext``... whichever (with its .json twin) does not exist."""
    candidate, n = path, 0
    while candidate.exists() or candidate.with_suffix(".json").exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


@dataclass
class TagRow:
    file: str                 # relative to the tagged folder
    track: str                # files with the same track are decided together
    status: str               # "tagged", "unknown" (below the threshold) or "skipped"
    genre: str                # the genre it is filed under, or "unknown"
    predicted: str = ""       # the most likely genre, even when below the threshold
    confidence: float | None = None
    top3: str = ""
    duration_s: float = 0.0
    action: str = ""          # "dry run", "pending", "moved", "copied", "failed", "left in place"
    destination: str = ""
    note: str = ""            # skip reason, filing note or failure


@dataclass
class TagResult:
    rows: list[TagRow]
    csv_path: Path
    json_path: Path
    applied: str | None

    def counts(self) -> dict:
        counts = defaultdict(int)
        for row in self.rows:
            counts[row.status] += 1
            if row.action in ("moved", "copied", "failed"):
                counts[row.action] += 1
        return dict(counts)


def _track_keys(files: list[Path], directory: Path) -> list[str]:
    """Recording key per file (`grouping.group_recordings`): the manifest's ``source`` when the
    dataset has one (here or in a parent folder), else prepare's segment names, else the file."""
    return group_recordings(directory, files).keys


def write_results(result: TagResult, meta: dict) -> None:
    """The CSV (one row per file) and the JSON (same rows + run details), both atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(TagRow.__dataclass_fields__))
    writer.writeheader()
    for row in result.rows:
        writer.writerow(asdict(row))
    write_text_atomic(result.csv_path, buffer.getvalue(), errors="backslashreplace")  # non-UTF-8 names
    write_json_atomic(result.json_path, {**meta, "counts": result.counts(), "rows": [asdict(r) for r in result.rows]})


def tag(config: TagConfig) -> TagResult:
    """Tag every audio file under ``config.directory``; file them when ``config.apply`` is set."""
    from .filing import Filer
    from .inference import score_files

    directory = config.directory
    files = list_audio_files(directory)
    if not files:
        raise ValueError(f"no audio files found in {directory}")
    classifier, scores = score_files(files, config.model, workers=config.workers,
                                     cache_dir=config.feature_cache, progress=config.progress, desc="tagging")
    keys = _track_keys(files, directory)
    windows_of = defaultdict(list)  # a track's prediction: the mean over all its files' windows
    for s, key in zip(scores, keys):
        if s.ok:
            windows_of[key].append(s.segment_probs)
    track_probs = {key: np.concatenate(segs).mean(axis=0) for key, segs in windows_of.items()}
    rows, reserved = [], set()
    planner = Filer(config.into, move=config.apply == "move", source_roots=[]) if config.into else None
    for path, key, s in zip(files, keys, scores):
        row = TagRow(file=path.relative_to(directory).as_posix(), track=key.split(":", 1)[-1],
                     status="skipped", genre="unknown", duration_s=round(s.duration, 2), note=s.reason or "")
        if s.ok:
            probs = track_probs[key]
            order = np.argsort(-probs, kind="stable")[:3]
            row.predicted, row.confidence = classifier.labels[order[0]], round(float(probs[order[0]]), 4)
            row.top3 = ", ".join(f"{classifier.labels[i]} {probs[i]:.2f}" for i in order)
            if row.confidence >= config.min_confidence:
                row.status, row.genre = "tagged", row.predicted
                if planner is not None:
                    row.destination = str(planner.plan(path, row.genre, reserved))
            else:
                row.status = "unknown"
                row.note = f"confidence {row.confidence:.2f} < {config.min_confidence:g}"
        row.action = ("pending" if config.apply else "dry run") if row.status == "tagged" else "left in place"
        rows.append(row)
    result = TagResult(rows, config.report, config.report.with_suffix(".json"), config.apply)
    meta = {"directory": str(directory), "model": str(config.model), "labels": classifier.labels,
            "min_confidence": config.min_confidence, "apply": config.apply,
            "into": str(config.into) if config.into else None}
    write_results(result, meta)  # before anything moves: the record survives any interruption
    if not config.apply:
        return result
    filer = Filer(config.into, move=config.apply == "move", source_roots=[directory, directory.parent])
    try:
        for row in rows:
            if row.status != "tagged":
                continue
            try:
                filed = filer.file(directory / row.file, row.genre)
                row.action, row.destination, row.note = filed.action, str(filed.destination), filed.note
            except Exception as err:  # one track that cannot be filed never stops the others
                row.action, row.note = "failed", f"{type(err).__name__}: {err}"
                log.warning("could not file %s: %s", row.file, row.note)
    finally:
        filer.close()
        write_results(result, meta)
    return result
