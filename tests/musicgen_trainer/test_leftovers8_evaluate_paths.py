"""evaluate finds what a run recorded with relative paths (its base folder, dataset, code cache) from
the run folder, whatever the current folder; what is gone is a one-line error naming it."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_trainer.evaluation.evaluate_config import EvaluateConfig, resolve_inputs


def _dataset(folder: Path) -> Path:
    for genre in ("rock", "jazz"):
        (folder / genre).mkdir(parents=True)
        for i in range(3):
            tone = (0.3 * np.sin(2 * np.pi * (220.0 + 110 * i) * np.arange(32000) / 32000)).astype(np.float32)
            sf.write(folder / genre / f"take_{i}.wav", tone, 32000)
            (folder / genre / f"take_{i}.txt").write_text(f"{genre} song")
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model):
    """proj/ with bases/mybase (a local base export), datasets/ds and checkpoints/run: a 2-step run
    of train.py started inside proj/ with relative paths."""
    from musicgen_trainer.exports import export_model
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig
    proj = tmp_path_factory.mktemp("left8") / "proj"
    export_model(tiny_model, proj / "bases" / "mybase")
    _dataset(proj / "datasets" / "ds")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        train(TrainConfig(data="datasets/ds", model="bases/mybase", out="checkpoints/run", cache_dir="cache",
                          valid_fraction=0.34, steps=2, batch_size=2, segment_seconds=1.0, sample_every=0,
                          valid_every=100, save_every=1000, progress=False, device="cpu"))
    return proj


def _inputs(run: Path, **kw):
    return resolve_inputs(EvaluateConfig(model=str(run), out="unused", **kw))


def _elsewhere(tmp_path, monkeypatch) -> Path:
    """Another working folder, holding decoys of the run's relative names (never to be used)."""
    here = tmp_path / "elsewhere"
    for decoy in ("bases/mybase", "datasets/ds", "cache"):
        (here / decoy).mkdir(parents=True)
    monkeypatch.chdir(here)
    return here


def test_a_runs_relative_paths_resolve_from_the_run_folder_not_the_current_folder(project, tmp_path, monkeypatch):
    record = json.loads((project / "checkpoints" / "run" / "config.json").read_text())
    assert record["model"] == "bases/mybase" and record["working_folder"] == str(project)
    _elsewhere(tmp_path, monkeypatch)
    inputs = _inputs(project / "checkpoints" / "run")
    assert inputs.base == str(project / "bases" / "mybase")
    assert inputs.data == project / "datasets" / "ds"
    assert inputs.cache_dir == str(project / "cache")
    assert inputs.trained_on == project / "datasets" / "ds"  # what evaluate.py reads as trained_on


def test_a_moved_project_or_an_absolute_out_still_resolves(project, tmp_path, monkeypatch):
    """The whole project moved: found through the run folder's place (its relative --out). A run
    trained with an absolute --out: found through the folder train.py recorded."""
    moved = tmp_path / "moved"
    shutil.copytree(project, moved, ignore=shutil.ignore_patterns("cache"))
    config = moved / "checkpoints" / "run" / "config.json"
    record = json.loads(config.read_text())
    config.write_text(json.dumps({**record, "working_folder": str(tmp_path / "was-here")}))  # moved: gone there
    _elsewhere(tmp_path, monkeypatch)
    inputs = _inputs(moved / "checkpoints" / "run")
    assert (inputs.base, inputs.data) == (str(moved / "bases" / "mybase"), moved / "datasets" / "ds")
    assert inputs.cache_dir == str(moved / "cache")  # not made yet there: beside the run, not in the gone folder
    config.write_text(json.dumps({**record, "out": str(moved / "checkpoints" / "run"), "working_folder": str(moved)}))
    inputs = _inputs(moved / "checkpoints" / "run")
    assert (inputs.base, inputs.data) == (str(moved / "bases" / "mybase"), moved / "datasets" / "ds")


def test_what_is_gone_is_a_one_line_error_naming_it(project, tmp_path, monkeypatch):
    """A local base folder or dataset that is no longer where the run says is refused in one line
    that names it and the flag to give, never replaced by the current folder's namesake (or by a
    hub download of its last name); --base and --data, the user's own, still work."""
    run = tmp_path / "copy" / "checkpoints" / "run"
    shutil.copytree(project / "checkpoints" / "run", run)  # without bases/ and datasets/ beside it
    config = run / "config.json"
    record = json.loads(config.read_text())
    config.write_text(json.dumps({**record, "working_folder": str(tmp_path / "gone")}))
    _elsewhere(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"bases/mybase .*is not found at .*give --base") as err:
        _inputs(run)
    assert "\n" not in str(err.value) and str(tmp_path / "copy" / "bases" / "mybase") in str(err.value)
    with pytest.raises(ValueError, match=r"datasets/ds .*is not found at .*give --data") as err:
        _inputs(run, base="tiny")
    assert "\n" not in str(err.value)
    inputs = _inputs(run, base="tiny", data=str(project / "datasets" / "ds"))
    assert (inputs.base, inputs.data) == ("tiny", project / "datasets" / "ds")


def test_hub_and_built_in_bases_stay_names(project, tmp_path, monkeypatch):
    run = tmp_path / "hub" / "checkpoints" / "run"
    shutil.copytree(project / "checkpoints" / "run", run)
    record = json.loads((run / "config.json").read_text())
    _elsewhere(tmp_path, monkeypatch)
    for name in ("facebook/musicgen-small", "tiny"):
        data = str(project / "datasets" / "ds")
        (run / "config.json").write_text(json.dumps({**record, "model": name, "data": data}))
        info = json.loads((run / "export" / "export_info.json").read_text())
        (run / "export" / "export_info.json").write_text(json.dumps({**info, "base_model": name}))
        assert dataclasses.asdict(_inputs(run))["base"] == name


def _recorded_as(project: Path, tmp_path: Path, model: str, export_base: str, working_folder=None) -> Path:
    """A copy of the run that records ``model`` as its --model (export_info: ``export_base``)."""
    run = tmp_path / "as" / "checkpoints" / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(project / "checkpoints" / "run", run)
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "model": model, "data": str(project / "datasets" / "ds"),
                                                 "working_folder": str(working_folder or tmp_path / "gone")}))
    info = json.loads((run / "export" / "export_info.json").read_text())
    (run / "export" / "export_info.json").write_text(json.dumps({**info, "base_model": export_base}))
    return run


def test_a_base_recorded_as_one_name_found_nowhere_is_refused_not_loaded_from_here(project, tmp_path, monkeypatch):
    """train.py --model mybase (a folder of the folder it ran in, now gone): the current folder's
    own mybase is a decoy, and 'mybase' is no hub id: refused in one line naming --base."""
    run = _recorded_as(project, tmp_path, "mybase", "mybase")
    here = _elsewhere(tmp_path, monkeypatch)
    (here / "mybase").mkdir()
    with pytest.raises(ValueError, match=r"mybase .*is not found at .*give --base") as err:
        _inputs(run)
    assert "\n" not in str(err.value)


def test_only_the_names_load_model_builds_are_built_in(project, tmp_path, monkeypatch):
    """A base folder whose name merely starts like a built-in (tiny-run/export) is a folder, found
    where train.py ran; the built-in names and released aliases stay names."""
    work = tmp_path / "work"
    shutil.copytree(project / "bases" / "mybase", work / "tiny-run" / "export")
    run = _recorded_as(project, tmp_path, "tiny-run/export", "export", working_folder=work)
    _elsewhere(tmp_path, monkeypatch)
    assert _inputs(run).base == str(work / "tiny-run" / "export")
    for name in ("tiny:3", "tiny-melody", "tiny-stereo:2", "random:small", "small", "facebook/musicgen-melody"):
        assert _inputs(_recorded_as(project, tmp_path, name, name)).base == name


def test_a_run_copied_into_another_project_uses_what_it_trained_on_not_that_projects_namesakes(
        project, tmp_path, monkeypatch):
    """The run collected into another project that has its own datasets/ds and bases/mybase, while
    the folder train.py ran in still holds the real ones: the recorded folder's are what train.py
    read, so they are used (and reported as what the run trained on), not the other project's."""
    other = tmp_path / "otherproj"
    shutil.copytree(project / "checkpoints" / "run", other / "checkpoints" / "run")
    _dataset(other / "datasets" / "ds")
    shutil.copytree(project / "bases" / "mybase", other / "bases" / "mybase")
    _elsewhere(tmp_path, monkeypatch)
    inputs = _inputs(other / "checkpoints" / "run")
    assert (inputs.base, inputs.data) == (str(project / "bases" / "mybase"), project / "datasets" / "ds")
    assert inputs.trained_on == project / "datasets" / "ds"
    assert inputs.run_config["data"] == "datasets/ds"  # the record itself is left as train.py wrote it
    given = _inputs(other / "checkpoints" / "run", data=str(other / "datasets" / "ds"))
    assert given.trained_on == project / "datasets" / "ds" != given.data  # evaluate's "not the dataset" note
