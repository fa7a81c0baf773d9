"""The pieces of training that one split (`training.train`) and cross-validation
(`cross_validation.train_cv`) share: window arrays, a fresh model, the fit with its epoch log,
per-track scoring of a part, and the model folder's split record and preparation.

``config`` below is a `training.TrainConfig` (not imported here: training imports this module).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from .data import Split
from .evaluation import TrackScores
from .model_folder import INFO_FILE, MODEL_FILE, REPORT_DIR, SPLIT_FILE, Classifier

log = logging.getLogger("genre_classifier")
CV_FILE = "cv.json"  # the cross-validation report (train --cv), beside classifier.json


def window_arrays(files, feats, labels, settings):
    """Stack the fixed-grid windows of ``files``: ``x`` [n, frames, n_mfcc, 1], ``y`` [n]."""
    index = {g: i for i, g in enumerate(labels)}
    xs = [feats[f.path].windows(settings) for f in files]
    y = np.concatenate([[index[f.genre]] * len(w) for f, w in zip(files, xs)]).astype(np.int64)
    return np.concatenate(xs)[..., None], y


def split_json(split: Split, sha1: dict, seed: int) -> dict:
    out = {"seed": seed}
    for part, files in split.parts().items():
        tracks: dict[str, dict] = {}
        for f in files:
            entry = tracks.setdefault(f.track, {"track": f.track, "genre": f.genre, "files": []})
            entry["files"].append({"path": f.rel, "sha1": sha1[f.path]})
        out[part] = list(tracks.values())
    return out


class EpochLog:
    """Keras callback factory: logs one line per epoch and records its wall time."""

    @staticmethod
    def make(keras, epochs: int, seconds: list):
        class EpochLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                seconds.append(time.perf_counter() - self.start)
                logs = logs or {}
                log.info("epoch %3d/%d  loss %.3f  acc %.3f  val_loss %.3f  val_acc %.3f  (%.1f s)",
                         epoch + 1, epochs, logs.get("loss", np.nan), logs.get("accuracy", np.nan),
                         logs.get("val_loss", np.nan), logs.get("val_accuracy", np.nan), seconds[-1])
        return EpochLog()


def part_tracks(classifier: Classifier, part_files: list, feats: dict) -> list[TrackScores]:
    """Window probabilities of each track of one split part (one batched prediction)."""
    windows = [feats[f.path].windows(classifier.settings) for f in part_files]
    probs = classifier.predict_windows(np.concatenate(windows)) if windows else None
    grouped: dict[str, TrackScores] = {}
    offset = 0
    for f, w in zip(part_files, windows):
        t = grouped.setdefault(f.track, TrackScores(f.track, f.genre, [], []))
        t.files.append(f.rel)
        t.segment_probs.append(probs[offset:offset + len(w)])
        offset += len(w)
    for t in grouped.values():
        t.segment_probs = np.concatenate(t.segment_probs)
    return list(grouped.values())


def fit(keras, model, config, train_files: list, feats: dict, labels: list, val_data,
         epochs: int | None = None) -> tuple:
    """Train on ``train_files``; with ``val_data`` ``(x, y)`` early stopping keeps the best epoch,
    without it the model trains exactly ``epochs`` epochs. Returns (history dict, seconds per
    epoch, total seconds)."""
    settings = config.features
    epochs = epochs or config.epochs
    epoch_seconds: list[float] = []
    callbacks = [EpochLog.make(keras, epochs, epoch_seconds)]
    if val_data is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                       restore_best_weights=True))
    if config.augment:
        from .augment import WindowSampler, make_dataset
        sampler = WindowSampler([feats[f.path].mfcc for f in train_files],
                                [labels.index(f.genre) for f in train_files], settings.frames,
                                settings.n_mels, seed=config.seed)
        fit_args = {"x": make_dataset(keras, sampler, config.batch_size)}
    else:
        x_train, y_train = window_arrays(train_files, feats, labels, settings)
        fit_args = {"x": x_train, "y": y_train, "batch_size": config.batch_size, "shuffle": True}
    started = time.perf_counter()
    history = model.fit(**fit_args, validation_data=val_data, epochs=epochs, callbacks=callbacks, verbose=0)
    return history.history, epoch_seconds, time.perf_counter() - started


def new_model(config, n_labels: int):
    """A compiled, untrained model for ``config``."""
    from .model import build_model, compile_model
    settings = config.features
    return compile_model(build_model(settings.frames, settings.n_mfcc, n_labels, config.head),
                         config.learning_rate, config.weight_decay)


def format_counts(counts: dict, parts: dict | None = None) -> str:
    """The per-genre table: source recordings next to segment files and 3 s windows
    (``parts``: ``{part: {genre: recordings}}`` of the split, when there is one)."""
    lines = [f"{'genre':<14}{'recordings':>10}{'files':>8}{'windows':>9}" + ("   train/val/test recordings"
                                                                            if parts else "")]
    for genre, c in counts.items():
        split = "   " + "/".join(str(parts[p].get(genre, 0)) for p in ("train", "val", "test")) if parts else ""
        lines.append(f"{genre:<14}{c['recordings']:>10}{c['files']:>8}{c.get('windows', 0):>9}{split}")
    return "\n".join(lines)


def prepare_out(config) -> Path:
    """``config.out``, emptied of a previous model's files when ``overwrite``."""
    out = config.out
    if config.overwrite and out.exists():
        for name in (INFO_FILE, MODEL_FILE, SPLIT_FILE, CV_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / REPORT_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out
