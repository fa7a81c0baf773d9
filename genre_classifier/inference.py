"""Score many files with a classifier: worker processes extract, this process predicts.

Feature extraction (decode + resample + MFCC) is the expensive part and runs in parallel
workers; the CNN runs here on batches of windows gathered from many files, because one
forward pass over 1000 windows costs far less than 100 passes over 10.

`score_audio` scores clips already in memory (e.g. generated ones) the same way: the same
mono mix, resampler, features and window averaging as a file of those samples would get.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .extract import extract_many
from .features import FeatureError, FeatureSettings, TrackFeatures, features_from_audio
from .model_folder import Classifier, load_classifier, read_info

FLUSH_WINDOWS = 2048  # predict once this many windows are waiting (bounds memory on big folders)


@dataclass
class FileScores:
    """One file's outcome: ``probs`` ``[n_labels]`` (mean over windows) or a skip ``reason``."""
    path: Path | None                         # None for clips scored in memory (score_audio)
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


def audio_features(audio: np.ndarray, sample_rate: int, settings: FeatureSettings) -> TrackFeatures:
    """Features of in-memory audio ``[n]`` or ``[channels, n]`` at ``sample_rate``, exactly as
    `extract.extract_one` makes them from a file holding those samples (mean of the channels,
    soxr resampling to the model's rate, the same checks). Raises FeatureError (silent, short)."""
    from dataset_tools.audio_io import resample

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if not np.isfinite(audio).all():
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    if sample_rate != settings.sample_rate:
        audio = resample(audio, int(sample_rate), settings.sample_rate)
    return features_from_audio(np.ascontiguousarray(audio, dtype=np.float32), settings)


def score_audio(waves: Sequence[np.ndarray], sample_rate: int, classifier: Classifier) -> list[FileScores]:
    """Score clips in memory: a `FileScores` per clip (``path`` None), in input order; a clip
    that cannot be scored (silent, too short) gets its ``reason``, as a bad file would."""
    results, windows = [], []
    for audio in waves:
        scores = FileScores(path=None)
        try:
            features = audio_features(audio, sample_rate, classifier.settings)
        except FeatureError as err:
            scores.reason = str(err)
            results.append(scores)
            windows.append(None)
            continue
        scores.duration, scores.padded = features.duration, features.padded
        results.append(scores)
        windows.append(features.windows(classifier.settings))
    usable = [w for w in windows if w is not None]
    probs = classifier.predict_windows(np.concatenate(usable)) if usable else None
    offset = 0
    for scores, w in zip(results, windows):
        if w is not None:
            seg = probs[offset:offset + len(w)]
            offset += len(w)
            scores.segment_probs, scores.probs = seg, seg.mean(axis=0)
    return results
