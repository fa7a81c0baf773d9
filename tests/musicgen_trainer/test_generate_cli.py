"""generate.py end to end on tiny models: files written, JSON parameters, fine-tune exports,
audio prompts, and one-line errors for impossible requests."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_trainer import cli_generate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory, tiny_model):
    """An export folder as train.py writes it, with the genres of its training data."""
    from musicgen_trainer.exports import export_model
    folder = tmp_path_factory.mktemp("ckpt") / "run" / "export"
    return export_model(tiny_model, folder, extra={"genres": ["jazz", "hip_hop"],
                                                   "caption_examples": ["Jazz music, Blue in Green"]})


def _run(capsys, *argv):
    code = cli_generate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fine_tune_to_wav_spectrogram_json_mp3(fine_tune, tmp_path, capsys):
    code, out, err = _run(capsys, "--model", fine_tune, "--prompt", "piano trio", "--prompt", "late night",
                          "--genres", "jazz,hip_hop", "--bpm", "90", "--duration", "0.5", "--seed", "3",
                          "--mp3", "--out", tmp_path)
    assert code == 0, err
    metas = sorted(tmp_path.glob("*.json"))
    assert [m.name for m in metas] == ["00_piano_trio_s3.json", "01_late_night_s4.json"]  # clip i: seed + i
    meta = json.loads(metas[0].read_text())
    assert meta["prompt"] == "Jazz and hip hop music, medium tempo at 90 bpm, piano trio"
    assert meta["seed"] == 3 and meta["duration"] == 0.5 and meta["top_k"] == 250 and meta["batch_size"] == 2
    assert meta["model"] == str(fine_tune) and meta["seconds"] == 0.5
    for key in ("wav", "mp3", "png"):
        assert (tmp_path / meta["files"][key]).stat().st_size > 0
    audio, rate = sf.read(tmp_path / meta["files"]["wav"])
    assert rate == 32000 and audio.shape == (16000,)
    assert (tmp_path / meta["files"]["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "warning" not in out  # both genres are the fine-tune's own


def test_same_seed_same_output_and_no_overwrite(tmp_path, capsys):
    args = ("--model", "tiny", "--prompt", "folk", "--duration", "0.3", "--seed", "9", "--out", tmp_path)
    assert _run(capsys, *args)[0] == 0
    assert _run(capsys, *args)[0] == 0
    first, second = tmp_path / "00_folk_s9.wav", tmp_path / "00_folk_s9_2.wav"
    assert np.array_equal(sf.read(first)[0], sf.read(second)[0])


def test_audio_prompt_continuation_writes_both_spectrograms(tmp_path, capsys):
    rate = 22_050
    t = np.arange(int(0.8 * rate)) / rate
    riff = tmp_path / "riff.wav"
    sf.write(riff, np.stack([np.sin(2 * np.pi * 196 * t)] * 2, axis=1) * 0.3, rate)
    code, out, err = _run(capsys, "--model", "tiny", "--audio-prompt", riff, "--genres", "rock", "--duration", "0.4",
                          "--seed", "1", "--out", tmp_path / "out")
    assert code == 0, err
    meta = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert meta["prompt"] == "Rock music" and meta["audio_prompt"] == str(riff)
    assert meta["audio_prompt_seconds_used"] == 0.8
    audio, sr = sf.read(tmp_path / "out" / meta["files"]["wav"])
    assert audio.shape == (round(1.2 * sr),)  # 0.8 s prompt + 0.4 s new
    assert "continued the last 0.80 s" in out


def test_unknown_genre_for_a_fine_tune_warns(fine_tune, tmp_path, capsys):
    code, out, _ = _run(capsys, "--model", fine_tune, "--genres", "polka", "--duration", "0.1", "--out", tmp_path)
    assert code == 0 and "warning: genre(s) polka not in this fine-tune's training data (jazz, hip_hop)" in out


@pytest.mark.parametrize("argv, message", [
    (["--duration", "-2"], "error: duration must be more than 0"),
    (["--duration", "100000"], "at most 600 seconds"),
    (["--audio-prompt", "/no/such/file.wav"], "error: --audio-prompt file not found: /no/such/file.wav"),
    (["--melody", "/no/such/hum.wav"], "error: --melody file not found"),
    (["--top-p", "2"], "error: top_p must be between 0 and 1"),
    (["--model", "/no/such/export"], "error: /no/such/export is not a model folder"),
    (["--model", "nonsense"], "error: unknown model 'nonsense'"),
])
def test_impossible_requests_are_one_line_errors(argv, message, tmp_path, capsys):
    code, _, err = _run(capsys, "--model", "tiny", *argv, "--out", tmp_path)
    assert code == 2
    assert err.startswith(message) or message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_audio_and_melody_on_tiny(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    code, _, err = _run(capsys, "--model", "tiny", "--audio-prompt", bad, "--out", tmp_path)
    assert code == 2 and err.startswith(f"error: cannot read --audio-prompt {bad}: not an audio file")
    good = tmp_path / "hum.wav"
    sf.write(good, np.zeros(16000), 16000)
    code, _, err = _run(capsys, "--model", "tiny", "--melody", good, "--duration", "0.2", "--out", tmp_path)
    assert code == 2 and err.strip() == ("error: model tiny has no melody conditioning (use a melody model "
                                         "such as facebook/musicgen-melody, or drop the melody)")
    code, _, err = _run(capsys, "--model", "tiny", "--melody", good, "--audio-prompt", good, "--out", tmp_path)
    assert code == 2 and "cannot be combined" in err


def test_generate_py_entry_point_help():
    proc = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0
    for flag in ("--audio-prompt", "--melody", "--genres", "--midi", "--mp3", "--top-k", "--cfg-coef", "--seed"):
        assert flag in proc.stdout


def test_the_command_line_and_the_web_app_write_the_same_json(tmp_path, capsys, tiny_model):
    """Both go through outputs.generate_to_files: the same parameters, the same keys, the same audio."""
    from musicgen_trainer.app.backend import AppRequest, ModelCache, run_request
    from musicgen_trainer.generation import GenerationConfig
    code, _, err = _run(capsys, "--model", "tiny", "--prompt", "piano", "--genres", "jazz", "--duration", "0.3",
                        "--seed", "4", "--out", tmp_path / "cli", "--device", "cpu")
    assert code == 0, err
    cache = ModelCache(device="cpu", loader=lambda name, device=None: tiny_model)
    request = AppRequest(model="tiny", allowed_models=["tiny"], prompt="piano", genres=["jazz"], midi=False,
                         generation=GenerationConfig(duration=0.3, seed=4))
    app = run_request(request, cache, tmp_path / "app")
    (cli_json,) = (tmp_path / "cli").glob("*.json")
    from_cli, from_app = json.loads(cli_json.read_text()), json.loads(app.json.read_text())
    assert from_cli.keys() == from_app.keys()
    for key in ("model", "prompt", "user_prompt", "genres", "duration", "top_k", "seed", "sample_rate"):
        assert from_cli[key] == from_app[key], key
    assert from_cli["prompt"] == "Jazz music, piano"
    assert np.array_equal(sf.read(cli_json.with_suffix(".wav"))[0], sf.read(app.wav)[0])
