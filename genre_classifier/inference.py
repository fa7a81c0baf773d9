"""Score many files with a classifier: worker processes extract, this process predicts.

Feature extraction (decode + resample + MFCC) is the expensive part and runs in parallel
workers; the CNN runs here on batches of windows gathered from many files, because one
forward pass over 1000 windows costs far less than 100 passes over 10.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .extract import extract_many
from .features import FeatureSettings
from .model_folder import Classifier, load_classifier, read_info

FLUSH_WINDOWS = 2048  # predict once this many windows are waiting (bounds memory on big folders)


@dataclass
class FileScores:
    """One file's outcome: ``probs`` ``[n_labels]`` (mean over windows) or a skip ``reason``."""
    path: Path
    probs: np.ndarray | None = None
    segment_probs: np.ndarray | None = None   # [n_windows, n_labels]
    duration: float = 0.0                     # seconds of audio (0 when skipped)
    padded: bool = False                      # shorter than one window, zero-padded
    reason: str | None = None
    sha1: str | None = None

    @property
    def ok(self) -> bool:
        return self.probs is not None

    def top(self, labels: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most likely ``(genre, probability)`` pairs, best first."""
        if self.probs is None:
            return []
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(labels[i], float(self.probs[i])) for i in order]


def score_files(paths: Sequence, model, *, workers: int | None = None, cache_dir: Path | None = None,
                progress: bool = True, desc: str = "scoring") -> tuple[Classifier, list[FileScores]]:
    """Score every path; returns the classifier and a `FileScores` per path, in input order.

    ``model`` is a loaded `Classifier` or a model folder. Given a folder, the extraction
    workers start first (the feature settings come from ``classifier.json``) and TensorFlow
    loads while they work: on a cold start that hides most of TensorFlow's import time.
    Bad files get a reason, never an exception.
    """
    paths = [Path(p) for p in paths]
    if isinstance(model, Classifier):
        classifier, settings = model, model.settings
    else:
        classifier, settings = None, FeatureSettings.from_dict(read_info(model)["features"])
    results: list[FileScores | None] = [None] * len(paths)
    waiting: list[tuple[int, np.ndarray]] = []   # (index, windows [n, frames, n_mfcc])
    waiting_windows = 0

    def flush():
        nonlocal waiting, waiting_windows
        if not waiting:
            return
        probs = classifier.predict_windows(np.concatenate([w for _, w in waiting]))
        offset = 0
        for index, windows in waiting:
            seg = probs[offset:offset + len(windows)]
            offset += len(windows)
            results[index].segment_probs, results[index].probs = seg, seg.mean(axis=0)
        waiting, waiting_windows = [], 0

    for item in extract_many(paths, settings, workers=workers, cache_dir=cache_dir, progress=progress, desc=desc):
        if classifier is None:  # the pool is busy with every file now: load TensorFlow meanwhile
            classifier = load_classifier(model)
        scores = FileScores(path=paths[item.index], reason=item.reason, sha1=item.sha1)
        results[item.index] = scores
        if item.ok:
            scores.duration, scores.padded = item.features.duration, item.features.padded
            windows = item.features.windows(settings)
            waiting.append((item.index, windows))
            waiting_windows += len(windows)
            if waiting_windows >= FLUSH_WINDOWS:
                flush()
    if classifier is None:  # no files at all
        classifier = load_classifier(model)
    flush()
    return classifier, results
