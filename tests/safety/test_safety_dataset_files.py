"""dataset_tools and genre_classifier never lose a user's files, and say what went wrong on one line.

* Ownership: ``prepare`` and ``separate`` replace and delete only files they wrote (their
  state file / each song's ``separation.json`` is the ledger). A file of someone else's
  where they would write, top-level reports and state included, stops the run before any
  work with ``error: PATH exists and was not written by ...`` and exit status 2; files
  named like outputs next to ours (``Song__007.wav``) survive every re-run. Re-runs over
  their own outputs work as before: unchanged, changed options, after an interruption.
* A full, over-quota or read-only disk stops ``prepare`` (and ``separate``) at once: one
  line, exit status 1, listed under "failed" (never under "skipped"); the next run retries.
* ``separate`` checks its inputs before loading a model.
* A demucs model file with other Python objects in it (even ones torch's message spells
  "unsupported GLOBAL") is refused as such, and a damaged genre classifier model is called
  damaged, not "File not found".

Everything runs offline on a few short tones and a tiny random demucs model.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataset_tools"))
from dt_helpers import tone, write_audio  # noqa: E402  (the dataset_tools tests' generators)

from dataset_tools import convert as convert_module  # noqa: E402
from dataset_tools import prepare as prepare_module  # noqa: E402
from dataset_tools.__main__ import main as dataset_tools_main  # noqa: E402
from dataset_tools.separation import api as separation_module  # noqa: E402
from dataset_tools.separation import files as separation_files  # noqa: E402

PREPARE = ["--workers", "1", "--no-analysis", "--no-progress", "--segment-seconds", "2", "--min-seconds", "0.5"]


# --- helpers ---------------------------------------------------------------------------------------------

def music(root: Path) -> Path:
    """SRC: rock/a.wav (2 segments: a__000, a__001), rock/b.wav and jazz/c.flac (one each)."""
    src = root / "music"
    write_audio(src / "rock" / "a.wav", tone(3.0, freq=441.0))
    write_audio(src / "rock" / "b.wav", tone(1.5, freq=630.0))
    write_audio(src / "jazz" / "c.flac", tone(1.0, freq=882.0))
    return src


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("loading model")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def prepare(src: Path, out: Path, *extra, capsys) -> tuple[int, str, str]:
    """``python -m dataset_tools prepare SRC OUT ...``, in this process."""
    code = dataset_tools_main(["prepare", str(src), str(out), *PREPARE, *map(str, extra)])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def report(out: Path) -> dict:
    return json.loads((out / "prepare_report.json").read_text())


def user_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- prepare: a user's files in OUT -----------------------------------------------------------------------

def test_prepare_stops_before_any_work_at_a_users_file_where_it_would_write(tmp_path, capsys):
    src, out = music(tmp_path), tmp_path / "out"
    mine = user_file(out / "rock" / "b.txt", "my notes on b")  # where b.wav's caption goes
    user_file(out / "README.md", "my dataset")                  # not in the way of anything
    before = files(out)

    code, _, err = prepare(src, out, capsys=capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: {mine} exists and was not written by prepare; "
                                   "move it or choose another OUT")
    assert files(out) == before  # nothing written, nothing replaced

    mine.rename(tmp_path / "b.txt")  # moved out of the way: the same command now works
    code, _, _ = prepare(src, out, capsys=capsys)
    assert code == 0 and (out / "rock" / "b.txt").read_text() != "my notes on b"
    assert (out / "README.md").read_text() == "my dataset"


def test_a_users_file_differing_only_in_case_counts_too(tmp_path, capsys):
    """On macOS and Windows rock/B.txt *is* the file rock/b.txt: it is never replaced."""
    src, out = music(tmp_path), tmp_path / "out"
    mine = user_file(out / "rock" / "B.txt", "my notes")
    code, _, err = prepare(src, out, capsys=capsys)
    assert code == 2 and one_error_line(err).startswith(f"error: {mine} exists and was not written by prepare")
    assert files(out) == {"rock/B.txt": b"my notes"}


@pytest.mark.parametrize("name", ["manifest.jsonl", "train.jsonl", "valid.jsonl", "unlabelled.jsonl",
                                  "prepare_report.json", ".prepare_state.json", ".prepare.lock"])
def test_prepare_never_replaces_a_users_file_named_like_its_own_top_level_files(tmp_path, capsys, name):
    src, out = music(tmp_path), tmp_path / "out"
    mine = user_file(out / name, "my own file, not prepare's\n")
    code, _, err = prepare(src, out, capsys=capsys)
    assert code == 2 and one_error_line(err).startswith(f"error: {mine} exists and was not written by prepare")
    assert files(out) == {name: b"my own file, not prepare's\n"}


def test_prepare_stops_where_a_users_file_stands_in_for_a_folder(tmp_path, capsys):
    src, out = music(tmp_path), tmp_path / "out"
    user_file(out / "rock", "a file named like the rock/ folder")
    code, _, err = prepare(src, out, capsys=capsys)
    assert code == 2 and f"error: {out / 'rock'} exists and was not written by prepare" in one_error_line(err)
    assert files(out) == {"rock": b"a file named like the rock/ folder"}


def test_files_named_like_outputs_next_to_ours_survive_reruns(tmp_path, capsys):
    src, out = music(tmp_path), tmp_path / "out"
    assert prepare(src, out, capsys=capsys)[0] == 0
    assert {"rock/a__000.wav", "rock/a__001.wav", "rock/b.wav"} <= set(files(out))
    theirs = {"rock/a__007.wav": "a take of a", "rock/b__000.json": "{}", "jazz/c__001.txt": "notes",
              "rock/a.wav.txt": "not an output name"}
    for rel, text in theirs.items():
        user_file(out / rel, text)

    def intact():
        return all((out / rel).read_text() == text for rel, text in theirs.items())

    # unchanged re-run: nothing to do
    code, stdout, _ = prepare(src, out, capsys=capsys)
    assert code == 0 and report(out)["converted_this_run"] == 0 and intact()

    # a source removed: its outputs go, the file named like them stays
    (src / "rock" / "b.wav").unlink()
    code, _, _ = prepare(src, out, capsys=capsys)
    assert code == 0 and intact()
    assert not (out / "rock" / "b.wav").exists() and report(out)["removed_outputs"] == 3

    # a changed option rewrites rock/a__* and jazz/c*: files named like those stop the run first
    before = files(out)
    code, _, err = prepare(src, out, "--segment-seconds", "1", capsys=capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: {out / 'jazz' / 'c__001.txt'} exists and was not written by "
                                   "prepare (and 1 more); move them or choose another OUT")  # + a__007.wav
    assert files(out) == before

    # moved away, the same command reconverts everything and removes our stale segments only
    (out / "rock" / "a__007.wav").rename(tmp_path / "a__007.wav")
    (out / "jazz" / "c__001.txt").rename(tmp_path / "c__001.txt")
    code, _, _ = prepare(src, out, "--segment-seconds", "1", "--min-seconds", "0.2", capsys=capsys)
    assert code == 0 and report(out)["converted_this_run"] == 2
    assert (out / "rock" / "b__000.json").read_text() == "{}"
    assert (out / "rock" / "a.wav.txt").read_text() == "not an output name"
    manifest = [json.loads(line)["path"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert manifest == ["jazz/c.wav", "rock/a__000.wav", "rock/a__001.wav", "rock/a__002.wav"]


def test_a_killed_runs_unrecorded_outputs_are_still_its_own(tmp_path, capsys, monkeypatch):
    """Outputs written but not yet recorded when a run dies belong to a stem that run
    claimed: the re-run finishes the job without calling them someone else's."""
    src, out = music(tmp_path), tmp_path / "out"

    def die_before_recording(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed right after the first track's files were written
    monkeypatch.setattr(prepare_module, "_record", die_before_recording)
    assert prepare(src, out, capsys=capsys)[0] == 130
    written = [rel for rel in files(out) if rel.endswith(".wav")]
    assert written and json.loads((out / ".prepare_state.json").read_text())["sources"] == {}
    monkeypatch.undo()

    code, _, err = prepare(src, out, capsys=capsys)
    assert code == 0, err
    assert report(out)["tracks"] == 3 and report(out)["failed"] == []


# --- prepare: a full or read-only disk ---------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS], ids=errno.errorcode.get)
def test_a_full_or_read_only_disk_stops_prepare_with_one_line_and_status_1(tmp_path, capsys, monkeypatch, code):
    src, out = music(tmp_path), tmp_path / "out"
    words = os.strerror(code)  # "No space left on device", "Disk quota exceeded", "Read-only file system"
    attempts = []

    def disk_full(path, *args, **kwargs):
        attempts.append(path)
        raise OSError(code, os.strerror(code), str(path))
    monkeypatch.setattr(convert_module, "write_wav_atomic", disk_full)
    status, stdout, err = prepare(src, out, capsys=capsys)
    assert status == 1 and stdout == ""
    line = one_error_line(err)
    assert line.startswith(f"error: cannot write outputs ({words}) while converting ")
    assert "run the same command again" in line
    assert len(attempts) == 1  # stopped at the first failure: every further file would fail too
    failed = report(out)
    assert failed["skipped"] == [] and len(failed["failed"]) == 1
    assert failed["failed"][0]["reason"] == f"cannot write outputs ({words})"

    monkeypatch.undo()  # space freed: the same command finishes the job
    status, stdout, _ = prepare(src, out, capsys=capsys)
    assert status == 0 and report(out)["tracks"] == 3 and report(out)["failed"] == []
    assert "Failed" not in stdout and "Skipped" not in stdout


def test_libsndfile_write_errors_on_a_full_disk_are_os_errors(tmp_path, monkeypatch):
    """libsndfile says only "System error." when write(2) fails; a full disk must still be
    told apart from a bad file."""
    import soundfile as sf

    from dataset_tools import audio_io
    from dataset_tools.audio_io import write_wav_atomic

    def full_disk_write(self, data):
        sf._ffi.errno = errno.ENOSPC  # what C's errno holds after libsndfile's failed write(2)
        raise sf.LibsndfileError(2, prefix="")
    monkeypatch.setattr(sf.SoundFile, "write", full_disk_write)
    with pytest.raises(OSError) as raised:
        write_wav_atomic(tmp_path / "x.wav", np.zeros(100, np.float32), 8000)
    assert raised.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())

    # errno lost on the way: a folder with no space left says the same
    monkeypatch.setattr(audio_io.shutil, "disk_usage", lambda folder: type("U", (), {"free": 0})())
    sf._ffi.errno = 0
    assert audio_io.as_os_error(sf.LibsndfileError(2, prefix=""), tmp_path).errno == errno.ENOSPC
    assert audio_io.as_os_error(sf.LibsndfileError(1, prefix=""), tmp_path) is None  # a format error


# --- separate ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random HTDemucs (8 kHz, 1 s windows) saved as the model file a user would pass."""
    import torch

    from dataset_tools.separation.model import random_htdemucs, save_model_file
    torch.set_num_threads(1)  # tiny convolutions: threads only cost on shared cores
    return save_model_file(random_htdemucs(samplerate=8000, segment=1, seed=0),
                           tmp_path_factory.mktemp("models") / "tiny.th")


@pytest.fixture(autouse=True)
def fresh_model_cache():
    from dataset_tools.separation.model import _load_cached
    _load_cached.cache_clear()
    yield
    _load_cached.cache_clear()


def song(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    noise = 0.25 * np.random.default_rng(seed).standard_normal((int(seconds * 8000), 2))
    return write_audio(path, noise.astype(np.float32), 8000)


def separate(*args, capsys) -> tuple[int, str, str]:
    """``python -m dataset_tools separate ...``, in this process."""
    code = dataset_tools_main(["separate", *map(str, args), "--device", "cpu", "--no-progress"])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(separation_module, "load_separator", refuse)


def test_separate_checks_its_inputs_before_loading_a_model(tmp_path, capsys, no_model_load):
    missing = tmp_path / "sogn.wav"  # a typo
    code, _, err = separate(missing, "--out", tmp_path / "stems", "--model", "htdemucs", capsys=capsys)
    assert code == 2 and one_error_line(err) == f"error: {missing}: file not found"
    (tmp_path / "empty").mkdir()
    code, _, err = separate(tmp_path / "empty", missing, "--out", tmp_path / "stems", capsys=capsys)
    assert code == 2
    assert one_error_line(err) == f"error: {tmp_path / 'empty'}: folder has no audio files (and 1 more input(s) " \
                                  "without audio)"
    assert not (tmp_path / "stems").exists()
    # without --device (auto) the same (the old second entry point, separation.main, is gone)
    assert dataset_tools_main(["separate", str(missing), "--out", str(tmp_path / "stems"), "--no-progress"]) == 2


@pytest.mark.parametrize("rel", ["My Song/vocals.wav", "My Song/instrumental.wav", "My Song/separation.json",
                                 "separate_report.json"])
def test_separate_stops_before_any_work_at_a_users_file_where_it_would_write(tmp_path, capsys, no_model_load,
                                                                             rel):
    track = song(tmp_path / "My Song.flac")
    out = tmp_path / "stems"
    mine = user_file(out / rel, "my own file")
    code, _, err = separate(track, "--out", out, capsys=capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: {mine} exists and was not written by separate; "
                                   "move it or choose another --out folder")
    assert files(out) == {rel: b"my own file"}


def test_separate_all_stems_checks_the_models_stems_before_separating(tmp_path, capsys, tiny_model):
    track = song(tmp_path / "s.wav")
    out = tmp_path / "stems"
    mine = user_file(out / "s" / "drums.wav", "my drums")
    code, _, err = separate(track, "--out", out, "--model", tiny_model, "--stems", "all", capsys=capsys)
    assert code == 2 and f"error: {mine} exists and was not written by separate" in one_error_line(err)
    assert files(out) == {"s/drums.wav": b"my drums"}


def test_separate_reruns_keep_working_and_keep_a_users_files(tmp_path, capsys, tiny_model):
    track = song(tmp_path / "s.wav")
    out = tmp_path / "stems"
    notes = user_file(out / "s" / "notes.txt", "mixed at home")
    karaoke = user_file(out / "s" / "karaoke.wav", "my own mix")
    run = ["--out", out, "--model", tiny_model]
    assert separate(track, *run, capsys=capsys)[0] == 0
    assert separate(track, *run, capsys=capsys)[1].count("already separated") == 1
    # other stems, then the first ones again: every stem WAV written by an earlier run stays ours
    code, stdout, _ = separate(track, *run, "--stems", "drums", capsys=capsys)
    assert code == 0 and "Separated 1 of 1" in stdout
    code, stdout, err = separate(track, *run, capsys=capsys)
    assert code == 0 and "Separated 1 of 1" in stdout, err
    assert {"s/instrumental.wav", "s/vocals.wav", "s/drums.wav"} <= set(files(out))
    assert notes.read_text() == "mixed at home" and karaoke.read_text() == "my own mix"


def test_a_separate_killed_while_renaming_its_stems_finishes_on_the_rerun(tmp_path, capsys, tiny_model,
                                                                          monkeypatch):
    track = song(tmp_path / "s.wav")
    out = tmp_path / "stems"
    real = separation_files._write_marker
    calls = []

    def killed_before_the_final_marker(folder, data):
        calls.append(data)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(folder, data)
    monkeypatch.setattr(separation_files, "_write_marker", killed_before_the_final_marker)
    assert separate(track, "--out", out, "--model", tiny_model, capsys=capsys)[0] == 130
    assert (out / "s" / "vocals.wav").is_file()  # renamed into place, the marker only says "claimed"
    monkeypatch.undo()
    code, stdout, err = separate(track, "--out", out, "--model", tiny_model, capsys=capsys)
    assert code == 0 and "Separated 1 of 1" in stdout, err  # redone: never taken as up to date


def test_a_full_disk_stops_separate_with_one_line_and_status_1(tmp_path, capsys, tiny_model, monkeypatch):
    first, second = song(tmp_path / "a.wav"), song(tmp_path / "b.wav", seed=1)

    def disk_full(folder, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    monkeypatch.setattr(separation_files, "_write_marker", disk_full)
    code, stdout, err = separate(first, second, "--out", tmp_path / "stems", "--model", tiny_model,
                                 capsys=capsys)
    assert code == 1 and stdout == ""
    assert one_error_line(err).startswith(f"error: cannot write outputs (No space left on device) while "
                                          f"separating {first}; stopped")
    saved = json.loads((tmp_path / "stems" / "separate_report.json").read_text())
    assert [(f["status"], Path(f["source"]).name) for f in saved["files"]] == [("failed", "a.wav")]


# --- model files ------------------------------------------------------------------------------------------

class CallsGetpid:
    """Pickles as a call of os.getpid: what a booby-trapped model file does with os.system."""

    def __reduce__(self):
        return (os.getpid, ())


@pytest.mark.parametrize("extra, named", [(argparse.Namespace(lr=1e-3), "argparse.Namespace"),
                                          (CallsGetpid(), "getpid")])
def test_a_demucs_file_with_other_python_objects_is_refused_as_such(tmp_path, capsys, tiny_model, extra, named):
    import torch
    package = torch.load(tiny_model, weights_only=False)
    package["extra"] = extra
    model = tmp_path / "suspicious.th"
    torch.save(package, model)
    code, _, err = separate(song(tmp_path / "s.wav"), "--out", tmp_path / "stems", "--model", model,
                            capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and f"model file {model} contains Python objects other than demucs models (" in line
    assert named in line and line.endswith("if you trust the file, add --trust-model-file")
    assert not (tmp_path / "stems").exists()


def genre_model_folder(folder: Path) -> Path:
    """A genre classifier folder as ``train`` writes it, with a small untrained model."""
    from genre_classifier.features import FeatureSettings
    from genre_classifier.model import build_model
    from genre_classifier.model_folder import Classifier
    return Classifier(build_model(130, 13, 2), ["rock", "jazz"], FeatureSettings()).save(folder)


def test_a_damaged_genre_model_is_called_damaged_not_missing(tmp_path, capsys):
    from genre_classifier.__main__ import main as genre_main
    from genre_classifier.model_folder import MODEL_FILE, ModelFolderError, load_classifier
    folder = genre_model_folder(tmp_path / "model")
    model = folder / MODEL_FILE
    whole = model.read_bytes()
    track = write_audio(tmp_path / "s.wav", tone(2.0))

    model.write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    code = genre_main(["predict", str(track), "--model", str(folder), "--workers", "1", "--no-progress"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2  # a damaged model folder is bad input (the CLI convention: dataset_tools.cli)
    assert line == (f"error: {model} is damaged (truncated or overwritten, not a complete Keras model file); "
                    "copy the whole model folder again or retrain")

    # a complete archive with corrupt contents
    corrupt = bytearray(whole)
    corrupt[len(whole) // 2: len(whole) // 2 + 300] = bytes(300)  # inside the stored weights
    model.write_bytes(bytes(corrupt))
    with pytest.raises(ModelFolderError, match="is damaged"):
        load_classifier(folder)


@pytest.mark.parametrize("stem", ["ABSOLUTE", "../victim/notes"])
def test_a_crafted_state_cannot_make_prepare_delete_files_outside_out(tmp_path, capsys, stem):
    """A shared, already-prepared folder may carry a doctored .prepare_state.json: a record of a
    vanished source whose outputs lie outside OUT. prepare refuses that state and deletes nothing."""
    src, out = music(tmp_path), tmp_path / "out"
    assert prepare(src, out, capsys=capsys)[0] == 0
    victim = user_file(tmp_path / "victim" / "notes.txt", "my notes")
    stem = str(tmp_path / "victim" / "notes") if stem == "ABSOLUTE" else stem
    state = json.loads((out / ".prepare_state.json").read_text())
    state["sources"]["rock/gone.wav"] = {"size": 1, "mtime_ns": 1, "options": "x", "stem": stem,
                                         "segments": [{"path": stem + ".wav"}]}
    (out / ".prepare_state.json").write_text(json.dumps(state))
    code, _, err = prepare(src, out, capsys=capsys)
    assert code == 2 and ".prepare_state.json" in one_error_line(err)
    assert victim.read_text() == "my notes"


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_a_booby_trapped_file_in_the_demucs_cache_is_refused(tmp_path, monkeypatch):
    """demucs reads its cache as a full pickle and checks hashes only when it downloads: a file
    copied into ~/.cache/torch/hub/checkpoints by hand is checked weights-only first."""
    import torch

    from dataset_tools.separation import SeparatorLoadError, load_separator
    from dataset_tools.separation.model import pretrained_files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    marker = tmp_path / "PAYLOAD_RAN"
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"klass": _Payload(marker), "args": (), "kwargs": {}, "state": {}},
               cache / pretrained_files("htdemucs")[0])
    with pytest.raises(SeparatorLoadError, match="other than demucs models"):
        load_separator("htdemucs", "cpu")
    assert not marker.exists()
