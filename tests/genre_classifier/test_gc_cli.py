"""The command line: one-line errors without tracebacks, and the commands on a real model.

Exit statuses follow the project's convention (``dataset_tools.cli.run_command``): 2 for bad
input (a dataset or model folder that cannot be used, a missing path), 1 for a failure while
working, 130 on Ctrl-C.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genre_classifier.__main__ import main
from gc_helpers import write_wav

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "genre_classifier", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=300)


def test_help_lists_the_commands():
    proc = _cli("--help")
    assert proc.returncode == 0
    for command in ("train", "evaluate", "predict", "tag"):
        assert command in proc.stdout
    assert "--min-confidence" in _cli("tag", "--help").stdout


def test_single_genre_dataset_is_a_one_line_error(tmp_path):
    for i in range(3):
        write_wav(tmp_path / "data" / "rock" / f"r{i}.wav", 1.0, seed=i)
    write_wav(tmp_path / "data" / "unknown" / "u.wav", 1.0)
    proc = _cli("train", tmp_path / "data", "--out", tmp_path / "m")
    assert proc.returncode == 2  # bad input (DatasetError)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: only one genre ('rock')")
    assert "Traceback" not in proc.stderr


def test_bad_model_folder_is_a_one_line_error(tmp_path):
    song = write_wav(tmp_path / "s.wav", 1.0)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "classifier.json").write_text(json.dumps({"format_version": 0, "labels": ["a", "b"],
                                                                    "features": {}}))
    (tmp_path / "model" / "model.keras").write_bytes(b"")
    proc = _cli("predict", song, "--model", tmp_path / "model")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # bad input (ModelFolderError)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
    assert "error:" in proc.stderr and "format 0" in proc.stderr and "retrain" in proc.stderr


def test_predict_and_tag_commands(trained_model, tmp_path, capsys):
    song = write_wav(tmp_path / "unknown" / "s.wav", 5.0, genre="plucks", seed=31)
    (tmp_path / "unknown" / "broken.mp3").write_text("not audio")
    assert main(["predict", str(song), "--model", str(trained_model), "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    line = out.strip().splitlines()[0]
    assert line.startswith(str(song)) and len(line.split("\t")[1].split("  ")) == 3
    # a folder stands for its audio files
    assert main(["predict", str(tmp_path / "unknown"), "--model", str(trained_model), "--workers", "1",
                 "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(l.split("\t")[0] for l in lines) == sorted([str(song), str(tmp_path / "unknown" / "broken.mp3")])
    code = main(["tag", str(tmp_path / "unknown"), "--model", str(trained_model), "--min-confidence", "0",
                 "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "dry run: nothing moved" in out and "1 skipped" in out
    assert song.exists()
    code = main(["tag", str(tmp_path / "unknown"), "--model", str(trained_model), "--min-confidence", "0",
                 "--apply", "move", "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "1 moved, 0 failed" in out and not song.exists()
    assert len(list(tmp_path.glob("*/s.wav"))) == 1


def test_tag_survives_file_names_that_are_not_utf8(trained_model, tmp_path, capsys):
    song = write_wav(tmp_path / "unknown" / "s.wav", 5.0, genre="plucks", seed=32)
    latin1 = os.path.join(os.fsencode(tmp_path / "unknown"), b"Caf\xe9.wav")  # as old Windows zips name it
    try:
        os.rename(song, latin1)
    except OSError:  # e.g. macOS: APFS refuses names that are not UTF-8
        pytest.skip("this file system refuses names that are not UTF-8")
    code = main(["tag", str(tmp_path / "unknown"), "--model", str(trained_model), "--min-confidence", "0",
                 "--apply", "copy", "--workers", "1", "--no-progress"])
    assert code == 0 and "1 copied, 0 failed" in capsys.readouterr().out
    rows = json.loads((tmp_path / "unknown" / "genre_tags.json").read_text(encoding="utf-8"))["rows"]
    assert len(rows) == 1 and os.fsencode(rows[0]["file"]).endswith(b"Caf\xe9.wav")
    assert len(list(tmp_path.glob("*/Caf*.wav"))) == 2  # the original and its copy


def test_evaluate_command(trained_model, toy_data, tmp_path, capsys):
    assert main(["evaluate", str(toy_data), "--model", str(trained_model), "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "track accuracy" in out and "confusion matrix" in out
    assert (tmp_path / "r" / "evaluation.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["tag", "/no/such/folder", "--model", "m"], "folder to tag not found"),
    (["evaluate", "/no/such/data", "--model", "m"], "dataset folder not found"),
])
def test_missing_paths_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2  # bad input
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_flags_are_the_config_fields():
    """Every config field is a flag (or positional) named after it, with help and the same default."""
    import argparse
    import dataclasses

    from dataset_tools.cli import flag_name
    from genre_classifier.__main__ import build_parser
    from genre_classifier.evaluation import EvaluateConfig
    from genre_classifier.tagging import TagConfig
    from genre_classifier.training import TrainConfig

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, cls, argv in (("train", TrainConfig, ["D"]), ("evaluate", EvaluateConfig, ["D", "--model", "M"]),
                               ("tag", TagConfig, ["D", "--model", "M"])):
        actions = {a.dest: a for a in commands[command]._actions}
        args = parser.parse_args([command, *argv])
        for f in dataclasses.fields(cls):
            if f.name == "features":
                continue
            action = actions[f.name]
            assert action.help, f.name
            assert not action.option_strings or action.option_strings[0] == flag_name(f.name)
            if f.default is not dataclasses.MISSING:
                assert getattr(args, f.name) == f.default, f.name
    # the older spellings still work
    args = parser.parse_args(["tag", "D", "--model", "M", "--no-cache", "--no-progress", "--apply", "copy"])
    assert (args.use_cache, args.progress, args.apply) == (False, False, "copy")
    args = parser.parse_args(["predict", "a.wav", "--model", "M", "--cache-dir", "c", "--workers", "2"])
    assert (args.cache_dir, args.workers, args.use_cache, args.progress) == (Path("c"), 2, True, True)


def test_the_earlier_default_model_is_two_flags_away():
    """The default is the "stats" head with augmentation (issue 19, item 5); ``--head baseline
    --no-augment`` still trains the earlier default (Flatten head, fixed windows)."""
    from genre_classifier.__main__ import build_parser
    parser = build_parser()
    args = parser.parse_args(["train", "D"])
    assert (args.head, args.augment) == ("stats", True)
    args = parser.parse_args(["train", "D", "--head", "baseline", "--no-augment"])
    assert (args.head, args.augment) == ("baseline", False)
