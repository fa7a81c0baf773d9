"""--eval-classifier auto (and evaluate's default): a dataset's own classifier first; the
genre-classifier/ folder beside several datasets only for the dataset it recorded as its training data."""
import json
from pathlib import Path

import pytest


def _classifier(folder: Path, data=None) -> Path:
    """A classifier folder's info file (what auto reads), recording ``data`` as its training data
    where `genre_classifier train` writes it (``training.config.data``, an absolute path)."""
    folder.mkdir(parents=True)
    info = {"labels": ["beats", "drone"]}
    if data is not None:
        info["training"] = {"config": {"data": str(Path(data).resolve())}, "epochs_run": 3}
    (folder / "classifier.json").write_text(json.dumps(info))
    return folder


@pytest.fixture()
def datasets(tmp_path, monkeypatch):
    """root/ds1, ds2, ds3 side by side; root/genre-classifier trained on ds1 (the demo's layout);
    ds2's own classifier in root/checkpoints/genre-ds2; ds3 has none."""
    from genre_classifier import model_folder
    root = tmp_path / "root"
    for name in ("ds1", "ds2", "ds3"):
        (root / name).mkdir(parents=True)
    _classifier(root / "genre-classifier", root / "ds1")
    _classifier(root / "checkpoints" / "genre-ds2", root / "ds2")
    monkeypatch.chdir(tmp_path)  # no checkpoints/ in the current folder
    monkeypatch.setattr(model_folder, "read_info", lambda f: {})  # a real model's check (TensorFlow) aside
    return root


def _picks(root: Path, name: str):
    """What train.py --eval-classifier auto, evaluate's default and classifier_for_dataset pick."""
    from genre_classifier.model_folder import classifier_for_dataset
    from musicgen_trainer.evaluation.evaluate_config import EvaluateConfig, find_classifier
    from musicgen_trainer.train_eval import resolve_classifier
    data = root / name
    found = classifier_for_dataset(data)
    assert resolve_classifier("auto", str(data)) == found
    assert find_classifier(EvaluateConfig(model="m", out="o"), data)[0] == found
    return found


def test_each_dataset_gets_its_own_classifier_not_the_shared_folder(datasets, capsys):
    assert _picks(datasets, "ds2") == datasets / "checkpoints" / "genre-ds2"      # its own, not ds1's
    assert _picks(datasets, "ds1") == datasets / "genre-classifier"               # the shared folder is ds1's
    capsys.readouterr()
    assert _picks(datasets, "ds3") is None                                        # nothing of its own
    err = capsys.readouterr().err
    assert "genre-classifier is skipped" in err and "does not record" in err
    from musicgen_trainer.evaluation.evaluate_config import EvaluateConfig, find_classifier
    note = find_classifier(EvaluateConfig(model="m", out="o"), datasets / "ds3")[1]
    assert "\n" not in note and str(datasets / "checkpoints" / "genre-ds3") in note


def test_the_own_classifier_wins_over_the_shared_folder_and_a_shared_folder_without_a_record_is_nobodys(datasets):
    own = _classifier(datasets / "checkpoints" / "genre-ds1", datasets / "ds1")
    assert _picks(datasets, "ds1") == own
    (datasets / "genre-classifier" / "classifier.json").write_text(json.dumps({"labels": ["beats", "drone"]}))
    (own / "classifier.json").unlink()
    assert _picks(datasets, "ds1") is None


def test_the_owner_check_reads_where_train_records_the_data(datasets):
    """`genre_classifier train` records its data under training.config (classifier.json): the owner
    check (auto's, and the Tag tab's refusal of another dataset's folder) reads it there."""
    from genre_classifier.model_folder import other_datasets_classifier, trained_on
    shared = datasets / "genre-classifier"
    assert trained_on(shared, datasets / "ds1") and not trained_on(shared, datasets / "ds2")
    assert other_datasets_classifier(shared, datasets / "ds2") == str((datasets / "ds1").resolve())
    assert other_datasets_classifier(shared, datasets / "ds1") is None
