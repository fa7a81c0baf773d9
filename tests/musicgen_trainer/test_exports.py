"""Exports written exactly as audiocraft's utils/export.py writes them (YAML config left
unresolved, ``version``/``exported`` keys, fp16 weights by default), and base-model names."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from musicgen_trainer.exports import COMPRESSION_FILE, LM_FILE, export_info, export_model
from musicgen_trainer.models import load_model, xp_config


def _logits(model, codes, captions):
    from audiocraft.modules.conditioners import ConditioningAttributes
    attrs = [ConditioningAttributes(text={"description": c}) for c in captions]
    with torch.no_grad():
        out = model.lm.compute_predictions(codes, attrs)
    return out.logits[out.mask.expand_as(out.logits[..., 0])]  # [N, card] at the valid positions


def _released_style(model):
    """``model`` with a config shaped like a released one: dora/slurm keys that interpolate
    environment variables (audiocraft's training configs do), never resolved by audiocraft."""
    cfg = OmegaConf.create(OmegaConf.to_container(model.lm.cfg, resolve=False))
    cfg.dora = {"dir": "/checkpoint/${oc.env:USER}/experiments/audiocraft/outputs"}
    cfg.slurm = {"partition": "${oc.env:SLURM_PARTITION,learnlab}"}
    cfg.logging = {"log_dir": "${dora.dir}/logs"}
    model.lm.cfg = cfg
    return model


def test_export_keeps_interpolations_and_needs_no_environment(tmp_path, monkeypatch):
    """A released config holds ${oc.env:USER}: exporting it where USER is unset (e.g. Docker)
    must work, and the export's xp.cfg is the same unresolved YAML, as audiocraft writes it."""
    import audiocraft
    model = _released_style(load_model("tiny", device="cpu"))
    monkeypatch.delenv("USER", raising=False)
    extra = {"genres": ["jazz"], "caption_examples": ["costs ${5}, or \\${x}", "${oc.env:HOME}"]}
    folder = export_model(model, tmp_path / "export", extra=extra)
    pkg = torch.load(folder / LM_FILE, weights_only=True)
    assert set(pkg) == {"best_state", "xp.cfg", "version", "exported", "text_encoder_state"}
    assert pkg["version"] == audiocraft.__version__ and pkg["exported"] is True
    assert isinstance(pkg["xp.cfg"], str) and "${oc.env:USER}" in pkg["xp.cfg"]
    cfg = xp_config(pkg)
    assert cfg["dora"]["dir"] == "/checkpoint/${oc.env:USER}/experiments/audiocraft/outputs"
    assert cfg["musicgen_trainer"]["caption_examples"] == extra["caption_examples"]  # text, not interpolations
    assert export_info(folder).caption_examples == extra["caption_examples"]
    # the tiny codec's package is written like audiocraft's export_encodec
    codec = torch.load(folder / COMPRESSION_FILE, weights_only=True)
    assert set(codec) == {"best_state", "xp.cfg", "version", "exported"} and isinstance(codec["xp.cfg"], str)
    assert all(v.dtype == torch.float32 for v in codec["best_state"].values() if v.is_floating_point())
    loaded = load_model(folder, device="cpu")
    assert loaded.lm.n_q == 4


def test_fp16_export_is_half_the_size_and_gives_close_logits(tmp_path, tiny_model):
    full = export_model(tiny_model, tmp_path / "fp32", dtype="fp32")
    half = export_model(tiny_model, tmp_path / "fp16")  # the default, like the released checkpoints
    bf16 = export_model(tiny_model, tmp_path / "bf16", dtype="bf16")
    def lm_bytes(folder):  # the LM's weights (a tiny export also carries its frozen local T5, kept fp32)
        return sum(v.numel() * v.element_size()
                   for v in torch.load(folder / LM_FILE, weights_only=True)["best_state"].values())
    size = {f: lm_bytes(f) for f in (full, half, bf16)}
    assert size[half] / size[full] == 0.5 and size[bf16] / size[full] == 0.5
    package = torch.load(half / LM_FILE, weights_only=True)
    state = package["best_state"]
    assert {v.dtype for v in state.values()} == {torch.float16}
    # the frozen tiny T5 is not rounded: the reloaded model's text embeddings stay those it trained with
    assert {v.dtype for v in package["text_encoder_state"].values()} == {torch.float32}
    assert {v.dtype for v in torch.load(bf16 / LM_FILE, weights_only=True)["best_state"].values()} == {torch.bfloat16}

    # Loaded on the CPU, an fp16 export runs in fp32 modules (as audiocraft loads released
    # fp16 weights on the CPU): trainable and usable, with logits close to the fp32 export's.
    a, b = load_model(full, device="cpu"), load_model(half, device="cpu")
    assert {p.dtype for p in b.lm.parameters()} == {torch.float32}
    codes = torch.randint(0, 2048, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    la, lb = _logits(a, codes, ["jazz", ""]), _logits(b, codes, ["jazz", ""])
    assert not torch.equal(la, lb)  # the weights were rounded
    torch.testing.assert_close(lb, la, atol=2e-2, rtol=0)
    assert (la.argmax(-1) == lb.argmax(-1)).float().mean() > 0.95


def test_bad_export_dtype_is_refused(tmp_path, tiny_model):
    from musicgen_trainer.train_config import TrainConfig
    with pytest.raises(ValueError, match="export dtype"):
        export_model(tiny_model, tmp_path / "x", dtype="int8")
    with pytest.raises(ValueError, match="export_dtype"):
        TrainConfig(data="x", export_dtype="fp8")


def test_short_model_name_never_reaches_the_hub(tmp_path, monkeypatch):
    """`--model small` loads, records and exports facebook/musicgen-small: the hub (faked
    here) has no repository called "small", and the export copies the base's codec package."""
    import audiocraft.models.loaders as loaders

    import musicgen_trainer.models as models
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        t = np.arange(32000) / 32000
        sf.write(data / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 32000)
        (data / f"c{i}.txt").write_text(f"tone {i}")
    # The released package of the base's codec, as the hub would serve it.
    base = load_model("tiny", device="cpu")
    hub_file = tmp_path / "hub" / COMPRESSION_FILE
    hub_file.parent.mkdir()
    torch.save({"best_state": base.compression_model.state_dict(), "version": "1.0.0", "exported": True,
                "xp.cfg": OmegaConf.to_yaml(base.lm.cfg)}, hub_file)

    asked = []

    def fake_pretrained(name, device):
        asked.append(name)
        model = _released_style(load_model("tiny", device="cpu"))
        del model.lm.cfg["musicgen_trainer"]  # a released model: nothing says "tiny"
        model.name = name
        return model

    def fake_download(repo_id, filename, **kwargs):
        asked.append(repo_id)
        return str(hub_file)

    monkeypatch.setattr(models, "_load_pretrained", fake_pretrained)
    monkeypatch.setattr(loaders, "hf_hub_download", fake_download)
    monkeypatch.delenv("USER", raising=False)
    config = TrainConfig(data=str(data), model="small", out=str(tmp_path / "run"), steps=1, batch_size=2,
                         segment_seconds=1.0, valid_fraction=0.0, sample_every=0, progress=False,
                         device="cpu", cache_dir=str(tmp_path / "cache"))
    export = train(config)
    assert asked and set(asked) == {"facebook/musicgen-small"}
    assert export_info(export).base_model == "facebook/musicgen-small"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"] == "facebook/musicgen-small"
    assert torch.load(export / COMPRESSION_FILE, weights_only=True)["version"] == "1.0.0"  # the base's own


def test_a_run_recorded_with_a_short_name_resumes_with_it(tmp_path):
    """Runs started before names were resolved recorded "small" (and crashed at export): resuming
    them with --model small (now facebook/musicgen-small) is the same model."""
    from musicgen_trainer.run_folder import RunFolderError, check_resume
    from musicgen_trainer.train_config import TrainConfig
    config = TrainConfig(data="x", model="small")
    assert config.model == "facebook/musicgen-small"
    check_resume({"model": "small"}, config, "the run")
    with pytest.raises(RunFolderError, match="--model facebook/musicgen-medium"):
        check_resume({"model": "medium"}, config, "the run")


def test_a_local_folder_named_like_a_short_name_stays_a_folder(tmp_path, monkeypatch):
    from musicgen_trainer.runtime import resolve_name
    assert resolve_name("small") == "facebook/musicgen-small"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()
    assert resolve_name("small") == "small"


def test_older_exports_with_a_dict_config_still_load(tmp_path, tiny_model):
    """Exports written before this format stored xp.cfg as a plain (resolved) dict."""
    folder = export_model(tiny_model, tmp_path / "old", extra={"caption_examples": ["costs ${5"]})
    assert load_model(folder, device="cpu").lm.n_q == 4  # a caption that is no valid interpolation
    pkg = torch.load(folder / LM_FILE, weights_only=True)
    pkg["xp.cfg"] = xp_config(pkg)
    pkg.pop("version"), pkg.pop("exported")
    torch.save(pkg, folder / LM_FILE)
    assert xp_config(pkg)["musicgen_trainer"]["caption_examples"] == ["costs ${5"]
    assert load_model(folder, device="cpu").lm.n_q == 4
