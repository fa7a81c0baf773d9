"""Shared fixtures: a generated 4-genre dataset and one model trained on it (once per session).

The feature cache goes to a temporary folder (never the user's ~/.cache).
"""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from genre_classifier.toy import make_toy_dataset  # noqa: E402

TRACKS_PER_GENRE = 12


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    old = os.environ.get("GENRE_CLASSIFIER_CACHE")
    os.environ["GENRE_CLASSIFIER_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield
    if old is None:
        os.environ.pop("GENRE_CLASSIFIER_CACHE", None)
    else:
        os.environ["GENRE_CLASSIFIER_CACHE"] = old


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """``root/<genre>/*.wav|mp3``: 4 genres x 12 tracks of 6-12 s (every 4th track an MP3)."""
    root = tmp_path_factory.mktemp("toy") / "data"
    make_toy_dataset(root, tracks_per_genre=TRACKS_PER_GENRE, seconds=(6.0, 12.0), seed=1, mp3_every=4)
    return root


@pytest.fixture(scope="session")
def trained_model(toy_data, tmp_path_factory):
    """A model trained on ``toy_data`` with the default head and augmentation (split by track: 6 train / 2 val / 4 test per genre)."""
    from genre_classifier.training import TrainConfig, train
    out = tmp_path_factory.mktemp("models") / "genre-toy"
    config = TrainConfig(data=toy_data, out=out, epochs=60, patience=10, batch_size=16,
                         val_fraction=0.2, test_fraction=0.3, seed=0, workers=2, progress=False)
    return train(config)


@pytest.fixture(scope="session")
def classifier(trained_model):
    from genre_classifier.model_folder import load_classifier
    return load_classifier(trained_model)
