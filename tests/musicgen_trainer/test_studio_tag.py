"""The studio's Tag tab: the classifier job's command line, the proposals for unknown/ and the filing
of the accepted tracks only (the CLI's Filer: nothing overwritten, captions and manifests updated);
the same through the page's API; nothing outside the roots. (Training the classifier for real
runs in the browser test, test_studio_data.py.)"""
import json
import os
import sys

import pytest
from studio_helpers import prepared

from musicgen_trainer.app import jobs
from musicgen_trainer.app import studio_tag as stg
from musicgen_trainer.app.paths import OutsideRootError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("tag")
    prepared(base / "data")
    return base / "data"


@pytest.fixture
def roots(pristine, tmp_path):
    """(data root, checkpoints root) with a dry run's proposals for lib-prepared/unknown/ (no TensorFlow)."""
    import shutil
    shutil.copytree(pristine, tmp_path / "data", symlinks=True)
    (tmp_path / "outside").mkdir()
    checkpoints = tmp_path / "checkpoints"
    folder = checkpoints / "genre-lib-prepared"
    folder.mkdir(parents=True)
    rows = [{"file": "mystery 0.wav", "track": "unknown/mystery 0.wav", "status": "tagged", "genre": "drone",
             "predicted": "drone", "confidence": 0.91, "top3": "drone 0.91, beats 0.09", "duration_s": 4.0,
             "action": "dry run", "destination": "", "note": ""},
            {"file": "mystery 1.wav", "track": "unknown/mystery 1.wav", "status": "unknown", "genre": "unknown",
             "predicted": "beats", "confidence": 0.55, "top3": "beats 0.55, drone 0.45", "duration_s": 4.0,
             "action": "left in place", "destination": "", "note": "confidence 0.55 < 0.6"},
            {"file": "../../../outside/x.wav", "track": "crafted", "status": "tagged", "genre": "beats",
             "predicted": "beats", "confidence": 0.99, "top3": "", "duration_s": 1.0, "action": "dry run",
             "destination": "", "note": ""}]
    (tmp_path / "outside" / "x.wav").write_bytes(b"RIFF")
    (folder / "proposals.json").write_text(json.dumps({"rows": rows}))
    (folder / "classifier.json").write_text(json.dumps({"labels": ["beats", "drone"]}))  # the genres it knows
    return tmp_path / "data", checkpoints


def test_the_classifier_job_is_genre_classifiers_own_command_line(roots, monkeypatch):
    """The flags from the page parse back (with genre_classifier's parser) to the page's values; the
    model goes where classifier_for_dataset (train.py --eval-classifier auto) finds it."""
    from genre_classifier.__main__ import build_parser
    from genre_classifier.model_folder import CLASSIFIER_PLACES
    root, checkpoints = roots
    started = {}
    monkeypatch.setattr(jobs, "start_job", lambda kind, argv, folder, **kw: started.update(kind=kind, argv=argv,
                                                                                               folder=folder))
    stg.start_classifier(root, checkpoints, "lib-prepared", {"epochs": 3.0, "val_fraction": "0.34", "head": "gap",
                                                             "augment": True, "patience": 2})
    assert started["kind"] == "classifier" and started["argv"][:4] == [sys.executable, "-m", "genre_classifier", "train"]
    args = build_parser().parse_args(started["argv"][3:])
    assert (args.epochs, args.val_fraction, args.head, args.augment, args.patience, args.overwrite) == \
        (3, 0.34, "gap", True, 2, True)
    assert args.data == (root / "lib-prepared").resolve() and started["folder"] == args.out
    assert args.out == (checkpoints / "genre-lib-prepared").resolve()
    assert "checkpoints/genre-{name}" in CLASSIFIER_PLACES and args.out.name == "genre-lib-prepared"
    with pytest.raises(ValueError, match="leave at least 20 %"):
        stg.start_classifier(root, checkpoints, "lib-prepared", {"val_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(ValueError, match="Epochs must be a whole number"):
        stg.start_classifier(root, checkpoints, "lib-prepared", {"epochs": 2.5})
    with pytest.raises(ValueError, match="not an option of the page: out"):
        stg.start_classifier(root, checkpoints, "lib-prepared", {"out": "/tmp/x"})
    for dataset in ("../outside", "/tmp", "lib"):  # outside the root, or not a prepared dataset
        with pytest.raises(ValueError):
            stg.start_classifier(root, checkpoints, dataset, {})


def test_proposals_need_a_trained_classifier(roots):
    root, checkpoints = roots
    (checkpoints / "genre-lib-prepared" / "classifier.json").unlink()
    with pytest.raises(ValueError, match="has no classifier.json"):
        stg.start_proposals(root, checkpoints, "lib-prepared", 0.6)


def test_proposals_are_offered_per_track_and_only_accepted_ones_are_filed(roots):
    root, checkpoints = roots
    data = root / "lib-prepared"
    offered = stg.pending(stg.load_proposals(root, checkpoints, "lib-prepared"))
    assert [(p.track, p.genre, p.above_threshold) for p in offered] == [
        ("crafted", "beats", True), ("unknown/mystery 0.wav", "drone", True), ("unknown/mystery 1.wav", "beats", False)]
    assert offered[1].label() == "unknown/mystery 0.wav -> drone (0.91)"
    rate, samples = stg.proposal_audio(root, checkpoints, "lib-prepared", "unknown/mystery 1.wav")
    assert rate == 44100 and len(samples) == 4 * 44100
    (data / "drone" / "mystery 0.wav").write_bytes(b"the user's own file")  # never overwritten
    summary = stg.apply_proposals(root, checkpoints, "lib-prepared", ["unknown/mystery 0.wav"], "move")
    assert summary == "1 track(s) accepted: 1 file(s) moved into their genre folders"
    assert (data / "drone" / "mystery 0.wav").read_bytes() == b"the user's own file"
    filed = data / "drone" / "mystery 0-1.wav"
    assert filed.is_file() and not (data / "unknown" / "mystery 0.wav").exists()
    assert filed.with_suffix(".txt").read_text().startswith("Drone music, ")  # the caption names its genre
    assert json.loads(filed.with_suffix(".json").read_text())["genre"] == "drone"
    manifest = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    assert {"path": "drone/mystery 0-1.wav", "genre": "drone"}.items() <= \
        next(r for r in manifest if r["path"] == "drone/mystery 0-1.wav").items()
    assert (data / "unknown" / "mystery 1.wav").is_file()  # rejected: left in place
    assert [p.track for p in stg.pending(stg.load_proposals(root, checkpoints, "lib-prepared"))] == \
        ["crafted", "unknown/mystery 1.wav"]  # the filed track is not offered again


def test_applying_refuses_unknown_tracks_crafted_paths_and_running_jobs(roots):
    root, checkpoints = roots
    with pytest.raises(ValueError, match="not one of the proposed tracks"):
        stg.apply_proposals(root, checkpoints, "lib-prepared", ["unknown/../../x.wav"])
    with pytest.raises(ValueError, match="accept at least one"):
        stg.apply_proposals(root, checkpoints, "lib-prepared", [])
    with pytest.raises(ValueError, match="apply must be one of"):
        stg.apply_proposals(root, checkpoints, "lib-prepared", ["crafted"], "delete")
    summary = stg.apply_proposals(root, checkpoints, "lib-prepared", ["crafted"])  # its file lies outside
    assert summary.endswith("0 file(s) moved into their genre folders, 1 could not be filed")
    assert (root.parent / "outside" / "x.wav").read_bytes() == b"RIFF"
    assert not (root / "lib-prepared" / "beats" / "x.wav").exists()
    with pytest.raises(OutsideRootError):
        stg.apply_proposals(root, checkpoints, "../outside", ["crafted"])
    folder = checkpoints / "genre-lib-prepared"
    assert stg.running_classifier(root, checkpoints) is None
    jobs.start_job("tag", [sys.executable, "-c", "import time; time.sleep(30)"], folder)
    try:
        assert stg.running_classifier(root, checkpoints) == "lib-prepared"  # a reloaded page follows it
        assert stg.classifier_view(root, checkpoints, "lib-prepared").running
        with pytest.raises(ValueError, match="tag is running"):
            stg.apply_proposals(root, checkpoints, "lib-prepared", ["unknown/mystery 0.wav"])
    finally:
        jobs.stop_job(folder, force=True)
        jobs.wait_job(folder, timeout=30)
    assert (root / "lib-prepared" / "unknown" / "mystery 0.wav").is_file()


def test_a_crafted_predicted_genre_is_never_filed(roots):
    """proposals.json is a file in a folder anyone may copy in: a "predicted" genre that is not one of
    the classifier's labels (a path such as ../../outside/evil, or an absolute one) is not offered,
    and applying it moves nothing."""
    root, checkpoints = roots
    data = root / "lib-prepared"
    path = checkpoints / "genre-lib-prepared" / "proposals.json"
    rows = json.loads(path.read_text())["rows"]
    for row, genre in zip(rows[:2], ("../../../outside/evil", str(root.parent / "outside" / "abs"))):
        row["predicted"] = genre
    path.write_text(json.dumps({"rows": rows}))
    assert [p.track for p in stg.load_proposals(root, checkpoints, "lib-prepared")] == ["crafted"]
    with pytest.raises(ValueError, match="not one of the proposed tracks"):
        stg.apply_proposals(root, checkpoints, "lib-prepared", ["unknown/mystery 0.wav"])
    # a crafted label in the classifier's own record is refused too
    (checkpoints / "genre-lib-prepared" / "classifier.json").write_text(
        json.dumps({"labels": ["beats", "../../../outside/evil"]}))
    assert stg.load_proposals(root, checkpoints, "lib-prepared") == []
    assert sorted(os.listdir(root.parent / "outside")) == ["x.wav"]
    assert (data / "unknown" / "mystery 0.wav").is_file()


def test_the_classifier_folder_is_never_a_runs(roots, monkeypatch):
    """Training never replaces a fine-tuning run's or an export's folder."""
    root, checkpoints = roots
    assert stg.classifier_name("lib-prepared") == "genre-lib-prepared"
    monkeypatch.setattr(jobs, "start_job", lambda *a, **kw: pytest.fail("started"))
    for marker in ("run.json", "export_info.json"):
        (checkpoints / "genre-lib-prepared" / marker).write_text("{}")
        with pytest.raises(ValueError, match="holds a training run or an export"):
            stg.start_classifier(root, checkpoints, "lib-prepared", {})
        (checkpoints / "genre-lib-prepared" / marker).unlink()


def test_a_nested_datasets_classifier_is_the_one_train_auto_finds(roots, monkeypatch):
    """The Tag tab's classifier of a nested dataset (a/ds) is where train.py's --eval-classifier auto
    (and evaluate) look: one naming rule. A second dataset of the same folder name (b/ds) neither
    replaces nor uses it (one line), while a/ds itself retrains into it."""
    import shutil

    from genre_classifier import model_folder
    from musicgen_trainer.train_eval import resolve_classifier
    root, checkpoints = roots
    for parent in ("a", "b"):
        (root / parent).mkdir()
        shutil.copytree(root / "lib-prepared", root / parent / "ds", symlinks=True)
    assert stg.classifier_name("a/ds") == stg.classifier_name("b/ds") == "genre-ds"
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, argv, folder, **kw: started.append(argv))
    stg.start_classifier(root, checkpoints, "a/ds", {})
    out = started[-1][started[-1].index("--out") + 1]
    # what `genre_classifier train` writes there at the end (classifier.json, with the data it trained on)
    folder = stg.classifier_folder(checkpoints, "a/ds", root=root)
    assert str(folder) == out
    folder.mkdir()
    (folder / "classifier.json").write_text(json.dumps({"labels": ["beats", "drone"],
                                                        "config": {"data": started[-1][4]}}))
    monkeypatch.chdir(checkpoints.parent)  # train.py runs where checkpoints/ is (the studio: the project)
    data = root / "a" / "ds"
    assert model_folder.classifier_for_dataset(data).resolve() == folder
    monkeypatch.setattr(model_folder, "read_info", lambda f: {})  # a real model's check (TensorFlow) aside
    assert resolve_classifier("auto", str(data)).resolve() == folder
    stg.start_classifier(root, checkpoints, "a/ds", {})  # a/ds retrains its own
    assert len(started) == 2
    for call in (lambda: stg.start_classifier(root, checkpoints, "b/ds", {}),
                 lambda: stg.start_proposals(root, checkpoints, "b/ds", 0.5)):
        with pytest.raises(ValueError, match="another dataset folder named 'ds'") as err:
            call()
        assert "\n" not in str(err.value) and str(root) not in str(err.value)
    assert len(started) == 2 and stg.load_proposals(root, checkpoints, "b/ds") == []
    assert stg.classifier_view(root, checkpoints, "b/ds").state == "none"
    # The Train tab names it outright (its job runs in the project folder, which need not hold the
    # app's checkpoints/); b/ds's runs check genres with no classifier rather than a/ds's.
    from musicgen_trainer.app import studio_train as st
    from musicgen_trainer.app.page import App
    app = App(checkpoints=str(checkpoints), out=str(checkpoints.parent / "out"), pretrained=[], data_root=str(root))
    argv = st.train_argv(st.build_config(app, "tiny", "a/ds", "run-a", {}))
    assert argv[argv.index("--eval-classifier") + 1] == str(folder)
    assert st.build_config(app, "tiny", "b/ds", "run-b", {}).eval_classifier == "none"


def test_a_top_level_dataset_never_takes_a_nested_ones_classifier(roots, monkeypatch, capsys):
    """`ds` and `a/ds` share checkpoints/genre-ds: the owner is the recorded dataset's real path, not
    the end of it (a/ds's classifier is not ds's: Train, Propose and the Train tab refuse or skip it);
    a relative record (typed elsewhere) says nothing; train.py --eval-classifier auto (and evaluate)
    skip another dataset's classifier with a one-line note."""
    import shutil

    from genre_classifier import model_folder
    from musicgen_trainer.app import studio_train as st
    from musicgen_trainer.app.page import App
    from musicgen_trainer.train_eval import resolve_classifier
    root, checkpoints = roots
    (root / "a").mkdir()
    shutil.copytree(root / "lib-prepared", root / "a" / "ds", symlinks=True)
    shutil.copytree(root / "lib-prepared", root / "ds", symlinks=True)
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, argv, folder, **kw: started.append(argv))
    folder = checkpoints / "genre-ds"
    folder.mkdir()
    (folder / "classifier.json").write_text(json.dumps({"labels": ["beats", "drone"],
                                                        "config": {"data": str(root / "a" / "ds")}}))
    with pytest.raises(stg.OtherDatasetsClassifier):
        stg.classifier_folder(checkpoints, "ds", root=root)
    with pytest.raises(ValueError, match="another dataset folder named 'ds'"):
        stg.start_classifier(root, checkpoints, "ds", {})  # would --overwrite a/ds's
    assert started == [] and stg.load_proposals(root, checkpoints, "ds") == []
    app = App(checkpoints=str(checkpoints), out=str(checkpoints.parent / "out"), pretrained=[], data_root=str(root))
    assert st.classifier_option(app, "ds") == "none" and st.classifier_option(app, "a/ds") == str(folder)
    # the CLI's auto from the project folder: a run on data/ds does not get a/ds's classifier
    monkeypatch.chdir(checkpoints.parent)
    monkeypatch.setattr(model_folder, "read_info", lambda f: {})
    assert model_folder.classifier_for_dataset(root / "ds") is None
    assert "skipped" in capsys.readouterr().err
    assert resolve_classifier("auto", str(root / "ds")) is None
    assert resolve_classifier("auto", str(root / "a" / "ds")).resolve() == folder
    # a relative record ("ds", typed in some other folder) says nothing: a/ds keeps its classifier
    (folder / "classifier.json").write_text(json.dumps({"labels": ["beats", "drone"], "config": {"data": "ds"}}))
    assert stg.classifier_folder(checkpoints, "a/ds", root=root) == folder
    assert stg.classifier_folder(checkpoints, "ds", root=root) == folder


def test_a_linked_confusion_matrix_or_a_fifo_track_is_never_served(roots, tmp_path, monkeypatch):
    import genre_classifier.model_folder as mf
    root, checkpoints = roots
    monkeypatch.setattr(mf, "read_info", lambda folder: {"labels": ["beats", "drone"], "metrics": {}, "training": {}})
    (checkpoints / "genre-lib-prepared" / "report").mkdir()
    secret = tmp_path / "outside" / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    os.symlink(secret, checkpoints / "genre-lib-prepared" / "report" / "confusion_matrix.png")
    assert stg.classifier_report(root, checkpoints, "lib-prepared")[1] is None
    unknown = root / "lib-prepared" / "unknown"
    (unknown / "mystery 1.wav").unlink()
    os.mkfifo(unknown / "mystery 1.wav")  # would block the reader
    with pytest.raises(ValueError, match="no longer in unknown/"):
        stg.proposal_audio(root, checkpoints, "lib-prepared", "unknown/mystery 1.wav")


def test_caption_and_tag_edits_queue_with_the_jobs():
    """Saving a caption or filing tracks checks that no job runs: one concurrency id with starting one."""
    from musicgen_trainer.app.page import App, build_demo
    demo = build_demo(App(checkpoints=None, out="/tmp/x", pretrained=[], midi_default=False, data_root=None))
    ids = {fn.api_name: fn.concurrency_id for fn in demo.fns.values() if fn.api_name}
    assert ids["caption_save"] == ids["tag_apply"] == ids["prepare_start"] == ids["classifier_train"]


@pytest.fixture
def client(roots, tmp_path):
    from gradio_client import Client

    from musicgen_trainer.app.page import App, serve_in_background
    root, checkpoints = roots
    app = App(checkpoints=str(checkpoints), out=str(tmp_path / "out"), pretrained=[], midi_default=False,
              data_root=str(root))
    demo, url = serve_in_background(app)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def test_the_tag_tabs_api(client, roots):
    from gradio_client.exceptions import AppError
    root, checkpoints = roots
    assert client.predict(api_name="/tag_datasets")["choices"] == [["lib-prepared", "lib-prepared"]]
    table = client.predict("lib-prepared", api_name="/tag_proposals")
    assert [row[:3] for row in table["data"]][1:] == [["unknown/mystery 0.wav", "drone", 0.91],
                                                      ["unknown/mystery 1.wav", "beats", 0.55]]
    assert os.path.getsize(client.predict("lib-prepared", "unknown/mystery 0.wav", api_name="/tag_play")) > 1000
    note, accept, listen = client.predict("lib-prepared", ["unknown/mystery 1.wav"], "copy", api_name="/tag_apply")
    assert note == "1 track(s) accepted: 1 file(s) copied into their genre folders"
    assert (root / "lib-prepared" / "beats" / "mystery 1.wav").is_file()
    assert (root / "lib-prepared" / "unknown" / "mystery 1.wav").is_file()  # copied: the original stays
    assert [c[1] for c in accept["choices"]] == ["crafted", "unknown/mystery 0.wav"]
    for args, api in ((("../outside",), "/tag_proposals"), (("lib-prepared", ["nope"], "move"), "/tag_apply"),
                      (("lib-prepared", "crafted"), "/tag_play"), (("/tmp", 3, 0.2, 8, 0.15, 0.15, 0, "baseline",
                                                                   False, False), "/classifier_train")):
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name=api)
        assert "\n" not in str(err.value) and str(root.parent) not in str(err.value)
    assert not (checkpoints / "genre-tmp").exists()
