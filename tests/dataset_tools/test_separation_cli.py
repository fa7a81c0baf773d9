"""``separate`` on files and from the command line: formats, bad input, model loading, re-runs.

Models: a tiny random HTDemucs (8 kHz, 1 s windows) saved as a demucs model file, loaded
through the same ``--model PATH`` a user would pass; pretrained names are tested against
a temporary torch hub cache (no network is ever used).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dt_helpers import write_audio

from dataset_tools.audio_io import AudioDecodeError, load_audio
from dataset_tools.__main__ import main as dataset_tools_main
from dataset_tools.separation import SeparateOptions, SeparatorLoadError, check_model, load_separator, separate
from dataset_tools.separation.cli import add_arguments, options_from_args
from dataset_tools.separation.files import expand_inputs, output_folders
from dataset_tools.separation.model import _load_cached, random_htdemucs, save_model_file, separator_from_model
from dataset_tools.separation.report import MARKER_FILE, REPORT_FILE

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["drums", "bass", "other", "vocals"]
HTDEMUCS_FILE = "955717e8-8726e21a.th"  # the checkpoint demucs' htdemucs.yaml names


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(autouse=True)
def fresh_model_cache():
    _load_cached.cache_clear()
    yield
    _load_cached.cache_clear()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_model_file(random_htdemucs(samplerate=8000, segment=1, seed=0),
                           tmp_path_factory.mktemp("models") / "tiny.th")


def noise(seconds, rate, channels, seed=0):
    rng = np.random.default_rng(seed)
    return (0.25 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)


def run_main(*args, capsys) -> tuple[int, str, str]:
    """``python -m dataset_tools separate ARGS``, in this process."""
    code = dataset_tools_main(["separate", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("loading model")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Good inputs in several formats/rates/channel counts, and every kind of bad input."""
    src = tmp_path_factory.mktemp("songs")
    good = {
        "stereo.wav": (noise(2.3, 44100, 2, 1), 44100, "FLOAT"),
        "mono.flac": (noise(1.7, 22050, 1, 2)[:, 0], 22050, None),
        "surround.wav": (noise(1.2, 48000, 6, 3), 48000, "FLOAT"),
        "aac.m4a": (noise(1.5, 32000, 2, 4), 32000, None),        # decoded by ffmpeg
        "folder/inside.ogg": (noise(1.0, 16000, 1, 5)[:, 0], 16000, None),
    }
    for name, (audio, rate, subtype) in good.items():
        write_audio(src / name, audio, rate, subtype=subtype)
    (src / "folder" / "notes.txt").write_text("not music, not audio-named: ignored")
    (src / "empty.wav").write_bytes(b"")
    (src / "garbage.mp3").write_bytes(np.random.default_rng(0).bytes(3000))
    (src / "text.flac").write_text("this is not a flac file\n" * 20)
    (src / "emptydir").mkdir()
    inputs = [src / "stereo.wav", src / "mono.flac", src / "surround.wav", src / "aac.m4a", src / "folder",
              src / "empty.wav", src / "garbage.mp3", src / "text.flac", src / "emptydir", src / "missing.wav"]
    return src, inputs


def test_batch_writes_every_stem_and_skips_bad_files_with_reasons(batch, model_file, tmp_path, capsys):
    src, inputs = batch
    out = tmp_path / "stems"
    code, stdout, _ = run_main(*inputs, "--out", out, "--model", model_file, "--device", "cpu", "--no-progress",
                               "--stems", "instrumental,all", "--wav-format", "FLOAT", capsys=capsys)
    assert code == 0
    report = json.loads((out / REPORT_FILE).read_text())
    status = {Path(f["source"]).name: (f["status"], f["reason"]) for f in report["files"]}
    assert {k for k, v in status.items() if v[0] == "separated"} == \
        {"stereo.wav", "mono.flac", "surround.wav", "aac.m4a", "inside.ogg"}
    reasons = {k: v[1] for k, v in status.items() if v[0] == "skipped"}
    assert reasons["empty.wav"] == "empty file (0 bytes)"
    assert reasons["missing.wav"] == "file not found"
    assert reasons["emptydir"] == "folder has no audio files"
    for name in ("garbage.mp3", "text.flac"):  # the same one-line reason `prepare` gives
        with pytest.raises(AudioDecodeError) as decode_error:
            load_audio(src / name)
        assert reasons[name] == str(decode_error.value)
    assert all("\n" not in r for r in reasons.values())
    assert "Skipped 5:" in stdout and "garbage.mp3" in stdout

    expected = {"stereo": (44100, 2), "mono": (22050, 1), "surround": (48000, 2), "aac": (32000, 2),
                "inside": (16000, 1)}
    for name, (rate, channels) in expected.items():
        source = next(p for p in src.rglob(f"{name}.*"))
        decoded, _ = load_audio(source, mono=False)
        stems = {}
        for stem in ["instrumental", *SOURCES]:
            info = sf.info(str(out / name / f"{stem}.wav"))
            assert (info.samplerate, info.channels, info.frames) == (rate, channels, decoded.shape[-1]), (name, stem)
            stems[stem] = sf.read(str(out / name / f"{stem}.wav"), always_2d=True)[0].T
        if name in ("stereo", "mono"):  # instrumental is the exact complement of the vocals
            np.testing.assert_allclose(stems["instrumental"] + stems["vocals"], decoded, atol=1e-5)
    assert not list(out.rglob("*.part")) and not (out / "notes").exists()


def test_rerun_skips_finished_songs_and_redoes_changed_settings(model_file, tmp_path, capsys):
    src = tmp_path / "music"
    write_audio(src / "a.wav", noise(1.0, 8000, 2), 8000)
    write_audio(src / "b.wav", noise(1.0, 8000, 1)[:, 0], 8000)
    out = src / "separated"  # inside the input folder: its WAVs must never become inputs
    args = [src, "--out", out, "--model", model_file, "--device", "cpu", "--no-progress"]
    assert run_main(*args, capsys=capsys)[0] == 0
    first = (out / "a" / "vocals.wav").stat().st_mtime_ns
    code, stdout, _ = run_main(*args, capsys=capsys)
    assert code == 0 and "2 already separated" in stdout
    assert (out / "a" / "vocals.wav").stat().st_mtime_ns == first
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a", "b"]
    code, stdout, _ = run_main(*args, "--stems", "drums", capsys=capsys)  # new settings: redone
    assert "Separated 2 of 2" in stdout and (out / "a" / "drums.wav").is_file()
    code, stdout, _ = run_main(*args, "--stems", "drums", "--force", capsys=capsys)
    assert "Separated 2 of 2" in stdout
    marker = json.loads((out / "a" / MARKER_FILE).read_text())
    assert marker["settings"]["stems"] == ["drums"] and marker["source"] == str((src / "a.wav").resolve())


def test_a_failure_mid_song_leaves_no_partial_files_and_keeps_old_stems(model_file, tmp_path):
    src = tmp_path / "song.wav"
    write_audio(src, noise(4.0, 8000, 2), 8000)
    good = separator_from_model(random_htdemucs(samplerate=8000, segment=1), device="cpu")
    options = SeparateOptions(progress=False)
    separate([src], tmp_path / "out", options, separator=good)
    before = (tmp_path / "out" / "song" / "vocals.wav").read_bytes()

    calls = {"n": 0}
    real_call = type(good).__call__

    class Broken(type(good)):
        def __call__(self, mix):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated crash\nsecond line")
            return real_call(self, mix)
    broken = Broken(**{k: getattr(good, k) for k in ("name", "models", "weights", "sources", "samplerate",
                                                      "audio_channels", "max_segment", "device")})
    report = separate([src], tmp_path / "out", SeparateOptions(progress=False, force=True), separator=broken)
    (result,) = report.files
    assert result.status == "failed"
    assert result.reason == "unexpected error: RuntimeError: simulated crash"
    assert (tmp_path / "out" / "song" / "vocals.wav").read_bytes() == before
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]


def test_output_folder_names_are_distinct_and_safe(tmp_path):
    files = [tmp_path / "x" / "Song.mp3", tmp_path / "y" / "Song.flac", tmp_path / "SONG.mp3", tmp_path / 'a:b?.wav']
    assert output_folders(files) == ["Song", "Song-flac", "SONG-mp3", "a_b_"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "one.wav").write_bytes(b"x")
    found, skipped = expand_inputs([tmp_path / "d", tmp_path / "d" / "one.wav", tmp_path / "nope.ogg"])
    assert found == [tmp_path / "d" / "one.wav"]  # listed once
    assert [(s.source, s.reason) for s in skipped] == [(str(tmp_path / "nope.ogg"), "file not found")]


# --- options and model loading errors: one line, exit status 2 ------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--overlap", "1.5"], "overlap must be between 0 and 0.9"),
    (["--segment", "0.1"], "segment must be between 0.5 and 600 seconds"),
    (["--segment", "5"], "is longer than model"),
    (["--shifts", "-1"], "shifts must be a whole number from 0 to 20"),
    (["--stems", "voice"], "model has no stem 'voice': choose from instrumental, drums, bass, other, vocals"),
    (["--stems", ","], "no stems requested"),
    (["--device", "tpu"], "device must be auto, cpu, cuda, cuda:N or mps"),
])
def test_option_errors_are_one_line(model_file, tmp_path, capsys, extra, message):
    song = write_audio(tmp_path / "s.wav", noise(0.5, 8000, 1)[:, 0], 8000)
    code, _, err = run_main(song, "--out", tmp_path / "o", "--model", model_file, "--device", "cpu",
                            "--no-progress", *extra, capsys=capsys)
    assert code == 2 and message in one_error_line(err)


def test_instrumental_needs_a_vocals_stem(tmp_path):
    sep = separator_from_model(random_htdemucs(samplerate=8000, sources=("drums", "bass", "other")), device="cpu")
    with pytest.raises(ValueError, match="'instrumental' needs a model with a vocals stem"):
        SeparateOptions().stems_for(sep)


@pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")
def test_cuda_without_gpu_is_a_clear_error(model_file):
    with pytest.raises(SeparatorLoadError, match="torch sees no GPU here; use --device cpu"):
        load_separator(model_file, "cuda")


def test_model_file_errors(tmp_path):
    garbage = tmp_path / "garbage.th"
    garbage.write_bytes(os.urandom(500))
    with pytest.raises(SeparatorLoadError, match="cannot read model file .*not a PyTorch file, or damaged"):
        load_separator(garbage, "cpu")
    bare = tmp_path / "state.th"
    torch.save(random_htdemucs(samplerate=8000).state_dict(), bare)
    with pytest.raises(SeparatorLoadError, match="is not a demucs model package"):
        load_separator(bare, "cpu")
    with pytest.raises(SeparatorLoadError, match="model file not found"):
        load_separator(tmp_path / "nope.th", "cpu")
    # Arbitrary Python objects are refused unless the user trusts the file.
    model = random_htdemucs(samplerate=8000)
    odd = tmp_path / "odd.th"
    save_model_file(model, odd)
    package = torch.load(odd, weights_only=False)
    package["training_args"] = argparse.Namespace(lr=1e-3)
    torch.save(package, odd)
    with pytest.raises(SeparatorLoadError, match="Namespace.*add --trust-model-file"):
        load_separator(odd, "cpu")
    assert load_separator(odd, "cpu", trust_model_file=True).sources == SOURCES


def test_pretrained_model_offline_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SeparatorLoadError) as err:
        load_separator("htdemucs", "cpu")
    text = str(err.value)
    assert "\n" not in text and "'htdemucs' is not downloaded" in text
    assert HTDEMUCS_FILE in text and str(tmp_path / "torch" / "hub" / "checkpoints") in text
    assert "--model /path/to/model.th" in text
    with pytest.raises(SeparatorLoadError, match="is not downloaded"):
        check_model("htdemucs")  # what prepare calls before starting its workers
    song = write_audio(tmp_path / "s.wav", noise(0.5, 8000, 1)[:, 0], 8000)
    code, _, err_text = run_main(song, "--out", tmp_path / "o", "--device", "cpu", "--no-progress", capsys=capsys)
    assert code == 2 and HTDEMUCS_FILE in one_error_line(err_text)


def test_pretrained_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DEMUCS_OFFLINE", raising=False)

    def no_network(url, *args, **kwargs):
        assert url.endswith(HTDEMUCS_FILE)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(SeparatorLoadError, match=r"cannot be downloaded now \(\[Errno -3\] Temporary failure"):
        load_separator("htdemucs", "cpu")


def test_pretrained_name_is_loaded_from_the_hub_cache(tmp_path, monkeypatch):
    # What a completed download leaves behind: demucs' own loader then reads it offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_model_file(random_htdemucs(samplerate=8000, segment=1), tmp_path / "torch" / "hub" / "checkpoints" / HTDEMUCS_FILE)
    check_model("htdemucs")
    assert _load_cached.cache_info().currsize == 0  # cached checkpoints: checked without loading
    sep = load_separator("htdemucs", "cpu")
    assert sep.sources == SOURCES and sep.samplerate == 8000 and sep is load_separator("htdemucs", "cpu")
    song = write_audio(tmp_path / "s.wav", noise(0.5, 8000, 2), 8000)
    report = separate([song], tmp_path / "o", SeparateOptions(progress=False, device="cpu"))
    assert [f.status for f in report.files] == ["separated"]


def test_unknown_model_name_lists_the_pretrained_ones():
    with pytest.raises(SeparatorLoadError, match="unknown model 'htdemux'.*htdemucs, htdemucs_6s, htdemucs_ft"):
        load_separator("htdemux", "cpu")


# --- entry points ------------------------------------------------------------------------------------------

def _cli(module_args, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *module_args, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_entry_point(model_file, tmp_path):
    song = write_audio(tmp_path / "My Song.wav", noise(1.0, 8000, 2), 8000)
    done = _cli(["dataset_tools", "separate"], song, "--out", tmp_path / "o", "--model", model_file,
                "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "Separated 1 of 1" in done.stdout and (tmp_path / "o" / "My Song" / "instrumental.wav").is_file()
    bad = _cli(["dataset_tools", "separate"], song, "--out", tmp_path / "o", "--model", tmp_path / "missing.th",
               "--no-progress")
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: model file not found: {tmp_path / 'missing.th'}"


def test_importing_the_library_does_not_import_torch():
    # `dataset_tools --help` and option errors must not wait for torch.
    code = "import sys, dataset_tools.separation; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr


def _wired(command: str) -> bool:
    try:
        from dataset_tools.__main__ import _parser
        sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    except Exception:
        return False
    return command in sub.choices


@pytest.mark.skipif(not _wired("separate"), reason="`dataset_tools separate` is not wired yet")
def test_dataset_tools_separate_command(model_file, tmp_path):
    song = write_audio(tmp_path / "song.flac", noise(1.0, 44100, 2), 44100)
    done = _cli(["dataset_tools", "separate"], song, "--out", tmp_path / "o", "--model", model_file,
                "--device", "cpu", "--no-progress", "--stems", "drums,bass,other,vocals")
    assert done.returncode == 0, done.stderr
    assert all(sf.info(str(tmp_path / "o" / "song" / f"{s}.wav")).frames == 44100 for s in SOURCES)


def test_arguments_round_trip_to_options():
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["a.mp3", "--out", "o", "--stems", "Vocals, drums", "--segment", "4",
                              "--shifts", "2", "--instrumental", "sum", "--wav-format", "FLOAT", "--no-progress"])
    options = options_from_args(args)
    assert options.stems == ("vocals", "drums") and options.segment == 4.0 and options.shifts == 2
    assert options.instrumental_mode == "sum" and options.subtype == "FLOAT" and not options.progress
    assert SeparateOptions().stems == ("instrumental", "vocals") and SeparateOptions().model == "htdemucs"


def test_every_option_field_is_a_flag_and_old_spellings_still_parse():
    import dataclasses
    from dataset_tools.cli import flag_name
    parser = add_arguments(argparse.ArgumentParser())
    flags = {s: a for a in parser._actions for s in a.option_strings}
    for f in dataclasses.fields(SeparateOptions):
        assert flags[flag_name(f.name)].dest == f.name and len(flags[flag_name(f.name)].help) > 10, f.name
    assert options_from_args(parser.parse_args(["a.mp3", "--out", "o"])) == SeparateOptions()  # same defaults
    old = parser.parse_args(["a.mp3", "--out", "o", "--instrumental", "sum", "--wav-format", "PCM_24",
                             "--no-progress", "--force", "--trust-model-file", "--stems", "drums,vocals"])
    new = parser.parse_args(["a.mp3", "--out", "o", "--instrumental-mode", "sum", "--subtype", "PCM_24",
                             "--no-progress", "--force", "--trust-model-file", "--stems", "drums,vocals"])
    expected = SeparateOptions(instrumental_mode="sum", subtype="PCM_24", progress=False, force=True,
                               trust_model_file=True, stems=("drums", "vocals"))
    assert options_from_args(old) == options_from_args(new) == expected
    helptext = parser.format_help()
    assert "--instrumental-mode {difference,sum}, --instrumental" in helptext and "--wav-format" in helptext


# --- prepare --remove-vocals (active once the lead wires it into PrepareOptions) ------------------------

def _prepare_has_remove_vocals() -> bool:
    from dataset_tools.options import PrepareOptions
    return "remove_vocals" in PrepareOptions.__dataclass_fields__


@pytest.mark.skipif(not _prepare_has_remove_vocals(), reason="prepare --remove-vocals is not wired yet")
def test_prepare_remove_vocals_writes_instrumental_wavs(model_file, tmp_path):
    from dataset_tools.options import PrepareOptions
    from dataset_tools.prepare import prepare
    src = tmp_path / "lib"
    write_audio(src / "rock" / "Song.wav", noise(3.0, 44100, 2, 7), 44100)
    common = dict(segment_seconds=2.0, min_seconds=0.5, workers=1, analyze=False, trim_db=None, progress=False)
    prepare(src, tmp_path / "plain", PrepareOptions(**common))
    report = prepare(src, tmp_path / "inst", PrepareOptions(remove_vocals=True, separation_model=str(model_file),
                                                            separation_device="cpu", **common))
    plain = sorted((tmp_path / "plain").rglob("*.wav"))
    inst = sorted((tmp_path / "inst").rglob("*.wav"))
    assert [p.relative_to(tmp_path / "plain") for p in plain] == [p.relative_to(tmp_path / "inst") for p in inst]
    for a, b in zip(plain, inst):
        x, y = sf.read(str(a)), sf.read(str(b))[0]
        assert len(x[0]) == len(y) and np.abs(x[0] - y).max() > 1e-3  # same length, vocals removed
    assert report.options["remove_vocals"] is True
