"""``train --cv K``: K-fold cross-validation grouped by recording, the CNN next to a pooled-feature baseline.

Why: with a few dozen recordings, one test split of 10 recordings gives a figure whose error bar
is +-15 points, and the split decides more than the model. Here every recording is tested exactly
once, by a model that never saw any part of it:

- folds are made of whole recordings (`grouped_folds`: never one recording in two folds),
  stratified by genre (each genre's recordings spread evenly over the folds);
- in each fold the CNN trains on the other folds, with early stopping on a validation set of
  whole recordings taken from those training folds (never from the test fold), and the baseline
  (`baseline.PooledBaseline`) trains on the same training folds;
- the out-of-fold predictions are pooled: accuracy of recordings and of 3 s segments, with a 95 %
  Wilson interval on the pooled recording accuracy (recordings are the independent units; segments
  of one recording are not, so segments get the mean +- standard deviation over folds only);
- the final model is then trained on every recording for the median best epoch of the folds (no
  data is left to stop on), and saved with the cross-validation report (``cv.json``).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dataset_tools.atomic import write_json_atomic

from .data import DatasetError, LabelledFile, Split, tracks_by_genre
from .evaluation import TrackScores, format_report, score_tracks, write_report
from .metrics import wilson_interval

log = logging.getLogger("genre_classifier")


def grouped_folds(files: list[LabelledFile], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` folds of recording keys: whole recordings, each in exactly one fold, stratified by genre.

    Each genre's recordings (shuffled with ``seed``) go one by one to the fold holding the fewest
    of that genre, ties to the fold with the fewest recordings overall. DatasetError when a genre
    has fewer than 2 recordings (some fold would train without it) or there are fewer recordings
    than folds.
    """
    tracks: dict[str, list[LabelledFile]] = defaultdict(list)
    for f in files:
        tracks[f.track].append(f)
    by_genre = tracks_by_genre(tracks)
    for genre, keys in sorted(by_genre.items()):
        if len(keys) < 2:
            raise DatasetError(f"genre '{genre}' has only {len(keys)} recording: cross-validation needs at least "
                               f"2 per genre, so that every fold trains on the genre it tests")
    if len(tracks) < k:
        raise DatasetError(f"--cv {k} needs at least {k} recordings; the dataset has {len(tracks)}")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    for genre in sorted(by_genre):
        keys = sorted(by_genre[genre])
        rng.shuffle(keys)
        in_genre = [0] * k
        for key in keys:
            best = min(range(k), key=lambda i: (in_genre[i], len(folds[i]), i))
            folds[best].append(key)
            in_genre[best] += 1
    return folds


def inner_validation(files: list[LabelledFile], val_fraction: float, seed: int) -> tuple[list, list]:
    """``(train, val)`` files of one fold's training part, split by recording per genre:
    ``round(n * val_fraction)`` (at least 1) of a genre's n recordings validate, when n >= 2."""
    tracks: dict[str, list[LabelledFile]] = defaultdict(list)
    for f in files:
        tracks[f.track].append(f)
    rng = np.random.default_rng(seed)
    val_keys = set()
    for genre, keys in sorted(tracks_by_genre(tracks).items()):
        keys = sorted(keys)
        rng.shuffle(keys)
        if len(keys) >= 2:
            val_keys.update(keys[:min(len(keys) - 1, max(1, round(len(keys) * val_fraction)))])
    return [f for f in files if f.track not in val_keys], [f for f in files if f.track in val_keys]


def _fold_scores(tracks: list[TrackScores], labels: list[str]) -> dict:
    report = score_tracks(tracks, labels)
    return {"recordings": report["track"]["count"], "recording_accuracy": report["track"]["accuracy"],
            "segments": report["segment"]["count"], "segment_accuracy": report["segment"]["accuracy"]}


def summarise_cv(name: str, tracks: list[TrackScores], folds: list[dict], labels: list[str]) -> dict:
    """Pooled out-of-fold figures of one model, with the Wilson interval and the spread over folds."""
    report = score_tracks(tracks, labels)
    n = report["track"]["count"]
    correct = int(round(report["track"]["accuracy"] * n))
    low, high = wilson_interval(correct, n)
    rec = [f["recording_accuracy"] for f in folds]
    seg = [f["segment_accuracy"] for f in folds]
    return {"model": name, "recordings": n, "recordings_correct": correct,
            "recording_accuracy": report["track"]["accuracy"], "recording_wilson95": [low, high],
            "recording_fold_mean": float(np.mean(rec)), "recording_fold_std": float(np.std(rec)),
            "segments": report["segment"]["count"], "segment_accuracy": report["segment"]["accuracy"],
            "segment_fold_mean": float(np.mean(seg)), "segment_fold_std": float(np.std(seg)),
            "macro_f1": report["track"]["macro_f1"], "confusion": report["track"]["confusion"], "folds": folds}


def format_cv(report: dict) -> str:
    """The terminal table: both models, recordings and segments, with their intervals."""
    lines = [f"cross-validation: {report['k']} folds grouped by recording (no recording in two folds), "
             f"stratified by genre; {report['recordings']} recordings, each tested once",
             f"{'model':<28}{'recordings':>22}{'95 % Wilson':>16}{'folds mean+-std':>18}"
             f"{'segments':>11}{'folds mean+-std':>18}"]
    for s in report["models"]:
        low, high = s["recording_wilson95"]
        lines.append(f"{s['model']:<28}{100 * s['recording_accuracy']:>11.1f} % ({s['recordings_correct']:>3}/"
                     f"{s['recordings']:<3})  [{100 * low:5.1f}, {100 * high:5.1f}]"
                     f"{100 * s['recording_fold_mean']:>10.1f} +- {100 * s['recording_fold_std']:4.1f}"
                     f"{100 * s['segment_accuracy']:>9.1f} %{100 * s['segment_fold_mean']:>10.1f} +- "
                     f"{100 * s['segment_fold_std']:4.1f}")
    return "\n".join(lines)


def _baseline_tracks(model, part: list[LabelledFile], pooled: dict) -> list[TrackScores]:
    grouped: dict[str, TrackScores] = {}
    for f in part:
        t = grouped.setdefault(f.track, TrackScores(f.track, f.genre, [], []))
        t.files.append(f.rel)
        t.segment_probs.append(model.predict_windows(pooled[f.path]))
    for t in grouped.values():
        t.segment_probs = np.concatenate(t.segment_probs)
    return list(grouped.values())


def train_cv(config, files: list[LabelledFile], labels: list[str], feats: dict, sha1: dict, skipped: list) -> Path:
    """Cross-validate the CNN and the baseline on ``config.cv`` folds, then train the final model
    on everything; returns the model folder. ``files``/``feats``/``sha1`` as `training._load` gives them."""
    from .baseline import PooledBaseline, pooled_many
    from .data import genre_counts
    from .extract import default_workers
    from .fitting import (CV_FILE, fit, format_counts, new_model, part_tracks, prepare_out, split_json,
                          window_arrays)
    from .model import import_keras
    from .model_folder import REPORT_DIR, SPLIT_FILE, Classifier

    settings, k = config.features, config.cv
    folds = grouped_folds(files, k, config.seed)
    windows = {f.path: len(feats[f.path].windows(settings)) for f in files}
    counts = genre_counts(files, windows)
    log.info("%s", format_counts(counts))
    started = time.perf_counter()
    pooled = pooled_many([f.path for f in files], [sha1[f.path] for f in files], settings,
                         workers=config.workers or default_workers(), cache_dir=config.feature_cache)
    log.info("baseline features (pooled MFCC, spectral contrast, chroma): %.1f s", time.perf_counter() - started)
    index = {g: i for i, g in enumerate(labels)}
    keras = import_keras()
    cnn_tracks, base_tracks, cnn_folds, base_folds, best_epochs = [], [], [], [], []
    for i, test_keys in enumerate(folds):
        test_keys = set(test_keys)
        test = [f for f in files if f.track in test_keys]
        train_part, val_part = inner_validation([f for f in files if f.track not in test_keys],
                                                config.val_fraction, config.seed + i)
        log.info("fold %d/%d: train %d, validation %d, test %d recordings", i + 1, k,
                 len({f.track for f in train_part}), len({f.track for f in val_part}), len(test_keys))
        keras.backend.clear_session()
        keras.utils.set_random_seed(config.seed + i)
        model = new_model(config, len(labels))
        # No validation recording is left when every genre has one recording in the training part
        # (e.g. 2 per genre, 2 folds): the fold then trains the full --epochs.
        val_data = window_arrays(val_part, feats, labels, settings) if val_part else None
        history, _, _ = fit(keras, model, config, train_part, feats, labels, val_data)
        best_epochs.append(int(np.argmin(history["val_loss"])) + 1 if val_part else config.epochs)
        fold_cnn = part_tracks(Classifier(keras_model=model, labels=labels, settings=settings), test, feats)
        fit_files = train_part + val_part  # the baseline needs no early stopping: it uses the whole training part
        baseline = PooledBaseline(len(labels), seed=config.seed).fit(
            np.concatenate([pooled[f.path] for f in fit_files]),
            np.concatenate([[index[f.genre]] * len(pooled[f.path]) for f in fit_files]))
        fold_base = _baseline_tracks(baseline, test, pooled)
        cnn_folds.append({"fold": i + 1, "best_epoch": best_epochs[-1], **_fold_scores(fold_cnn, labels)})
        base_folds.append({"fold": i + 1, **_fold_scores(fold_base, labels)})
        log.info("fold %d/%d: CNN %.1f %% of recordings, baseline %.1f %%", i + 1, k,
                 100 * cnn_folds[-1]["recording_accuracy"], 100 * base_folds[-1]["recording_accuracy"])
        cnn_tracks += fold_cnn
        base_tracks += fold_base

    cnn_name = f"CNN (head {config.head}{', augment' if config.augment else ''})"
    report = {"k": k, "seed": config.seed, "recordings": len({f.track for f in files}),
              "interval": "95 % Wilson score interval on the pooled recording accuracy; mean +- std over folds",
              "folds": [sorted(fold) for fold in folds], "genres": counts,
              "models": [summarise_cv(cnn_name, cnn_tracks, cnn_folds, labels),
                         summarise_cv("pooled-feature baseline", base_tracks, base_folds, labels)]}
    log.info("%s", format_cv(report))

    final_epochs = max(1, int(np.median(best_epochs)))
    log.info("final model: every recording, %d epochs (the median best epoch of the folds)", final_epochs)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    model = new_model(config, len(labels))
    history, epoch_seconds, train_seconds = fit(keras, model, config, files, feats, labels, None, epochs=final_epochs)
    classifier = Classifier(keras_model=model, labels=labels, settings=settings)

    out = prepare_out(config)
    write_json_atomic(out / SPLIT_FILE, split_json(Split(train=list(files)), sha1, config.seed))
    write_json_atomic(out / CV_FILE, report)
    oof = score_tracks(cnn_tracks, labels)  # the CNN's out-of-fold predictions: every recording once
    oof.update(data=str(config.data), split=f"{k}-fold cross-validation (out of fold)", skipped=skipped)
    write_report(oof, out / REPORT_DIR, f"{config.data.name} {k}-fold CV - {config.head}")
    cnn, base = report["models"]
    metrics = {"cv": {"k": k, "recordings": report["recordings"],
                      **{f"{name}_{key}": s[key] for name, s in (("cnn", cnn), ("baseline", base))
                         for key in ("recording_accuracy", "recording_wilson95", "segment_accuracy")}}}
    training = {
        "config": config.to_json(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs_run": final_epochs, "best_epoch": final_epochs, "stopped_early": False,
        "train_seconds": round(train_seconds, 2), "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "counts": {"train": {"tracks": report["recordings"], "files": len(files), "segments": sum(windows.values())},
                   "genres": counts},
        "skipped": skipped, "history": {key: [round(float(v), 5) for v in vals] for key, vals in history.items()},
        "versions": {"keras": keras.__version__},
    }
    classifier.save(out, {"training": training, "metrics": metrics})
    log.info("out-of-fold report of the CNN:\n%s", format_report(oof))
    log.info("model (trained on every recording) saved to %s; cross-validation report: %s", out, out / CV_FILE)
    return out
