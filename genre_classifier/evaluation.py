"""Honest evaluation: segment- and track-level accuracy, macro-F1, confusion matrix (PNG + JSON).

A track's prediction is the mean of its windows' probabilities over evenly spaced 3 s windows
covering the whole track (all segment files of a prepared track together). When the dataset
being evaluated is the one the model was trained on, the tracks used for training or
validation (recognised by the SHA-1 of their files, recorded in ``split.json``) are left out
unless asked, since scoring them would overstate the accuracy.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset_tools.atomic import write_json_atomic
from dataset_tools.cli import option

from .data import LabelledFile, discover
from .inference import FileScores
from .metrics import plot_confusion, summarise
from .model_folder import SPLIT_FILE, read_info
from .options import RunOptions, existing_dir

log = logging.getLogger("genre_classifier")


@dataclass
class TrackScores:
    track: str
    genre: str
    files: list[str]
    segment_probs: np.ndarray  # [windows of all the track's files, n_labels]


def group_by_track(files: list[LabelledFile], scores: dict[Path, FileScores]) -> list[TrackScores]:
    """Collect the window probabilities of each track's usable files (skipped files are left out)."""
    grouped: dict[str, TrackScores] = {}
    for f in files:
        s = scores.get(f.path)
        if s is None or not s.ok:
            continue
        if f.track not in grouped:
            grouped[f.track] = TrackScores(f.track, f.genre, [], [])
        grouped[f.track].files.append(f.rel)
        grouped[f.track].segment_probs.append(s.segment_probs)
    for t in grouped.values():
        t.segment_probs = np.concatenate(t.segment_probs)
    return list(grouped.values())


def score_tracks(tracks: list[TrackScores], labels: list[str]) -> dict:
    """The evaluation report (a JSON-ready dict) for tracks whose genre is one of ``labels``."""
    index = {name: i for i, name in enumerate(labels)}
    tracks = [t for t in tracks if t.genre in index]
    n = len(labels)
    track_probs = np.array([t.segment_probs.mean(axis=0) for t in tracks]).reshape(-1, n)
    track_true = np.array([index[t.genre] for t in tracks], dtype=int)
    seg_probs = np.concatenate([t.segment_probs for t in tracks]) if tracks else np.zeros((0, n))
    seg_true = np.concatenate([[index[t.genre]] * len(t.segment_probs) for t in tracks]).astype(int) \
        if tracks else np.zeros(0, dtype=int)
    per_track = [{"track": t.track.split(":", 1)[-1], "genre": t.genre, "predicted": labels[int(p.argmax())],
                  "confidence": round(float(p.max()), 4), "windows": len(t.segment_probs), "files": t.files}
                 for t, p in zip(tracks, track_probs)]
    return {"labels": list(labels), "track": summarise(track_true, track_probs, labels),
            "segment": summarise(seg_true, seg_probs, labels), "tracks": per_track}


def write_report(report: dict, out_dir, title: str) -> dict[str, Path]:
    """``evaluation.json``, ``confusion_matrix.png`` (tracks) and ``confusion_matrix.json``."""
    out_dir = Path(out_dir)
    paths = {"json": write_json_atomic(out_dir / "evaluation.json", report)}
    labels, track = report["labels"], report["track"]
    paths["confusion_json"] = write_json_atomic(out_dir / "confusion_matrix.json", {
        "labels": labels, "rows": "true genre", "columns": "predicted genre",
        "tracks": track["confusion"], "segments": report["segment"]["confusion"]})
    acc = f"track accuracy {100 * track['accuracy']:.1f} % of {track['count']} tracks"
    paths["png"] = plot_confusion(track["confusion"], labels, out_dir / "confusion_matrix.png",
                                  f"{title}\n{acc}")
    return paths


def format_report(report: dict) -> str:
    """A plain-text summary for the terminal."""
    labels, track, seg = report["labels"], report["track"], report["segment"]
    width = max(8, *(len(x) for x in labels)) + 2
    lines = [f"tracks: {track['count']}   segments (3 s windows): {seg['count']}",
             f"  track accuracy     {100 * track['accuracy']:5.1f} %   (mean of each track's windows)",
             f"  segment accuracy   {100 * seg['accuracy']:5.1f} %",
             f"  macro-F1 (tracks)  {track['macro_f1']:.3f}",
             f"  calibration error  {track['ece']:.3f}   (track ECE; 0 = confidences are honest)",
             "confusion matrix (tracks; rows = true genre, columns = predicted):",
             " " * width + "".join(f"{x[:width - 1]:>{width}}" for x in labels)]
    for name, row in zip(labels, track["confusion"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    lines.append(f"{'genre':<{width}}precision  recall     f1  tracks")
    for name in labels:
        s = track["per_class"][name]
        lines.append(f"{name:<{width}}{s['precision']:9.2f} {s['recall']:7.2f} {s['f1']:6.2f} {s['support']:7d}")
    return "\n".join(lines)


@dataclass
class EvaluateConfig(RunOptions):
    """``evaluate DATA --model M``: score the labelled tracks of DATA.

    ``out``: report folder (default ``M/eval-<DATA folder name>``). ``include_training_tracks``:
    also score tracks the model was trained or validated on (overstates accuracy).
    """
    data: Path = option(help="folder of genre folders", metavar="DATA", positional=True)
    model: Path = option(help="model folder written by train", metavar="DIR")
    out: Path | None = option(None, "report folder (default: MODEL/eval-<DATA name>)", metavar="DIR")
    include_training_tracks: bool = option(False, "also score tracks the model was trained on (overstates "
                                           "accuracy)")

    def __post_init__(self):
        self._check_run_options()
        self.data = existing_dir(self.data, "dataset folder")
        self.model = Path(self.model).expanduser()
        read_info(self.model)  # fail before any work if the model folder is unusable
        self.out = Path(self.out).expanduser() if self.out else self.model / f"eval-{self.data.name}"


def training_hashes(model_folder: Path) -> set[str] | None:
    """SHA-1s of the files the model was trained or validated on; None if not recorded."""
    try:
        split = json.loads((Path(model_folder) / SPLIT_FILE).read_text(encoding="utf-8"))
        return {f["sha1"] for part in ("train", "val") for t in split.get(part, []) for f in t["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def evaluate(config: EvaluateConfig) -> dict:
    """Score DATA's labelled tracks; writes the report files and returns the report dict."""
    from .inference import score_files

    labels = read_info(config.model)["labels"]
    files = discover(config.data)
    for genre in sorted({f.genre for f in files} - set(labels)):
        log.warning("warning: genre '%s' is not one this model knows (%s); its tracks are left out",
                    genre, ", ".join(labels))
    files = [f for f in files if f.genre in labels]
    if not files:
        raise ValueError(f"no tracks of the model's genres ({', '.join(labels)}) found in {config.data}")
    classifier, results = score_files([f.path for f in files], config.model, workers=config.workers,
                                      cache_dir=config.feature_cache, progress=config.progress,
                                      desc="evaluating")
    scores = {f.path: r for f, r in zip(files, results)}
    skipped = [{"path": f.rel, "reason": scores[f.path].reason} for f in files if not scores[f.path].ok]
    tracks = group_by_track(files, scores)
    excluded = 0
    if not config.include_training_tracks:
        seen = training_hashes(config.model)
        if seen is None:
            log.warning("warning: %s has no %s, so tracks used in training cannot be recognised; if DATA "
                        "is the training data, these figures are too optimistic", config.model, SPLIT_FILE)
        else:
            used = {f.track for f in files if scores[f.path].sha1 in seen}
            excluded = sum(t.track in used for t in tracks)
            tracks = [t for t in tracks if t.track not in used]
            if excluded:
                log.info("%d track(s) of %s were used to train or validate this model and are left out; "
                         "%d held-out track(s) remain", excluded, config.data.name, len(tracks))
    if not tracks:
        raise ValueError(f"no held-out tracks left to evaluate in {config.data} (all were used in training"
                         f"{' or skipped' if skipped else ''}); pass --include-training-tracks to score them anyway")
    per_genre = Counter(t.genre for t in tracks)
    for genre in sorted(g for g, n in per_genre.items() if n < 2):
        log.warning("warning: genre '%s' has only %d held-out recording here: its per-genre figures are 0 %% or "
                    "100 %%, not a measurement", genre, per_genre[genre])
    report = score_tracks(tracks, classifier.labels)
    report.update(data=str(config.data), model=str(config.model), excluded_training_tracks=excluded,
                  skipped=skipped)
    paths = write_report(report, config.out, f"{config.data.name} - {config.model.name}")
    report["files"] = {kind: str(path) for kind, path in paths.items()}
    return report
