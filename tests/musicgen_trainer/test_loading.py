"""load_model: export round trip, audiocraft compatibility, clear errors."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from musicgen_trainer.generation import GenerationConfig, generate
from musicgen_trainer.exports import COMPRESSION_FILE, LM_FILE, export_model
from musicgen_trainer.models import ModelUnavailableError, load_model
from mt_helpers import supply_tiny_modules

ROOT = Path(__file__).resolve().parents[2]


def _logits(model, codes, captions):
    from audiocraft.modules.conditioners import ConditioningAttributes
    attrs = [ConditioningAttributes(text={"description": c}) for c in captions]
    with torch.no_grad():
        return model.lm.compute_predictions(codes, attrs).logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    # fp32: the round trip below is checked bit for bit (fp16, the default: test_exports.py)
    return export_model(tiny_model, tmp_path_factory.mktemp("export") / "tiny-export", dtype="fp32")


def test_export_writes_audiocraft_layout(exported):
    assert (exported / LM_FILE).is_file() and (exported / COMPRESSION_FILE).is_file()
    pkg = torch.load(exported / LM_FILE, weights_only=False)
    assert {"xp.cfg", "best_state", "version", "exported"} <= set(pkg)
    assert isinstance(pkg["xp.cfg"], str)  # YAML, as audiocraft's utils/export.py writes it
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]  # no temp files left


def test_export_round_trips_to_identical_outputs(tiny_model, exported):
    loaded = load_model(exported, device="cpu")
    for key, value in tiny_model.lm.state_dict().items():
        assert torch.equal(value, loaded.lm.state_dict()[key]), key
    codes = torch.randint(0, 2048, (2, 4, 30))
    captions = ["baroque organ chorale", ""]
    a, b = _logits(tiny_model, codes, captions), _logits(loaded, codes, captions)
    valid = ~torch.isnan(a)
    assert torch.equal(a[valid], b[valid])
    cfg = GenerationConfig(duration=0.6, seed=3)
    assert torch.equal(generate(tiny_model, ["organ"], cfg), generate(loaded, ["organ"], cfg))


def test_export_loads_with_audiocrafts_own_loader(tiny_model, exported, monkeypatch):
    """audiocraft's MusicGen.get_pretrained(folder) rebuilds the model from our export.

    audiocraft would download the T5 named in the config; the frozen tiny T5 is supplied
    from the export instead (it is not part of the LM state dict, by audiocraft's design).
    """
    from audiocraft.models import MusicGen
    supply_tiny_modules(monkeypatch, exported)
    theirs = MusicGen.get_pretrained(str(exported), device="cpu")
    assert theirs.sample_rate == 32000 and theirs.lm.n_q == 4
    codes = torch.randint(0, 2048, (1, 4, 25))
    a, b = _logits(tiny_model, codes, ["jazz"]), _logits(theirs, codes, ["jazz"])
    valid = ~torch.isnan(a)
    torch.testing.assert_close(a[valid], b[valid])


def test_hub_name_offline_fails_fast_with_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()  # not time.time(): a clock step (NTP) must not count
    with pytest.raises(ModelUnavailableError) as err:
        load_model("facebook/musicgen-small")
    assert time.monotonic() - start < 10  # not huggingface_hub's ~20 s retry loop
    message = str(err.value)
    assert "\n" not in message
    assert "not in the local cache" in message and "--model" in message


def test_unreachable_hub_is_detected_without_offline_flag(monkeypatch, tmp_path):
    """With no HF_HUB_OFFLINE but no network (here: a closed local port), fail fast too."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match="not in the local cache"):
        load_model("medium")


@pytest.mark.parametrize("name, fragment", [
    ("no-such-model", "unknown model"),
    ("./does/not/exist", "not a model folder"),
    ("tiny:abc", "bad tiny model name"),
])
def test_bad_names_give_clear_errors(name, fragment):
    with pytest.raises(ModelUnavailableError, match=fragment):
        load_model(name)


def test_folder_missing_files_is_named(tmp_path):
    (tmp_path / LM_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match=COMPRESSION_FILE):
        load_model(tmp_path)
    (tmp_path / COMPRESSION_FILE).write_bytes(b"x")
    with pytest.raises(ModelUnavailableError, match="cannot read"):
        load_model(tmp_path)


def _cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "musicgen_trainer", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_show_reports_model_facts():
    proc = _cli("show", "--model", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sample_rate"] == 32000 and summary["frame_rate"] == 50
    assert summary["codebooks"] == 4 and summary["lm_parameters"] > 0


def test_cli_offline_hub_name_is_one_line_error():
    proc = _cli("show", "--model", "facebook/musicgen-small")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: facebook/musicgen-small")
    assert "Traceback" not in proc.stderr


def test_cli_demo_runs_the_pipeline_offline(tmp_path):
    """`make demo`'s command: example library -> prepare -> fine-tune tiny -> generate."""
    import soundfile as sf
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "demo.py", "--out", str(tmp_path), "--duration", "1", "--steps", "2",
                           "--no-classifier"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "dataset" / "manifest.jsonl").is_file()
    assert (tmp_path / "run" / "export" / LM_FILE).is_file()
    wavs = list((tmp_path / "generated").glob("*.wav"))
    assert len(wavs) == 1 and wavs[0].with_suffix(".png").is_file()
    info = sf.info(str(wavs[0]))
    assert info.samplerate == 32000 and info.channels == 1 and info.frames == 32000
    assert "demo done" in proc.stdout
    report = tmp_path / "evaluation"                     # make demo ends with an evaluation of the fine-tune
    assert f"evaluation report: {report / 'report.html'}" in proc.stdout
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert data["held_out_ce"]["finetune"]["n_tokens"] > 0 and len(data["clips"]) == 5  # 4 genres + 1 generic
    assert (report / "report.md").is_file() and (report / data["clips"][0]["files"]["base"]).is_file()
