"""Model folders: save/load gives identical predictions; unusable folders give clear errors."""
import json
import os
import shutil

import numpy as np
import pytest

from genre_classifier.features import FeatureSettings
from genre_classifier.model import build_model
from genre_classifier.model_folder import (
    FORMAT_VERSION, INFO_FILE, MODEL_FILE, Classifier, ModelFolderError, apply_temperature, load_classifier,
    read_info,
)


def _windows(n=7, seed=0):
    return np.random.default_rng(seed).normal(-20, 40, size=(n, 130, 13)).astype(np.float32)


def test_architecture_matches_the_baseline():
    model = build_model(130, 13, 4)
    assert model.input_shape == (None, 130, 13, 1) and model.output_shape == (None, 4)
    convs = [(layer.filters, layer.kernel_size) for layer in model.layers if layer.name.startswith("conv")]
    assert convs == [(64, (3, 3)), (32, (3, 3)), (32, (2, 2)), (16, (1, 1))]
    names = [layer.name for layer in model.layers]
    assert names.count("bn1") == 1 and "flatten" in names and "dropout" in names
    assert model.get_layer("dense").units == 64 and model.get_layer("dropout").rate == 0.3
    assert "flatten" not in [layer.name for layer in build_model(130, 13, 4, head="gap").layers]


def test_save_load_gives_identical_predictions(tmp_path):
    clf = Classifier(build_model(130, 13, 3), ["a", "b", "c"], FeatureSettings(), temperature=1.7)
    before = clf.predict_windows(_windows())
    clf.save(tmp_path / "m", {"training": {"note": "test"}})
    loaded = load_classifier(tmp_path / "m")
    assert loaded.labels == ["a", "b", "c"] and loaded.temperature == 1.7
    assert loaded.settings == FeatureSettings()
    np.testing.assert_array_equal(loaded.predict_windows(_windows()), before)


def test_trained_model_round_trip(classifier, tmp_path):
    windows = _windows(40, seed=1)
    first = classifier.predict_windows(windows)
    classifier.save(tmp_path / "copy")
    np.testing.assert_array_equal(load_classifier(tmp_path / "copy").predict_windows(windows), first)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)


def test_temperature_keeps_ranking_and_flattens():
    p = np.array([[0.7, 0.2, 0.1]], np.float32)
    hot = apply_temperature(p, 2.0)
    assert hot.argmax() == 0 and hot.max() < 0.7 and hot.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(apply_temperature(p, 1.0), p)


@pytest.fixture
def good_folder(tmp_path):
    clf = Classifier(build_model(130, 13, 2), ["x", "y"], FeatureSettings())
    return clf.save(tmp_path / "good")


def _edit_info(folder, change):
    info = json.loads((folder / INFO_FILE).read_text())
    change(info)
    (folder / INFO_FILE).write_text(json.dumps(info))


def test_missing_folder_and_files(tmp_path, good_folder):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        read_info(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no classifier.json"):
        read_info(tmp_path / "empty")
    (good_folder / MODEL_FILE).unlink()
    with pytest.raises(ModelFolderError, match="no model.keras"):
        read_info(good_folder)


def test_other_format_version(good_folder):
    _edit_info(good_folder, lambda i: i.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFolderError, match="format .* retrain"):
        load_classifier(good_folder)


def test_missing_feature_settings(good_folder):
    _edit_info(good_folder, lambda i: i["features"].pop("n_fft"))
    with pytest.raises(ModelFolderError, match="lacks feature settings \\(n_fft\\)"):
        load_classifier(good_folder)
    _edit_info(good_folder, lambda i: i.pop("features"))
    with pytest.raises(ModelFolderError, match="lacks features"):
        read_info(good_folder)


def test_inconsistent_labels_or_shapes(good_folder, tmp_path):
    _edit_info(good_folder, lambda i: i.update(labels=["x", "y", "z"]))
    with pytest.raises(ModelFolderError, match="3 labels"):
        load_classifier(good_folder)
    other = tmp_path / "other"
    shutil.copytree(good_folder, other)
    _edit_info(other, lambda i: i.update(labels=["x", "y"]) or i["features"].update(segment_seconds=5.0, frames=216))
    with pytest.raises(ModelFolderError, match="expects input"):
        load_classifier(other)


@pytest.mark.parametrize("label", ["../../outside/evil", "/tmp/evil", "..", ".hidden", "-x", "a/b", "a\\b", ""])
def test_a_label_must_be_one_plain_folder_name(good_folder, label):
    """`tag --apply` files a track into INTO/<label>: a crafted classifier.json must not name a path."""
    _edit_info(good_folder, lambda i: i.update(labels=["x", label]))
    with pytest.raises(ModelFolderError, match="not a genre folder name"):
        read_info(good_folder)


def test_the_filer_never_files_outside_its_folder(tmp_path):
    from genre_classifier.filing import Filer
    into, unknown = tmp_path / "data", tmp_path / "data" / "unknown"
    unknown.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", into / "linked")  # a genre folder that is a link out
    track = unknown / "t1.wav"
    track.write_bytes(b"RIFF")
    filer = Filer(into, move=True, source_roots=[unknown, into])
    for genre in ("../outside", "../../outside/evil", str(tmp_path / "outside"), "linked", ".x", "a/b"):
        with pytest.raises(ValueError):
            filer.file(track, genre)
        with pytest.raises(ValueError):
            filer.plan(track, genre, set())
    filer.close()
    assert track.read_bytes() == b"RIFF" and os.listdir(tmp_path / "outside") == []


def test_stats_head_pools_each_coefficient_over_time():
    """head="stats" (issue 19, item 5): the input's per-coefficient mean and std over the window
    join the pooled convolution features."""
    from genre_classifier.model import time_stats_layer
    model = build_model(130, 13, 4, head="stats")
    assert model.output_shape == (None, 4) and "flatten" not in [layer.name for layer in model.layers]
    assert model.get_layer("pool_global").output.shape[-1] == 16 + 16 + 2 * 13
    x = _windows(3, seed=2)
    stats = np.asarray(time_stats_layer()()(x[..., None]))
    np.testing.assert_allclose(stats[:, :13], x.mean(axis=1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(stats[:, 13:], x.std(axis=1), rtol=1e-4, atol=1e-3)


def test_stats_head_model_loads_in_a_fresh_process(tmp_path):
    """Its custom layer is registered by load_classifier itself (the CLI never builds a model
    before loading one), and loads in Keras' safe mode."""
    import subprocess
    import sys
    clf = Classifier(build_model(130, 13, 3, head="stats"), ["a", "b", "c"], FeatureSettings())
    np.save(tmp_path / "x.npy", _windows())
    np.save(tmp_path / "p.npy", clf.predict_windows(_windows()))
    clf.save(tmp_path / "m")
    code = ("import numpy as np, sys; from genre_classifier.model_folder import load_classifier; "
            "d = sys.argv[1]; p = load_classifier(d + '/m').predict_windows(np.load(d + '/x.npy')); "
            "np.testing.assert_allclose(p, np.load(d + '/p.npy'), rtol=1e-5, atol=1e-6)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
