"""``dataset_tools.cli``: flags declared once on dataclass fields, and one error convention;
``dataset_tools.atomic``: the temporary names it uses are the ones a re-run cleans up."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from dataset_tools.__main__ import _parser
from dataset_tools.atomic import atomic_path, os_error_line, temp_path, write_json_atomic
from dataset_tools.cli import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, add_dataclass_options,
                               dataclass_from_args, flag_name, option, run_command)
from dataset_tools.example import ExampleOptions
from dataset_tools.files import _OUR_PART_FILE, ForeignFileError, RunFailedError, remove_partial_files
from dataset_tools.options import PrepareOptions
from dataset_tools.stats import StatsOptions


def parse(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


def subparser(name: str) -> argparse.ArgumentParser:
    return next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


# --- flags from fields ---------------------------------------------------------------------------

@pytest.mark.parametrize("command, cls", [("prepare", PrepareOptions), ("stats", StatsOptions),
                                          ("example", ExampleOptions)])
def test_every_option_field_is_a_flag_named_after_it_with_help(command, cls):
    helptext = subparser(command).format_help()
    flags = {s: a for a in subparser(command)._actions for s in a.option_strings}
    for f in dataclasses.fields(cls):
        action = flags[flag_name(f.name)]
        assert action.dest == f.name
        assert action.help and len(action.help) > 10, f.name
        assert flag_name(f.name) in helptext
        if f.default not in (None, dataclasses.MISSING) and "(default" not in f.metadata["cli"]["help"]:
            assert "(default: " in action.help


@pytest.mark.parametrize("command, cls", [("prepare", PrepareOptions), ("stats", StatsOptions),
                                          ("example", ExampleOptions)])
def test_no_flags_give_the_dataclass_defaults(command, cls):
    """The command line and the library agree on every default (prepare's output hash too)."""
    args = parse(command, "SRC", "OUT") if command == "prepare" else parse(command, "OUT")
    assert dataclass_from_args(cls, args) == cls()


def test_old_flag_names_still_work_as_documented_aliases():
    old = parse("prepare", "S", "O", "--wav-format", "FLOAT", "--silence-db", "-50", "--loudness", "-14",
                "--no-analysis", "--midi-release", "0.5", "--no-progress")
    new = parse("prepare", "S", "O", "--subtype", "FLOAT", "--trim-db", "-50", "--loudness-lufs", "-14",
                "--no-analyze", "--midi-release-seconds", "0.5", "--no-progress")
    expected = PrepareOptions(subtype="FLOAT", trim_db=-50.0, loudness_lufs=-14.0, analyze=False,
                              midi_release_seconds=0.5, progress=False)
    assert dataclass_from_args(PrepareOptions, old) == dataclass_from_args(PrepareOptions, new) == expected
    assert dataclass_from_args(PrepareOptions, parse("prepare", "S", "O", "--no-trim")).trim_db is None
    assert dataclass_from_args(StatsOptions, parse("stats", "O", "--no-chart")).chart == ""
    assert dataclass_from_args(ExampleOptions, parse("example", "O", "--format", "mid")).audio_format == "mid"
    helptext = subparser("prepare").format_help()
    for alias in ("--wav-format", "--silence-db", "--no-trim", "--loudness", "--no-analysis", "--midi-release"):
        assert alias in helptext  # an alias is listed beside its flag


def test_the_old_hand_written_mapping_gives_the_same_options():
    argv = ["prepare", "S", "O", "--sample-rate", "32000", "--channels", "2", "--wav-format", "PCM_24",
            "--segment-seconds", "10", "--overlap-seconds", "2", "--min-seconds", "0.5", "--no-trim",
            "--caption-template", "{genre} track", "--soundfont", "x.sf2", "--valid-fraction", "0.2",
            "--seed", "7", "--workers", "3", "--absolute-paths", "--remove-vocals",
            "--separation-model", "m.th", "--separation-device", "cpu"]
    assert dataclass_from_args(PrepareOptions, parse(*argv)) == PrepareOptions(
        sample_rate=32000, channels=2, subtype="PCM_24", segment_seconds=10.0, overlap_seconds=2.0,
        min_seconds=0.5, trim_db=None, caption_template="{genre} track", soundfont="x.sf2",
        valid_fraction=0.2, seed=7, workers=3, absolute_paths=True, remove_vocals=True,
        separation_model="m.th", separation_device="cpu")


@dataclass
class Demo:
    model: Path = option(help="model folder", metavar="DIR")
    data: Path = option(help="input folder", metavar="DATA", positional=True)
    count: int = option(3, "how many", metavar="N", group="numbers")
    level: float | None = option(-60.0, "threshold", aliases=("--old-level",),
                                 const_flags={"--no-level": (None, "no threshold")}, group="numbers")
    mode: Literal["fast", "slow"] = option("fast", "speed")
    names: tuple[str, ...] = option(("a", "b"), "names")
    progress: bool = option(True, "show bars", aliases=("--no-bars",))
    percent: float = option(0.5, "share in %% of all")  # argparse help text: %% for a %
    internal: dict = dataclasses.field(default_factory=dict)


def demo_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo")
    add_dataclass_options(parser, Demo, exclude=("internal",), **kwargs)
    return parser


def test_types_defaults_groups_and_switches_come_from_the_fields():
    parser = demo_parser()
    got = dataclass_from_args(Demo, parser.parse_args(["in", "--model", "m"]))
    assert got == Demo(model=Path("m"), data=Path("in"))
    got = dataclass_from_args(Demo, parser.parse_args(
        ["in", "--model", "m", "--count", "5", "--old-level", "-3", "--mode", "slow", "--names", "x", "y",
         "--no-bars"]))
    assert got == Demo(model=Path("m"), data=Path("in"), count=5, level=-3.0, mode="slow", names=("x", "y"),
                       progress=False)
    assert dataclass_from_args(Demo, parser.parse_args(["in", "--model", "m", "--no-level"])).level is None
    assert dataclass_from_args(Demo, parser.parse_args(["in", "--model", "m", "--no-progress",
                                                        "--progress"])).progress is True
    text = parser.format_help()
    assert "numbers:" in text and "--count N" in text and "how many (default: 3)" in text
    assert "--progress, --no-progress, --no-bars" in text and "(default: on)" in text
    assert "DATA" in text and "input folder" in text
    assert "share in % of all (default: 0.5)" in text
    with pytest.raises(SystemExit) as exited:  # a required field is a required flag; bad choices fail
        parser.parse_args(["in"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["in", "--model", "m", "--mode", "medium"])
    # a command line's own default; overrides win over flags
    parser = demo_parser(defaults={"model": None, "count": 9})
    args = parser.parse_args(["in"])
    assert args.model is None and args.count == 9
    assert dataclass_from_args(Demo, args, model=Path("x")).model == Path("x")


def test_fields_without_a_flag_form_must_be_excluded():
    with pytest.raises(TypeError, match="internal"):
        add_dataclass_options(argparse.ArgumentParser(), Demo)
    with pytest.raises(TypeError, match="no field"):
        add_dataclass_options(argparse.ArgumentParser(), Demo, exclude=("internal", "typo"))


# --- one error convention ------------------------------------------------------------------------

class LockedError(RuntimeError):
    pass


def raising(exc: BaseException):
    def command() -> int:
        raise exc
    return command


@pytest.mark.parametrize("exc, code, line", [
    (ValueError("segment length must be at least 1 second"), EXIT_BAD_INPUT,
     "error: segment length must be at least 1 second"),
    (ForeignFileError("out/a.txt exists and was not written by prepare"), EXIT_BAD_INPUT,
     "error: out/a.txt exists and was not written by prepare"),
    (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/no/such"), EXIT_BAD_INPUT,
     f"error: {os.strerror(errno.ENOENT)}: /no/such"),
    (LockedError("another prepare is writing to out"), EXIT_BAD_INPUT, "error: another prepare is writing to out"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/x.wav"), EXIT_FAILED,
     f"error: {os.strerror(errno.ENOSPC)}: /out/x.wav"),
    (OSError("copy of a.wav is incomplete (disk full?)"), EXIT_FAILED,
     "error: copy of a.wav is incomplete (disk full?)"),
    (RunFailedError("cannot write outputs (disk full); run the same command again"), EXIT_FAILED,
     "error: cannot write outputs (disk full); run the same command again"),
    (KeyError("boom"), EXIT_FAILED, "error: KeyError: 'boom' (run with --debug for details)"),
])
def test_errors_are_one_line_with_the_conventional_exit_status(capsys, exc, code, line):
    assert run_command(raising(exc), input_errors=(LockedError,), run_errors=(RunFailedError,)) == code
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [line]


def test_success_ctrl_c_and_debug(capsys):
    assert run_command(lambda: 0) == 0 and run_command(lambda: 1) == 1  # the command's own status
    assert run_command(raising(KeyboardInterrupt()), interrupted_hint="progress is saved") == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted: progress is saved"
    with pytest.raises(ValueError):
        run_command(raising(ValueError("x")), debug=True)  # --debug: the traceback


def test_os_error_line():
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/x")) == "Read-only file system: /mnt/x"
    assert os_error_line(OSError("just a message")) == "just a message"
    assert os_error_line(OSError()) == "OSError"


def test_cli_exit_statuses(tmp_path, capsys):
    from dataset_tools.__main__ import main
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("error: source folder not found")
    with pytest.raises(SystemExit) as exited:  # a bad flag: argparse's status 2, as for other bad input
        main(["prepare", "a", "b", "--channels", "3"])
    assert exited.value.code == EXIT_BAD_INPUT


# --- atomic writes and their left-overs ----------------------------------------------------------------

def test_atomic_temporary_names_are_the_ones_a_rerun_cleans_up(tmp_path):
    target = tmp_path / "rock" / "Song__001.wav"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            assert tmp.parent == target.parent and _OUR_PART_FILE.match(tmp.name)
            kept = tmp.with_name(tmp.name.replace("Song", "Kept"))
            os.link(tmp, kept)  # as if the run had been killed here
            raise RuntimeError
    assert not target.exists() and not tmp.exists()  # removed on error
    with temp_path(target) as tmp:
        assert _OUR_PART_FILE.match(tmp.name)
    stem_part = target.parent / ".Song__001.abcd_123.wav.part"  # stem WAVs' temporary names
    stem_part.write_bytes(b"")
    theirs = [target.parent / n for n in (".notes.part", "Song.wav.part", ".Song.wav.part", ".Song.wav.abc.part")]
    for path in theirs:
        path.write_bytes(b"a user's file")
    assert remove_partial_files(tmp_path) == 2
    assert not kept.exists() and not stem_part.exists() and all(p.exists() for p in theirs)


def test_atomic_writes_have_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = write_json_atomic(tmp_path / "a" / "x.json", {"name": "Caf\udce9"})  # a lone surrogate: escaped
    assert path.read_text(encoding="utf-8") == '{\n  "name": "Caf\\udce9"\n}\n'
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
