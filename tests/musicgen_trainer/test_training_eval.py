"""Held-out evaluation while training (train_eval.py): early stopping, export-best, resume, the
classifier's genre check in TensorBoard, and export-best's place in the run folder's record."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import run_folder
from musicgen_trainer.finetune import train
from musicgen_trainer.train_config import TrainConfig
from musicgen_trainer.train_eval import BestSoFar


def _tone(seconds, freq, sr=44100):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """``root/dataset``: two genres x three 1 s clips, one of each genre in the validation split
    (manifest.jsonl, as dataset_tools prepare writes it)."""
    data = tmp_path_factory.mktemp("eval") / "dataset"
    rows = []
    for genre, base in (("jazz", 220.0), ("rock", 330.0)):
        (data / genre).mkdir(parents=True)
        for i in range(3):
            path = data / genre / f"{genre}_{i}.wav"
            sf.write(path, _tone(1.0, base * (i + 1)), 44100)
            caption = f"{genre.capitalize()} music, take {i}"
            path.with_suffix(".txt").write_text(caption)
            rows.append({"path": f"{genre}/{path.name}", "genre": genre, "source": f"{genre}/{genre}_{i}.mp3",
                         "split": "valid" if i == 0 else "train", "description": caption})
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def _config(data, out, **kw):
    base = dict(data=str(data), model="tiny", out=str(out), cache_dir=str(Path(out).parent / "cache"),
                batch_size=2, segment_seconds=1.0, lr=2e-3, warmup_steps=1, sample_every=0, eval_every=1,
                save_every=1, keep_last=50, progress=False, device="cpu", export_dtype="fp32",
                eval_classifier="none")
    base.update(kw)
    return TrainConfig(**base)


def _scripted_ce(monkeypatch, values: dict):
    """The held-out cross-entropy at each step, planted (the weights still train)."""
    import musicgen_trainer.train_eval as train_eval
    monkeypatch.setattr(train_eval, "validation_loss", lambda state, *a, **k: values[state.step])


def _best_state(folder):
    return torch.load(Path(folder) / "state_dict.bin", weights_only=True)["best_state"]


def _info(folder):
    return json.loads((Path(folder) / "export_info.json").read_text())


def test_early_stop_keeps_the_best_export(dataset, tmp_path, monkeypatch, capsys):
    """CE 3, 2, 2.5, 2.2: the best is step 2; with --early-stop 2 the run stops after step 4 (two
    evaluations without improvement), says so, saves its state and exports the last weights,
    while export-best/ holds exactly the weights of step 2."""
    _scripted_ce(monkeypatch, {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.2, 5: 1.0, 6: 1.0})
    out = tmp_path / "run"
    export = train(_config(dataset, out, steps=6, early_stop=2))
    printed = capsys.readouterr().out
    assert "early stop at step 4" in printed and "not improved for 2 evaluation(s)" in printed
    assert "best held-out cross-entropy 2.0000 at step 2" in printed

    states = run_folder.list_states(out / "checkpoints")
    assert states[-1].name == "step_00000004.pt"  # stopped: no step 5
    assert _info(export)["trained_steps"] == 4
    best = out / "export-best"
    assert _info(best)["trained_steps"] == 2
    assert _info(best)["best"]["step"] == 2 and _info(best)["best"]["valid_ce"] == pytest.approx(2.0)
    at_step_2 = run_folder.load_state(out / "checkpoints" / "step_00000002.pt")["lm"]
    best_weights, last_weights = _best_state(best), _best_state(export)
    for key, value in best_weights.items():
        assert torch.equal(value, at_step_2[key].float()), key  # a copy of step 2's weights
    assert any(not torch.equal(best_weights[k], last_weights[k]) for k in best_weights)  # training went on

    record = json.loads((out / "run.json").read_text())
    assert record["best_export"] == {"folder": "export-best", "step": 2, "valid_ce": 2.0}
    assert not list(out.glob(".export-best-*"))  # the temporary folders are gone
    saved = run_folder.load_state(states[-1])
    assert saved["eval"] == {"valid_ce": 2.0, "step": 2, "stale": 2}


def test_resume_keeps_the_best_and_the_patience(dataset, tmp_path, monkeypatch, capsys):
    """Stopped at step 4 with the best at step 2 and two evaluations since; resumed with
    --early-stop 3, the next evaluation (not better than step 2's) is the third: it stops at
    step 5 and export-best/ is still step 2's. A resume that forgot them would take step 5's
    2.7 as a new best and go on."""
    _scripted_ce(monkeypatch, {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.6, 5: 2.7, 6: 2.8, 7: 2.9, 8: 3.0})
    out = tmp_path / "run"
    train(_config(dataset, out, steps=4, early_stop=3))
    assert "early stop" not in capsys.readouterr().out
    train(_config(dataset, out, steps=8, early_stop=3, resume="auto"))
    assert "early stop at step 5" in capsys.readouterr().out
    assert run_folder.list_states(out / "checkpoints")[-1].name == "step_00000005.pt"
    assert _info(out / "export-best")["best"]["step"] == 2


def test_states_without_eval_load_with_nothing_best_yet():
    """States saved before the evaluation was part of them ("eval" absent or None)."""
    for saved in (None, {}):
        best = BestSoFar.from_dict(saved)
        assert (best.valid_ce, best.step, best.stale) == (math.inf, 0, 0)
    assert BestSoFar.from_dict({"valid_ce": 1.5, "step": 4, "stale": 1}) == BestSoFar(1.5, 4, 1)
    best = BestSoFar()
    assert best.update(float("nan"), 1) is False and best.stale == 1  # a non-finite CE is no best
    assert best.update(2.0, 2) is True and best.stale == 0


def _toy_classifier(folder, labels):
    """An untrained classifier folder (the genre check needs one that loads, not a good one)."""
    from genre_classifier.features import FeatureSettings
    from genre_classifier.model import build_model
    from genre_classifier.model_folder import Classifier
    settings = FeatureSettings(segment_seconds=1.0)  # 1 s clips: fast to generate with the tiny model
    return Classifier(build_model(settings.frames, settings.n_mfcc, len(labels)), list(labels), settings).save(folder)


def test_stalled_run_with_the_genre_check(dataset, tmp_path, monkeypatch, capsys):
    """A real run whose held-out CE cannot improve (lr 1e-30: the weights do not move): the first
    evaluation is the best, the run stops after two more. The classifier beside the dataset
    (found by --eval-classifier auto) scores one clip per validation genre at each evaluation:
    TensorBoard has the CE and the genre accuracy/confidence; export-best/ loads with
    load_model and audiocraft's own loader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from musicgen_trainer.models import load_model
    from mt_helpers import supply_tiny_modules

    _toy_classifier(dataset.parent / "checkpoints" / f"genre-{dataset.name}", ["jazz", "rock"])  # the dataset's own
    out = tmp_path / "run"
    train(_config(dataset, out, steps=8, lr=1e-30, early_stop=2, eval_classifier="auto"))
    printed = capsys.readouterr().out
    assert "genre check at each evaluation: 2 clip(s) of 1 s (jazz, rock)" in printed
    assert "early stop at step 3" in printed

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("eval/valid_ce", "eval/genre_accuracy", "eval/genre_confidence", "eval/genre_prob/jazz"):
        assert tag in tags, tags
    ce = [e.value for e in events.Scalars("eval/valid_ce")]
    assert [e.step for e in events.Scalars("eval/genre_accuracy")] == [1, 2, 3]
    assert len(ce) == 3 and ce[1] == pytest.approx(ce[0], abs=1e-6)
    assert all(0 <= e.value <= 1 for e in events.Scalars("eval/genre_confidence"))
    assert "eval/jazz" in events.Tags()["audio"]

    best = out / "export-best"
    assert _info(best)["best"]["step"] == 1
    assert load_model(str(best), device="cpu").lm is not None
    supply_tiny_modules(monkeypatch, best)
    from audiocraft.models import MusicGen
    theirs = MusicGen.get_pretrained(str(best), device="cpu")
    for key, value in _best_state(best).items():
        assert torch.equal(theirs.lm.state_dict()[key].float(), value.float()), key


def test_lora_best_export_has_its_adapter(dataset, tmp_path, monkeypatch):
    """With --lora, export-best/ holds the merged weights and the adapter (export-best/adapter/),
    and its record names the adapter relative to the export (no path of this machine: an export
    may be pushed)."""
    from musicgen_trainer.exports import LM_FILE, package_config
    _scripted_ce(monkeypatch, {1: 3.0, 2: 2.0, 3: 2.5})
    out = tmp_path / "run"
    train(_config(dataset, out, steps=3, lora=4, lr=5e-3))
    best = out / "export-best"
    assert (best / "adapter" / "adapter_model.safetensors").is_file()
    pkg = torch.load(best / LM_FILE, weights_only=True)
    assert package_config(pkg)["musicgen_trainer"]["lora"] == "adapter"
    final = package_config(torch.load(out / "export" / LM_FILE, weights_only=True))
    assert final["musicgen_trainer"]["lora"] == "../adapter" and (out / "adapter").is_dir()
    for path in [*best.rglob("*"), *(out / "export").rglob("*")]:  # what a push uploads: no path of this machine
        if path.is_file():
            assert str(tmp_path).encode() not in path.read_bytes(), path
    assert _info(best)["best"]["step"] == 2


def test_a_local_base_folders_path_is_in_no_export_file(dataset, tmp_path, monkeypatch):
    """--lora --model DIR (a local base): no file of export/ or export-best/ (adapter/ included:
    peft's adapter_config.json, musicgen_lora.json; export_info.json, state_dict.bin,
    compression_state_dict.bin) holds the folder's path, only its last name; the run's own adapter/
    keeps the path. The pushed adapter still loads onto that base, wherever it is moved to, and
    refuses another base of the same shapes (the base's fingerprint)."""
    import shutil

    from musicgen_trainer.exports import export_info, export_model
    from musicgen_trainer.lora import load_with_adapter, read_adapter_record
    from musicgen_trainer.models import load_model
    _scripted_ce(monkeypatch, {1: 3.0, 2: 2.0})
    secret = tmp_path / "private-place"
    base = export_model(load_model("tiny", device="cpu"), secret / "mybase", dtype="fp32")
    out = tmp_path / "run"
    train(_config(dataset, out, steps=2, lora=4, lr=5e-3, model=str(base)))
    files = [p for d in ("export", "export-best") for p in (out / d).rglob("*") if p.is_file()]
    assert any(p.parent.name == "adapter" for p in files)
    for path in files:  # what a push uploads
        assert str(secret).encode() not in path.read_bytes(), path
    assert export_info(out / "export-best").base_model == export_info(out / "export").base_model == "mybase"
    assert read_adapter_record(out / "adapter")["base_model_path"] == str(base.resolve())  # never pushed
    adapter = out / "export-best" / "adapter"
    assert read_adapter_record(adapter)["base_model"] == "mybase"
    moved = shutil.move(str(base), str(tmp_path / "elsewhere"))
    assert load_with_adapter(moved, adapter, device="cpu").lm is not None
    other = export_model(load_model("tiny:7", device="cpu"), tmp_path / "mybase", dtype="fp32")
    with pytest.raises(ValueError, match="trained on base model 'mybase'"):
        load_with_adapter(str(other), adapter, device="cpu")


def test_export_again_drops_an_old_base_path_and_copies_the_sources_codec(tmp_path, monkeypatch):
    """`export --format audiocraft` of an export that recorded a base folder's path (written before
    names were shortened): the new export records its last name only, and the codec package comes
    from the source export's own compression_state_dict.bin, never from the recorded base path."""
    from types import SimpleNamespace

    import audiocraft.models.loaders as loaders
    from musicgen_trainer import exports
    from musicgen_trainer.__main__ import main
    from musicgen_trainer.models import load_model
    secret = tmp_path / "private-place" / "mybase"
    secret.mkdir(parents=True)
    source = exports.export_model(load_model("tiny", device="cpu"), tmp_path / "old-export", dtype="fp32")
    plain_old = {exports.OURS: {"base_model": str(secret)}}
    info = json.loads((source / exports.EXPORT_INFO_FILE).read_text())
    (source / exports.EXPORT_INFO_FILE).write_text(json.dumps({**info, "base_model": str(secret)}))
    pkg = torch.load(source / exports.LM_FILE, weights_only=True)
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(pkg["xp.cfg"])
    cfg.musicgen_trainer.base_model = str(secret)
    pkg["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(pkg, source / exports.LM_FILE)
    assert main(["export", str(source), "--format", "audiocraft", "--out", str(tmp_path / "new"),
                 "--samples", "0"]) == 0
    for path in (tmp_path / "new").rglob("*"):
        if path.is_file():
            assert str(secret).encode() not in path.read_bytes(), path
    assert exports.export_info(tmp_path / "new").base_model == "mybase"
    # a released model's fine-tune (not tiny): the package is the source folder's, not the base's
    read = []
    monkeypatch.setattr(loaders, "load_compression_model_ckpt", lambda name: read.append(str(name)) or {})
    exports._base_compression_package(SimpleNamespace(name=str(source)), plain_old)
    assert read == [str(source)]


# --- the run folder: export-best is the run's own ------------------------------------------

def _fake_export(folder):
    for name in run_folder.EXPORT_FILES:
        (folder / name).write_text(name)


def test_best_export_is_swapped_in_only_when_complete(tmp_path):
    """A crash while writing a new best leaves the previous one in place; the next write (or
    --overwrite) removes the leftovers; --overwrite removes export-best/ but a user's file in it."""
    config = TrainConfig(data="x", out=str(tmp_path / "run"), model="tiny")
    run = run_folder.claim_run_folder(config, resuming=False)
    run.replace_best_export(_fake_export, 2, 1.5)
    assert (tmp_path / "run" / "export-best" / "state_dict.bin").is_file()

    def crash(folder):
        (folder / "state_dict.bin").write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        run.replace_best_export(crash, 4, 1.0)
    assert (tmp_path / "run" / "export-best" / "state_dict.bin").read_text() == "state_dict.bin"
    assert run.record["best_export"]["step"] == 2 and len(list((tmp_path / "run").glob(".export-best-*"))) == 1
    run.replace_best_export(_fake_export, 6, 0.9)
    assert not list((tmp_path / "run").glob(".export-best-*"))
    assert run.record["best_export"] == {"folder": "export-best", "step": 6, "valid_ce": 0.9}

    (tmp_path / "run" / "export-best" / "notes.txt").write_text("mine")
    with pytest.raises(run_folder.RunFolderError, match="notes.txt"):  # never moved away with the old best
        run.replace_best_export(_fake_export, 8, 0.8)
    run_folder.remove_run_outputs(tmp_path / "run", run.record)
    assert [p.name for p in (tmp_path / "run" / "export-best").iterdir()] == ["notes.txt"]


def test_foreign_export_best_stops_a_run(tmp_path):
    out = tmp_path / "run"
    (out / "export-best").mkdir(parents=True)
    (out / "export-best" / "state_dict.bin").write_text("someone else's")
    with pytest.raises(run_folder.RunFolderError, match="export-best"):
        run_folder.claim_run_folder(TrainConfig(data="x", out=str(out), model="tiny"), resuming=False)
    record = {"format": run_folder.RUN_FORMAT, "states": []}  # a run that never wrote a best
    with pytest.raises(run_folder.RunFolderError, match="not written by this run"):
        run_folder.RunFolder(out, record).check_best_export_free()


def test_eval_every_is_also_spelled_valid_every(tmp_path):
    from musicgen_trainer.cli_train import build_parser, config_from_args
    for flag in ("--eval-every", "--valid-every"):
        config = config_from_args(build_parser().parse_args(["--data", "x", flag, "7"]))
        assert config.eval_every == 7
    assert TrainConfig(data="x", valid_every=5).eval_every == 5
    import dataclasses
    assert dataclasses.replace(config, eval_every=0).eval_every == 0  # replace keeps the new interval
    (tmp_path / "old.yaml").write_text("data: x\nvalid_every: 9\n")
    assert TrainConfig.from_file(tmp_path / "old.yaml").eval_every == 9
    with pytest.raises(ValueError, match="--early-stop"):
        TrainConfig(data="x", eval_every=0, early_stop=3)
