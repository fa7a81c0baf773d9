"""A trained classifier on disk, and in memory (`Classifier`).

Folder layout (everything prediction needs, so it never guesses a setting)::

    model.keras        the Keras model (architecture + weights)
    classifier.json    format_version, labels, feature settings, temperature, training config,
                       test metrics; written last, so a half-written folder is never loadable
    split.json         which tracks (and file SHA-1s) went to train / val / test
    report/            the test-split evaluation: evaluation.json, confusion_matrix.png

`read_info` validates ``classifier.json`` without importing TensorFlow, so commands can fail
fast on a bad folder; `load_classifier` also loads and checks the Keras model.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataset_tools.atomic import write_json_atomic

from .features import FeatureSettings, TrackFeatures

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
INFO_FILE = "classifier.json"
SPLIT_FILE = "split.json"
REPORT_DIR = "report"
REQUIRED_KEYS = ("format_version", "labels", "features")
PREDICT_BATCH = 1024  # windows per forward pass: large enough to amortise the call overhead


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete, or from another version; ``str()`` says which."""


# Where the tools look for the classifier of a dataset DATA when none is named (train.py's
# --eval-classifier auto, musicgen_trainer evaluate), in order: the dataset's own, `train`'s usual
# --out (checkpoints/genre-<DATA name>) beside the dataset and in the current folder; then the
# demo's layout, a genre-classifier/ beside the dataset, which every dataset in that folder shares:
# taken only when it records that very dataset as its training data (SHARED_PLACE).
CLASSIFIER_PLACES = ("{parent}/checkpoints/genre-{name}", "checkpoints/genre-{name}", "{parent}/genre-classifier")
SHARED_PLACE = "{parent}/genre-classifier"


def classifier_for_dataset(data) -> "Path | None":
    """The first of ``CLASSIFIER_PLACES`` that holds a classifier's info file for the dataset
    folder ``data`` (a ``data.jsonl`` stands for its folder), as a path relative the way ``data``
    was typed; None when there is none. A place named after the dataset (``checkpoints/genre-ds``,
    which ``a/ds`` and ``b/ds`` share) whose classifier records another dataset
    (``other_datasets_classifier``) is skipped with a one-line note; ``genre-classifier/`` beside the
    dataset, shared by every dataset there, is used only when its classifier records this dataset
    as its training data (``trained_on``: the demo trains it on its dataset), else skipped with a
    note. Reads file names and the info files' recorded training data only."""
    data = Path(data)
    data = data if data.suffix != ".jsonl" else data.parent
    name = data.resolve().name
    parent = data.parent if data.name else data.resolve().parent  # "dataset" -> ".", shown as typed
    for place in CLASSIFIER_PLACES:
        folder = Path(place.format(parent=parent, name=name))
        if not (folder / INFO_FILE).is_file():
            continue
        if place == SHARED_PLACE:
            if trained_on(folder, data):
                return folder
            print(f"note: {folder} is skipped: it is shared by the datasets beside it and does not record "
                  f"{data} as its training data (train one with --out {parent / 'checkpoints' / f'genre-{name}'})",
                  file=sys.stderr)
            continue
        other = other_datasets_classifier(folder, data)
        if other is None:
            return folder
        print(f"note: {folder} is skipped: it holds the classifier of another dataset ({other})",
              file=sys.stderr)
    return None


def trained_on(folder, data) -> bool:
    """Whether the classifier in ``folder`` records the dataset folder ``data`` as its training
    data (its ``classifier.json``'s ``training.config.data``, an absolute path, the same real folder: links
    resolved, a ``data.jsonl`` standing for its folder). No record, a relative one or an unreadable
    info file: False."""
    recorded = _recorded_data(folder)
    return recorded is not None and os.path.exists(recorded) and _real(recorded) == _real(data)


def _recorded_data(folder) -> "str | None":
    """The absolute training data of ``folder``'s ``classifier.json`` (``training.config.data``, where
    `train` writes it; a top-level ``config.data`` too); None when it has none."""
    try:
        with open(Path(folder) / INFO_FILE, encoding="utf-8") as f:
            info = json.loads(f.read(1 << 20))  # ours are a few KB
    except (OSError, ValueError):
        return None
    info = info if isinstance(info, dict) else {}
    training = info.get("training") if isinstance(info.get("training"), dict) else {}
    config = training.get("config") if isinstance(training.get("config"), dict) else info.get("config")
    recorded = config.get("data") if isinstance(config, dict) else None
    if not isinstance(recorded, str) or not recorded or "\x00" in recorded or not os.path.isabs(recorded):
        return None
    return recorded


def _real(path) -> str:
    path = Path(path)
    return os.path.realpath(path.parent if path.suffix == ".jsonl" else path)


def other_datasets_classifier(folder, data) -> "str | None":
    """The dataset the classifier in ``folder`` was trained on (``_recorded_data``) when that is
    another dataset than the folder ``data`` (both compared as real paths, links resolved), else
    None. Classifiers are found by the dataset's folder name, so ``a/ds`` and ``b/ds`` share
    ``checkpoints/genre-ds``: this check keeps each from using (or replacing) the other's. A relative record (typed in some other working folder), one that no
    longer exists (the project was moved), none, or an unreadable info file says nothing: None."""
    recorded = _recorded_data(folder)
    if recorded is None or not os.path.exists(recorded) or _real(recorded) == _real(data):
        return None
    return recorded


def read_info(folder) -> dict:
    """Validated ``classifier.json`` of a model folder (no TensorFlow needed)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    info_file, model_file = folder / INFO_FILE, folder / MODEL_FILE
    if not info_file.is_file():
        what = "an unfinished training run or not a genre classifier folder" if model_file.exists() \
            else "not a genre classifier folder"
        raise ModelFolderError(f"{folder} has no {INFO_FILE} ({what}); train one with "
                               f"`python -m genre_classifier train DATA --out {folder}`")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{info_file} is unreadable ({err})") from None
    if not isinstance(info, dict):
        raise ModelFolderError(f"{info_file} is not a classifier description")
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise ModelFolderError(f"{info_file} lacks {', '.join(missing)}: it was written by another "
                               f"version of this tool or edited; retrain the model")
    if info["format_version"] != FORMAT_VERSION:
        raise ModelFolderError(f"{folder} is model format {info['format_version']!r}, but this version of "
                               f"genre_classifier reads format {FORMAT_VERSION}; retrain the model with "
                               f"this version (or use the version that wrote it)")
    labels = info["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ModelFolderError(f"{info_file} has no valid label list (need >= 2 genre names)")
    from .filing import check_genre_folder
    try:  # a label names the folder `tag --apply` files a track into: never a path
        for label in labels:
            check_genre_folder(label)
    except ValueError as err:
        raise ModelFolderError(f"{info_file} has a label that is not a genre folder name ({err})") from None
    try:
        FeatureSettings.from_dict(info["features"])
    except KeyError as err:
        raise ModelFolderError(f"{info_file} lacks feature settings ({err.args[0]}); the features cannot be "
                               f"reproduced without them, so retrain the model") from None
    except (TypeError, ValueError) as err:
        raise ModelFolderError(f"{info_file} has invalid feature settings ({err})") from None
    if not model_file.is_file():
        raise ModelFolderError(f"{folder} has {INFO_FILE} but no {MODEL_FILE}; copy the whole folder")
    if not os.access(model_file, os.R_OK):
        raise ModelFolderError(f"{model_file} is not readable (permissions)")
    # A .keras file is a zip archive. Keras calls one it cannot open "File not found", which
    # sends the user looking for a file that is right there.
    if not zipfile.is_zipfile(model_file):
        raise _damaged(model_file)
    return info


def _damaged(model_file: Path) -> ModelFolderError:
    return ModelFolderError(f"{model_file} is damaged (truncated or overwritten, not a complete Keras "
                            f"model file); copy the whole model folder again or retrain")


@dataclass
class Classifier:
    """A loaded model with its labels and feature settings."""
    keras_model: object
    labels: list[str]
    settings: FeatureSettings
    temperature: float = 1.0
    info: dict = field(default_factory=dict)
    folder: Path | None = None

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """``[n, frames, n_mfcc]`` -> ``[n, n_labels]`` probabilities (temperature applied)."""
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim == 3:
            windows = windows[..., None]
        if windows.shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        chunks = [np.asarray(self.keras_model.predict_on_batch(windows[i:i + PREDICT_BATCH]))
                  for i in range(0, windows.shape[0], PREDICT_BATCH)]
        return apply_temperature(np.concatenate(chunks).astype(np.float32), self.temperature)

    def predict_track(self, features: TrackFeatures) -> np.ndarray:
        """``[n_labels]``: the mean of the track's window probabilities."""
        return self.predict_windows(features.windows(self.settings)).mean(axis=0)

    def save(self, folder, extra: dict | None = None) -> Path:
        """Write ``model.keras`` then ``classifier.json`` (last: it marks the folder complete)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INFO_FILE).unlink(missing_ok=True)  # an interrupted re-save must not look complete
        self.keras_model.save(folder / MODEL_FILE)
        info = {**(extra or {}), "format_version": FORMAT_VERSION, "labels": list(self.labels),
                "features": self.settings.to_dict(), "temperature": float(self.temperature)}
        write_json_atomic(folder / INFO_FILE, info)
        self.info, self.folder = info, folder
        return folder


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scale softmax outputs: softmax(log(p) / T), the same as scaling the logits."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=-1, keepdims=True)).astype(np.float32)


def load_classifier(folder) -> Classifier:
    """Load a model folder; ModelFolderError with a clear reason if it is unusable."""
    info = read_info(folder)
    folder = Path(folder).expanduser()
    settings = FeatureSettings.from_dict(info["features"])
    from .model import import_keras, time_stats_layer
    keras = import_keras()
    time_stats_layer()  # registers the "stats" head's layer, so its models deserialise
    try:
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    except (zipfile.BadZipFile, zlib.error, EOFError):  # a zip whose contents are corrupt
        raise _damaged(folder / MODEL_FILE) from None
    except Exception as err:
        raise ModelFolderError(f"cannot load {folder / MODEL_FILE} ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'no details'})") from None
    expected_in = (settings.frames, settings.n_mfcc, 1)
    if tuple(model.input_shape[1:]) != expected_in:
        raise ModelFolderError(f"{folder / MODEL_FILE} expects input {tuple(model.input_shape[1:])}, but its "
                               f"feature settings give {expected_in}; the folder is inconsistent")
    if model.output_shape[-1] != len(info["labels"]):
        raise ModelFolderError(f"{folder / MODEL_FILE} has {model.output_shape[-1]} outputs but "
                               f"{len(info['labels'])} labels; the folder is inconsistent")
    return Classifier(keras_model=model, labels=list(info["labels"]), settings=settings,
                      temperature=float(info.get("temperature", 1.0)), info=info, folder=folder)
