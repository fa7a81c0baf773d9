"""``train --cv K`` (issue 19, item 5): folds of whole recordings, the baseline on the same folds,
the final model trained on everything."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from genre_classifier.cross_validation import grouped_folds, inner_validation
from genre_classifier.data import DatasetError, LabelledFile
from genre_classifier.metrics import wilson_interval


def _files(recordings: dict, segments=(1, 4)):
    """Each recording has 1..4 segment files, like prepared 30 s segments of a long track."""
    files = []
    for genre, n in recordings.items():
        for t in range(n):
            for s in range(segments[0] + t % segments[1]):
                rel = f"{genre}/t{t}__{s:03d}.wav"
                files.append(LabelledFile(Path("/d") / rel, rel, genre, f"source:{genre}/t{t}.mp3"))
    return files


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (5, 2), (5, 3)])
def test_no_recording_in_two_folds_and_folds_are_stratified(k, seed):
    files = _files({"rock": 7, "jazz": 12, "folk": 3, "metal": 20})
    folds = grouped_folds(files, k, seed)
    keys = [key for fold in folds for key in fold]
    assert Counter(keys) == Counter({f.track for f in files}) and len(keys) == len(set(keys))  # each exactly once
    genre_of = {f.track: f.genre for f in files}
    for genre in ("rock", "jazz", "folk", "metal"):
        per_fold = [sum(genre_of[key] == genre for key in fold) for fold in folds]
        assert max(per_fold) - min(per_fold) <= 1, (genre, per_fold)
    # the inner validation set of a fold is made of whole recordings of that fold's training part
    rest = [f for f in files if f.track not in set(folds[0])]
    train, val = inner_validation(rest, 0.2, seed)
    assert val and not {f.track for f in train} & {f.track for f in val}
    assert {f.track for f in train + val} == {f.track for f in rest}


def test_too_few_recordings_for_cv_are_refused():
    with pytest.raises(DatasetError, match="genre 'jazz' has only 1 recording"):
        grouped_folds(_files({"rock": 5, "jazz": 1}), 2)
    with pytest.raises(DatasetError, match="--cv 5 needs at least 5 recordings"):
        grouped_folds(_files({"rock": 2, "jazz": 2}), 5)


def test_wilson_interval():
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-3)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)


def test_cv_report_has_the_baseline_on_the_same_folds(tmp_path, caplog):
    from genre_classifier.toy import make_toy_dataset
    from genre_classifier.training import TrainConfig, train
    make_toy_dataset(tmp_path / "data", genres=("drone", "beats"), tracks_per_genre=4, seconds=(3.5, 4.5), seed=5)
    with caplog.at_level("INFO", logger="genre_classifier"):
        out = train(TrainConfig(data=tmp_path / "data", out=tmp_path / "m", cv=2, epochs=2, batch_size=8,
                                workers=1, progress=False))
    cv = json.loads((out / "cv.json").read_text())
    assert cv["k"] == 2 and cv["recordings"] == 8
    tested = [key for fold in cv["folds"] for key in fold]
    assert sorted(tested) == sorted(set(tested)) and len(tested) == 8  # every recording tested once
    cnn, base = cv["models"]
    assert base["model"] == "pooled-feature baseline"
    for model in (cnn, base):
        assert model["recordings"] == 8 and 0 <= model["recording_accuracy"] <= 1
        low, high = model["recording_wilson95"]
        assert low <= model["recording_accuracy"] <= high
    # the same folds: fold by fold, both models scored the same recordings and windows
    assert [(f["recordings"], f["segments"]) for f in cnn["folds"]] == \
           [(f["recordings"], f["segments"]) for f in base["folds"]] == \
           [(len(fold), f["segments"]) for fold, f in zip(cv["folds"], cnn["folds"])]
    assert "pooled-feature baseline" in caplog.text and "95 % Wilson" in caplog.text
    # the final model is trained on everything
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 8 and not split["val"] and not split["test"]
    info = json.loads((out / "classifier.json").read_text())
    assert info["metrics"]["cv"]["baseline_recording_accuracy"] == base["recording_accuracy"]
    from genre_classifier.model_folder import load_classifier
    probs = load_classifier(out).predict_windows(np.zeros((1, 130, 13, 1), np.float32))
    assert probs.shape == (1, 2)


def test_cv_with_no_validation_recording_left_trains_the_full_epochs(tmp_path):
    """2 recordings per genre, 2 folds: each fold's training part has one recording per genre and
    none to validate on."""
    from genre_classifier.toy import make_toy_dataset
    from genre_classifier.training import TrainConfig, train
    make_toy_dataset(tmp_path / "data", genres=("drone", "beats"), tracks_per_genre=2, seconds=(3.5, 4.0), seed=6)
    out = train(TrainConfig(data=tmp_path / "data", out=tmp_path / "m", cv=2, epochs=2, batch_size=8,
                            workers=1, progress=False))
    cv = json.loads((out / "cv.json").read_text())
    assert cv["recordings"] == 4 and [f["best_epoch"] for f in cv["models"][0]["folds"]] == [2, 2]
