"""Training end to end on generated genres, and the honesty of the evaluation."""
import json

import pytest

from genre_classifier.evaluation import EvaluateConfig, evaluate
from genre_classifier.model_folder import INFO_FILE, SPLIT_FILE, read_info
from genre_classifier.training import TrainConfig, train


def test_learns_distinct_genres_to_90_percent_of_held_out_tracks(trained_model):
    info = read_info(trained_model)
    test = info["metrics"]["test"]
    assert test["tracks"] == 16  # 4 of each genre's 12 tracks, never seen in training
    assert test["track_accuracy"] >= 0.9, test
    assert info["labels"] == ["beats", "buzz", "drone", "plucks"]
    report = json.loads((trained_model / "report" / "evaluation.json").read_text())
    assert report["track"]["accuracy"] == test["track_accuracy"]
    assert sum(map(sum, report["track"]["confusion"])) == 16
    assert (trained_model / "report" / "confusion_matrix.png").stat().st_size > 1000


def test_model_folder_records_every_feature_setting_and_the_split(trained_model):
    info = read_info(trained_model)
    assert info["features"] == {"sample_rate": 22050, "n_mfcc": 13, "n_fft": 2048, "hop_length": 512,
                                "n_mels": 128, "segment_seconds": 3.0, "min_track_seconds": 0.5,
                                "silence_dbfs": -60.0, "frames": 130}
    training = info["training"]
    # the defaults (issue 19, item 5: the "stats" head with augmentation, measured in docs/genre_classifier.md)
    assert training["config"]["head"] == "stats" and training["config"]["augment"] is True
    assert training["config"]["learning_rate"] == 1e-4
    assert len(training["epoch_seconds"]) == training["epochs_run"] >= 1
    split = json.loads((trained_model / SPLIT_FILE).read_text())
    hashes = {part: {f["sha1"] for t in split[part] for f in t["files"]} for part in ("train", "val", "test")}
    tracks = {part: {t["track"] for t in split[part]} for part in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not hashes[a] & hashes[b] and not tracks[a] & tracks[b]
    assert sum(len(t) for t in tracks.values()) == 48


def test_evaluate_leaves_out_training_tracks(trained_model, toy_data, tmp_path):
    report = evaluate(EvaluateConfig(data=toy_data, model=trained_model, out=tmp_path / "eval", progress=False))
    assert report["excluded_training_tracks"] == 32
    assert report["track"]["count"] == 16
    assert report["track"]["accuracy"] == read_info(trained_model)["metrics"]["test"]["track_accuracy"]
    assert (tmp_path / "eval" / "confusion_matrix.png").exists()
    confusion = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert confusion["labels"] == report["labels"] and len(confusion["tracks"]) == 4
    everything = evaluate(EvaluateConfig(data=toy_data, model=trained_model, out=tmp_path / "all",
                                         include_training_tracks=True, progress=False))
    assert everything["track"]["count"] == 48 and everything["excluded_training_tracks"] == 0
    # segments vs tracks: every track contributes all of its windows
    assert everything["segment"]["count"] == sum(t["windows"] for t in everything["tracks"])


def test_options_train_and_are_recorded(toy_data, tmp_path):
    """--augment, --head gap and --calibrate run end to end (a short run: this checks the plumbing)."""
    out = train(TrainConfig(data=toy_data, out=tmp_path / "m", epochs=2, head="gap", augment=True,
                            calibrate=True, val_fraction=0.2, test_fraction=0.3, workers=1, progress=False))
    info = json.loads((out / INFO_FILE).read_text())
    assert info["training"]["config"]["augment"] and info["training"]["config"]["head"] == "gap"
    assert 0.1 <= info["temperature"] <= 10 and "ece_uncalibrated" in info["metrics"]["test"]
    with pytest.raises(ValueError, match="already holds a model"):
        TrainConfig(data=toy_data, out=out)
