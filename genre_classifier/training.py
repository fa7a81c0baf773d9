"""``train DATA --out FOLDER``: features -> split by track -> fit -> test report -> model folder.

Order of work, and why: features are extracted (cached, in parallel) before the split, so a
genre whose files are all unreadable is reported by name instead of failing later; the split
is by track, stratified and seeded; early stopping watches the validation loss and keeps the
best weights; the test split is scored only once, at the end, and its report is saved with
the model so the figures a user sees are honest. With ``cv`` (``--cv K``),
`cross_validation.train_cv` replaces the single split once the features are extracted.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dataset_tools.atomic import write_json_atomic
from dataset_tools.cli import option

from .data import DatasetError, check_genres, discover, genre_counts, split_by_track
from .evaluation import format_report, score_tracks, write_report
from .extract import extract_many
from .features import FeatureSettings
from .fitting import (fit, format_counts, new_model, part_tracks, prepare_out, split_json,
                      window_arrays)
from .model import HEADS
from .model_folder import INFO_FILE, MODEL_FILE, REPORT_DIR, SPLIT_FILE, Classifier
from .options import RunOptions, existing_dir

log = logging.getLogger("genre_classifier")
TEMPERATURE_RANGE = (0.1, 10.0)


@dataclass
class TrainConfig(RunOptions):
    """Settings of one training run.

    ``head``: "stats" (the default: global pooling plus each MFCC coefficient's mean and standard
    deviation over the window), "gap" (global pooling) or "baseline" (Flatten -> Dense 64, the
    earlier default). ``augment`` (default on): random window positions, gain and time masks.
    Why these defaults: cross-validated on the example, piano and real-music sets they were at
    least as accurate as ``--head baseline --no-augment`` (docs/genre_classifier.md).
    ``calibrate``: fit a softmax temperature on the validation split so confidences (and
    ``tag --min-confidence``) mean what they say.
    """
    data: Path = option(help="folder of genre folders (raw or dataset_tools output)", metavar="DATA",
                        positional=True)
    out: Path = option(help="model folder (default: checkpoints/genre-<DATA name>)", metavar="DIR")
    epochs: int = option(60, "maximum epochs", metavar="N")
    batch_size: int = option(32, "segments per step", metavar="N")
    learning_rate: float = option(1e-4, "AdamW learning rate", metavar="LR")
    weight_decay: float = option(0.004, "AdamW weight decay", metavar="WD")
    patience: int = option(8, "early stopping: epochs without validation improvement", metavar="N")
    val_fraction: float = option(0.15, "share of each genre's tracks for validation", metavar="F")
    test_fraction: float = option(0.15, "share of each genre's tracks for the test", metavar="F")
    seed: int = option(0, "seed of the split and the training", metavar="N")
    head: str = option("stats", "classifier head: stats (global pooling plus each MFCC's mean and standard deviation "
                       "over the window), gap (global pooling) or baseline (Flatten+Dense, the earlier default)",
                       choices=HEADS)
    augment: bool = option(True, "random window positions, gain and time masks (--no-augment: fixed windows)")
    calibrate: bool = option(False, "fit a temperature on the validation split so confidences are honest")
    overwrite: bool = option(False, "replace a model already in --out")
    cv: int = option(0, "K-fold cross-validation grouped by recording, next to a pooled-feature baseline on "
                        "the same folds; the final model is then trained on everything (0: one split)",
                     metavar="K")
    features: FeatureSettings = FeatureSettings()

    def __post_init__(self):
        self._check_run_options()
        self.data = existing_dir(self.data, "dataset folder")
        self.out = Path(self.out).expanduser().resolve()
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file; give a folder for the model")
        if not self.overwrite and ((self.out / INFO_FILE).exists() or (self.out / MODEL_FILE).exists()):
            raise ValueError(f"{self.out} already holds a model; choose another --out or pass --overwrite")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"patience must be a whole number >= 0, got {self.patience!r}")
        if not self.learning_rate > 0 or not self.weight_decay >= 0:
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction <= 0.8):
            raise ValueError("val_fraction and test_fraction must each be between 0 and 1 (exclusive) and "
                             "leave at least 20 % of the tracks for training")
        if not isinstance(self.cv, int) or isinstance(self.cv, bool) or self.cv == 1 or self.cv < 0:
            raise ValueError(f"cv must be 0 (one split) or a number of folds >= 2, got {self.cv!r}")
        if self.cv and self.calibrate:
            raise ValueError("--calibrate fits on the validation split of one split; it is not available with --cv")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of: {', '.join(HEADS)}")

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("features")
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def fit_temperature(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T minimising the NLL of softmax(log(p) / T) on ``probs`` ``[n, L]``."""
    from .model_folder import apply_temperature
    # Bounded: on a small validation split that the model gets all right, the NLL keeps falling
    # as T -> 0, and an unbounded fit would make every prediction look certain.
    grid = np.exp(np.linspace(np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1]), 201))
    nll = [-np.mean(np.log(np.clip(apply_temperature(probs, t)[np.arange(len(y_true)), y_true], 1e-12, 1)))
           for t in grid]
    return float(grid[int(np.argmin(nll))])


def _extract(config: TrainConfig, all_files: list) -> tuple[dict, dict, list]:
    """Features of every file: ``({path: TrackFeatures}, {path: sha1}, [skipped {path, reason}])``."""
    feats, sha1, skipped = {}, {}, []
    started, cached = time.perf_counter(), 0
    for item in extract_many([f.path for f in all_files], config.features, workers=config.workers,
                             cache_dir=config.feature_cache, progress=config.progress, desc="extracting features"):
        f = all_files[item.index]
        if item.ok:
            feats[f.path], sha1[f.path] = item.features, item.sha1
            cached += item.cached
        else:
            skipped.append({"path": f.rel, "reason": item.reason})
            log.warning("skipped %s: %s", f.rel, item.reason)
    log.info("features: %d files (%d from the cache), %d skipped, %.1f s", len(feats), cached, len(skipped),
             time.perf_counter() - started)
    return feats, sha1, skipped


def _load(config: TrainConfig) -> tuple[list, list, dict, dict, list]:
    """Discover, check and featurise the dataset: ``(files, labels, feats, sha1, skipped)``;
    the split's requirements are checked before any feature is extracted."""
    all_files = discover(config.data)
    all_genres = check_genres(all_files, config.data)
    log.info("found %d audio files in %d genre folders: %s", len(all_files), len(all_genres), ", ".join(all_genres))
    if config.cv:
        from .cross_validation import grouped_folds
        grouped_folds(all_files, config.cv, config.seed)  # too few recordings: fail now
    else:
        split_by_track(all_files, config.val_fraction, config.test_fraction, config.seed)
    feats, sha1, skipped = _extract(config, all_files)
    files = [f for f in all_files if f.path in feats]
    for genre in all_genres:
        if not any(f.genre == genre for f in files):
            first = next(s["reason"] for s in skipped if s["path"].startswith(genre + "/"))
            raise DatasetError(f"genre '{genre}' has no usable tracks: all its files were skipped "
                               f"(first reason: {first})")
    return files, check_genres(files, config.data), feats, sha1, skipped


def train(config: TrainConfig) -> Path:
    """Train on ``config.data``; returns the model folder (``config.out``)."""
    settings = config.features
    files, labels, feats, sha1, skipped = _load(config)
    if config.cv:
        from .cross_validation import train_cv
        return train_cv(config, files, labels, feats, sha1, skipped)
    split = split_by_track(files, config.val_fraction, config.test_fraction, config.seed)

    from .model import import_keras
    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    x_val, y_val = window_arrays(split.val, feats, labels, settings)
    counts = {part: {"tracks": len({f.track for f in fs}), "files": len(fs)} for part, fs in split.parts().items()}
    counts["train"]["segments"] = sum(len(feats[f.path].windows(settings)) for f in split.train)
    counts["val"]["segments"] = len(y_val)
    log.info("split by recording: %s", ", ".join(f"{p} {c['tracks']} recordings" for p, c in counts.items()))
    windows = {f.path: len(feats[f.path].windows(settings)) for f in files}
    counts["genres"] = genre_counts(files, windows)
    per_part = {part: {g: c["recordings"] for g, c in genre_counts(fs).items()} for part, fs in split.parts().items()}
    for genre, c in counts["genres"].items():
        c.update({part: per_part[part].get(genre, 0) for part in per_part})
    log.info("%s", format_counts(counts["genres"], per_part))
    model = new_model(config, len(labels))
    history, epoch_seconds, train_seconds = fit(keras, model, config, split.train, feats, labels, (x_val, y_val))

    classifier = Classifier(keras_model=model, labels=labels, settings=settings)
    if config.calibrate:
        classifier.temperature = fit_temperature(classifier.predict_windows(x_val), y_val)
        log.info("calibration: temperature %.2f (fitted on the validation split)", classifier.temperature)
        if np.isclose(classifier.temperature, TEMPERATURE_RANGE).any():
            log.warning("warning: the temperature hit its bound %.2f: the validation split is too small or too "
                        "easy to calibrate on; treat confidences with care", classifier.temperature)
    report = score_tracks(part_tracks(classifier, split.test, feats), labels)  # the test split, scored once
    metrics = {}
    for part, rep in (("val", score_tracks(part_tracks(classifier, split.val, feats), labels)), ("test", report)):
        metrics[part] = {"track_accuracy": rep["track"]["accuracy"], "segment_accuracy": rep["segment"]["accuracy"],
                         "macro_f1": rep["track"]["macro_f1"], "ece": rep["track"]["ece"],
                         "tracks": rep["track"]["count"]}
    if config.calibrate:  # keep the uncalibrated error too, so calibration's effect is visible
        raw = Classifier(keras_model=model, labels=labels, settings=settings)
        metrics["test"]["ece_uncalibrated"] = score_tracks(part_tracks(raw, split.test, feats), labels)["track"]["ece"]
    report.update(data=str(config.data), split="test", skipped=skipped)

    out = prepare_out(config)
    write_json_atomic(out / SPLIT_FILE, split_json(split, sha1, config.seed))
    write_report(report, out / REPORT_DIR, f"{config.data.name} test split - {config.head}")
    val_losses = history["val_loss"]
    training = {
        "config": config.to_json(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs_run": len(val_losses), "best_epoch": int(np.argmin(val_losses)) + 1,
        "stopped_early": len(val_losses) < config.epochs, "train_seconds": round(train_seconds, 2),
        "epoch_seconds": [round(s, 3) for s in epoch_seconds], "counts": counts, "skipped": skipped,
        "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.items()},
        "versions": {"keras": keras.__version__, "python": platform.python_version()},
    }
    classifier.save(out, {"training": training, "metrics": metrics})
    log.info("test split (tracks never seen in training):\n%s", format_report(report))
    log.info("model saved to %s", out)
    return out
