"""The safety contract for model files: nothing a user downloads runs code when we open it.

A booby-trapped ``.bin``/``.pt`` is a pickle whose loading calls ``os.system``. Each test puts
one where a user would (an export folder in checkpoints/, a training state for --resume) and
checks that every entry point refuses it with one line and that the payload never ran (its
marker file does not exist).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen_trainer.exports import COMPRESSION_FILE, LM_FILE, export_model
from musicgen_trainer.models import ModelUnavailableError, load_model

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def trap(path: Path, marker: Path) -> None:
    """Rewrite the torch file at ``path`` with the same contents plus the payload."""
    package = torch.load(path, map_location="cpu", weights_only=True)
    package["readme"] = Payload(marker)
    torch.save(package, path)


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory, tiny_model):
    return export_model(tiny_model, tmp_path_factory.mktemp("clean") / "export",
                        extra={"genres": ["jazz"], "caption_examples": ["Jazz music"]})


def copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.fixture(params=[LM_FILE, COMPRESSION_FILE])
def trapped_export(request, clean_export, tmp_path):
    """checkpoints/downloaded/ with one of its two weight files booby-trapped; and the marker."""
    folder = copy_export(clean_export, tmp_path / "checkpoints" / "downloaded")
    marker = tmp_path / "PAYLOAD_RAN"
    trap(folder / request.param, marker)
    return folder, marker


def run(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_load_model_refuses_a_booby_trapped_export(trapped_export):
    folder, marker = trapped_export
    with pytest.raises(ModelUnavailableError, match=r"^refused to load .*posix\.system.*could run code"):
        load_model(folder, device="cpu")
    assert not marker.exists()


def test_generate_refuses_a_booby_trapped_export(trapped_export, tmp_path):
    folder, marker = trapped_export
    done = run("generate.py", "--model", folder, "--prompt", "jazz", "--duration", "1", "--out", tmp_path / "o")
    assert done.returncode == 2
    assert done.stderr.startswith("error: refused to load") and done.stderr.count("\n") == 1, done.stderr
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_the_app_lists_exports_without_opening_weights(trapped_export, monkeypatch):
    """Start-up and Rescan list checkpoints/ from export_info.json alone; choosing the trapped
    model is refused like everywhere else."""
    from musicgen_trainer.app.backend import ModelCache, list_models
    folder, marker = trapped_export
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or pytest.fail("opened weights"))
    choices = list_models(folder.parent, pretrained=[])
    assert [c.genres for c in choices if c.export] == [["jazz"]]
    assert opened == [] and not marker.exists()
    monkeypatch.undo()
    with pytest.raises(ModelUnavailableError, match="refused"):
        ModelCache(device="cpu").get(str(folder))
    assert not marker.exists()


def test_resume_refuses_a_booby_trapped_training_state(tmp_path, dataset):
    from musicgen_trainer.run_folder import STATE_FORMAT, STATE_VERSION
    marker = tmp_path / "PAYLOAD_RAN"
    state = tmp_path / "downloaded_state.pt"
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, "step": 1, "config": {},
                "rng": Payload(marker)}, state)
    done = run("train.py", "--data", dataset, "--model", "tiny", "--out", tmp_path / "run",
               "--resume", state, "--device", "cpu", "--no-progress", "--cache-dir", tmp_path / "cache")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: refused to load training state"), done.stderr
    assert done.stderr.count("\n") == 1
    assert not marker.exists()


def test_audiocraft_style_exports_with_a_yaml_config_load_weights_only(clean_export, tmp_path):
    """audiocraft's own exports store xp.cfg as a YAML string: they pass the safe loader."""
    from omegaconf import OmegaConf
    folder = copy_export(clean_export, tmp_path / "audiocraft_style")
    package = torch.load(folder / LM_FILE, weights_only=True)
    package["xp.cfg"] = OmegaConf.to_yaml(OmegaConf.create(package["xp.cfg"]))
    torch.save(package, folder / LM_FILE)
    model = load_model(folder, device="cpu")
    reference = load_model(clean_export, device="cpu")
    for (name, a), b in zip(model.lm.state_dict().items(), reference.lm.state_dict().values()):
        assert torch.equal(a, b), name


def test_damaged_model_files_give_one_line(clean_export, tmp_path):
    folder = copy_export(clean_export, tmp_path / "truncated")
    data = (folder / COMPRESSION_FILE).read_bytes()
    (folder / COMPRESSION_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelUnavailableError, match=r"^cannot read compression model file .*truncated") as info:
        load_model(folder, device="cpu")
    assert "\n" not in str(info.value)
    (folder / LM_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelUnavailableError, match=r"^cannot read model file"):
        load_model(folder, device="cpu")


def test_listing_a_foreign_export_uses_defaults(clean_export, tmp_path):
    """An export without our JSON (audiocraft's, a stranger's) is listed, with the default window."""
    from musicgen_trainer.exports import export_info
    folder = copy_export(clean_export, tmp_path / "foreign")
    (folder / "export_info.json").unlink()
    info = export_info(folder)
    assert info.genres == [] and info.max_duration == 30.0
    (folder / "export_info.json").write_text('{"format": "something else"}')
    assert export_info(folder).genres == []


def _melody_export(folder: Path) -> Path:
    """The two files of a (non-tiny) melody model's export: enough for load_model to see that
    audiocraft will build htdemucs for it (its config has a self_wav conditioner)."""
    from omegaconf import OmegaConf
    folder.mkdir(parents=True)
    cfg = OmegaConf.to_yaml(OmegaConf.create({"conditioners": {"self_wav": {"model": "chroma_stem"}},
                                              "fuser": {"prepend": ["self_wav", "description"]}}))
    torch.save({"xp.cfg": cfg, "best_state": {}}, folder / LM_FILE)
    torch.save({"xp.cfg": cfg, "best_state": {}}, folder / COMPRESSION_FILE)
    return folder


def test_melody_models_check_the_cached_stem_separator(tmp_path, monkeypatch):
    """audiocraft's melody conditioner lets demucs unpickle htdemucs from torch hub's cache: a
    booby-trapped file there is refused (weights-only) before, and offline a missing one is one
    line naming it, not a network error after loading."""
    from dataset_tools.separation.model import hub_checkpoint_dir, pretrained_files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    export = _melody_export(tmp_path / "my-melody-finetune")
    with pytest.raises(ModelUnavailableError) as err:
        load_model(export, device="cpu")
    assert "\n" not in str(err.value) and "htdemucs" in str(err.value) and "not downloaded" in str(err.value)

    cache = hub_checkpoint_dir()
    cache.mkdir(parents=True)
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"klass": Payload(marker), "state": {}}, cache / pretrained_files("htdemucs")[0])
    with pytest.raises(ModelUnavailableError) as err:
        load_model(export, device="cpu")
    assert "\n" not in str(err.value) and "htdemucs" in str(err.value)
    assert not marker.exists()
