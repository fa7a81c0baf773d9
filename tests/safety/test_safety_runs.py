"""The safety contract for run folders: one run per --out, resume only what matches, touch only
what train.py wrote, and a one-line error (right exit code) for every bad input."""
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from musicgen_trainer import run_folder
from musicgen_trainer.run_folder import RunFolderError, claim_run_folder
from musicgen_trainer.train_config import TrainConfig
from musicgen_trainer.finetune import train

ROOT = Path(__file__).resolve().parents[2]


def config(dataset, out, **kw):
    base = dict(data=str(dataset), model="tiny", out=str(out), cache_dir=str(Path(out).parent / "cache"),
                batch_size=2, segment_seconds=1.0, steps=2, lr=1e-3, warmup_steps=1, sample_every=0,
                valid_every=1000, save_every=1000, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """A finished 2-step run of the tiny model, with a user's own notes beside it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    train(config(dataset, out))
    return out


def test_a_second_run_into_the_same_folder_is_refused(dataset, finished_run):
    before = {p: digest(p) for p in finished_run.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match=r"already holds a training run \(model tiny.*--resume.*--overwrite"):
        train(config(dataset, finished_run, model="tiny:1"))
    assert {p: digest(p) for p in finished_run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("change, flag", [(dict(model="tiny:1"), "--model"), (dict(batch_size=1), "--batch-size"),
                                          (dict(seed=5), "--seed"), (dict(freeze=["emb"]), "--freeze")])
def test_resume_refuses_a_different_model_or_data_stream(dataset, finished_run, change, flag):
    with pytest.raises(RunFolderError, match=f"cannot resume .*trained with {flag}"):
        train(config(dataset, finished_run, resume="auto", steps=3, **change))


def test_resume_refuses_a_state_past_the_requested_steps(dataset, finished_run, tmp_path):
    state = run_folder.list_states(finished_run / "checkpoints")[-1]
    with pytest.raises(ValueError, match="at step 2, past this run's 1 steps"):
        train(config(dataset, tmp_path / "again", resume=str(state), steps=1))


def test_resume_refuses_a_state_of_another_lm_shape(dataset, finished_run, tmp_path):
    saved = run_folder.load_state(run_folder.list_states(finished_run / "checkpoints")[-1])
    saved["lm"] = {k: v[..., :1] if v.dim() == 2 else v for k, v in saved["lm"].items()}
    torch.save(saved, tmp_path / "other_shape.pt")
    with pytest.raises(ValueError, match=r"other_shape.pt does not fit this model \(tiny\)") as info:
        train(config(dataset, tmp_path / "again", resume=str(tmp_path / "other_shape.pt"), steps=3))
    assert "\n" not in str(info.value)


def test_overwrite_starts_over_and_keeps_the_users_files(dataset, tmp_path):
    out = tmp_path / "run"
    (out / "export").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "export" / "listening notes.txt").write_text("also mine")
    train(config(dataset, out, steps=2))
    first_run = json.loads((out / "run.json").read_text())["run_id"]
    train(config(dataset, out, steps=1, overwrite=True, model="tiny:1"))
    record = json.loads((out / "run.json").read_text())
    assert record["run_id"] != first_run and record["model"] == "tiny:1"
    assert record["states"] == ["step_00000001.pt"]
    assert run_folder.list_states(out / "checkpoints") == [out / "checkpoints" / "step_00000001.pt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "export" / "listening notes.txt").read_text() == "also mine"


def test_a_foreign_file_where_train_writes_stops_before_any_work(dataset, tmp_path):
    out = tmp_path / "run"
    (out / "export").mkdir(parents=True)
    (out / "export" / "state_dict.bin").write_bytes(b"someone else's model")
    with pytest.raises(RunFolderError, match=r"export/state_dict.bin exists and was not written by a run"):
        train(config(dataset, out))
    assert (out / "export" / "state_dict.bin").read_bytes() == b"someone else's model"
    assert not (out / "run.json").exists() and not (tmp_path / "cache").exists()  # no work was done


def test_pruning_deletes_only_the_runs_own_states(tmp_path):
    run = claim_run_folder(TrainConfig(data="x", out=str(tmp_path / "run")), resuming=False)
    run.checkpoints_dir.mkdir()
    foreign = run.checkpoints_dir / "step_00000005.pt"  # e.g. copied in by the user mid-run
    foreign.write_bytes(b"keep me")
    for step in (10, 20, 30):
        run.save_state(step, {"x": torch.tensor(step)}, keep_last=1)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step_00000005.pt", "step_00000030.pt"]
    assert foreign.read_bytes() == b"keep me"
    with pytest.raises(RunFolderError, match="not written by this run"):
        run.save_state(5, {"x": torch.tensor(5)}, keep_last=1)
    assert foreign.read_bytes() == b"keep me"


# --- one line, right exit code, for each bad input ---------------------------------------

def test_out_that_is_a_file(dataset, tmp_path):
    (tmp_path / "run").write_text("a file")
    done = cli("--data", dataset, "--model", "tiny", "--out", tmp_path / "run", "--device", "cpu")
    assert done.returncode == 2
    assert done.stderr == f"error: --out {tmp_path / 'run'} is a file, not a folder: choose a folder for the run\n"


def test_yaml_tags_in_a_config_are_refused(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "run.yaml").write_text(f"data: x\nmodel: !!python/object/apply:os.system ['touch {marker}']\n")
    done = cli("--config", tmp_path / "run.yaml", "--show")
    assert done.returncode == 2 and done.stderr.startswith("error: --config") and "not valid YAML (line 2)" in done.stderr
    assert done.stderr.count("\n") == 1 and not marker.exists()
    (tmp_path / "bad.yaml").write_text("data: x\nbatch_size: four\n")
    done = cli("--config", tmp_path / "bad.yaml", "--show")
    assert done.returncode == 2 and done.stderr.startswith("error: --config") and done.stderr.count("\n") == 1


def test_no_progress_hides_every_bar(dataset, tmp_path):
    done = cli("--data", dataset, "--model", "tiny", "--out", tmp_path / "run", "--steps", "1", "--batch-size", "2",
               "--segment-seconds", "1", "--sample-every", "0", "--device", "cpu", "--no-progress",
               "--cache-dir", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "encoding" not in done.stderr and "training" not in done.stderr and "it/s" not in done.stderr


def test_disk_full_while_saving_is_one_line_and_exit_1(dataset, tmp_path, monkeypatch, capsys):
    """torch reports a failed write as "[enforce fail ...] unexpected pos": with no free space
    left it reads as a full disk, exit status 1 (a failure while working, not bad input)."""
    import musicgen_trainer.checkpoint_io as atomic
    from musicgen_trainer.cli_train import main

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:668] . unexpected pos 576 vs 534")
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: SimpleNamespace(total=1, used=1, free=0))
    code = main(["--data", str(dataset), "--model", "tiny", "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch-size", "2", "--segment-seconds", "1", "--sample-every", "0", "--device", "cpu",
                 "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"error: {os.strerror(errno.ENOSPC)}: ") and err.endswith("--resume)\n")
    assert err.count("\n") == 1
    assert not [p for p in (tmp_path / "run").rglob("*") if p.name.startswith(".") and p.is_file()]  # no temp left


def test_generate_disk_full_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    import dataset_tools.audio_io as audio_io
    from musicgen_trainer.cli_generate import main

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(path).parent))
    monkeypatch.setattr(audio_io, "write_audio", full_disk)
    code = main(["--model", "tiny", "--prompt", "jazz", "--duration", "0.2", "--out", str(tmp_path / "o"),
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == f"error: {os.strerror(errno.ENOSPC)}: {tmp_path / 'o'}"
    assert not list((tmp_path / "o").iterdir())  # no partial files


def test_a_crafted_run_record_cannot_make_train_delete_files_elsewhere(tmp_path):
    """A run folder someone shares may carry a doctored run.json: --overwrite and pruning delete
    only the step_*.pt files a record lists inside OUT/checkpoints; any other name is refused."""
    import json as json_module
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out = tmp_path / "run"
    out.mkdir()
    for names in ([str(victim)], ["../../victim.txt"], ["step_00000001.pt", "../x.pt"]):
        (out / "run.json").write_text(json_module.dumps({"format": "musicgen_trainer.run", "version": 1,
                                                         "model": "tiny", "states": names}))
        for kwargs in (dict(overwrite=True), dict(resume="auto")):
            with pytest.raises(RunFolderError, match="not step_"):
                claim_run_folder(TrainConfig(data="x", out=str(out), **kwargs), resuming="resume" in kwargs)
    assert victim.read_text() == "mine"


def test_a_run_that_saved_nothing_does_not_lock_its_folder(dataset, tmp_path):
    """A start that failed before its first state (here: a model name that does not exist) leaves
    nothing to continue: the next start in that folder just works."""
    from musicgen_trainer.models import ModelUnavailableError
    out = tmp_path / "run"
    with pytest.raises(ModelUnavailableError):
        train(config(dataset, out, model="facebook/musicgen-smal"))
    train(config(dataset, out, steps=1))
    assert json.loads((out / "run.json").read_text())["model"] == "tiny"


def test_resume_may_trade_processes_for_accumulation_but_not_change_the_step(dataset, tmp_path):
    """Step n reads micro-batches n*M..n*M+M-1 (M = --grad-accum x processes): a 2-process run can
    continue on one process with --grad-accum doubled; another M is refused."""
    from musicgen_trainer.run_folder import check_resume_world
    saved = {"world_size": 2, "config": {"grad_accum": 1}}
    check_resume_world(saved, config(dataset, tmp_path / "x", grad_accum=2), world=1, what="s")
    with pytest.raises(RunFolderError, match="2 micro-batches per step.*this command 1; use --grad-accum 2"):
        check_resume_world(saved, config(dataset, tmp_path / "x", grad_accum=1), world=1, what="s")


def _users_tokenizer_folder(folder: Path) -> Path:
    """A user's folder holding files with an export's tokenizer names (a T5 tokenizer they keep)."""
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "spiece.model", "notes.txt"):
        (folder / name).write_text(f"the user's {name}")
    return folder


@pytest.mark.parametrize("linked", ["tokenizer", "samples"])
def test_cleanup_never_deletes_through_a_linked_folder(tmp_path, linked):
    """A link at export/tokenizer (or export/samples, export-best/...) to a user's folder: --overwrite
    (remove_run_outputs) removes the link itself, never the files it leads to; a new best refuses it."""
    user = _users_tokenizer_folder(tmp_path / "mine")
    (user / "sample_00.wav").write_text("the user's sample")
    (user / "README.md").write_text("the user's readme")
    out = tmp_path / "run"
    run = claim_run_folder(TrainConfig(data="x", out=str(out), model="tiny"), resuming=False)
    (out / "export").mkdir()
    for name in run_folder.EXPORT_FILES:
        (out / "export" / name).write_text(name)
    os.symlink(user, out / "export" / linked)
    run.replace_best_export(lambda folder: [(folder / n).write_text(n) for n in run_folder.EXPORT_FILES], 2, 1.0)
    os.symlink(user, out / "export-best" / linked)
    with pytest.raises(RunFolderError, match=linked):  # a new best refuses it (nothing swapped, nothing deleted)
        run.replace_best_export(lambda folder: None, 3, 0.5)
    run.record["states"] = ["step_00000001.pt"]
    run_folder.remove_run_outputs(out, run.record)
    assert sorted(p.name for p in user.iterdir()) == ["README.md", "notes.txt", "sample_00.wav", "spiece.model",
                                                      "tokenizer.json"]
    assert not (out / "export").exists() and not (out / "export-best").exists()  # the links went, as links


def test_a_users_folder_named_like_a_tokenizer_file_is_not_ours(tmp_path):
    """export/tokenizer/tokenizer.json/ as a user's folder: the export refuses in one line (never
    rmtree'd with the old copy), a new best refuses, and --overwrite keeps it."""
    from musicgen_trainer.export_tokenizer import write_export_tokenizer
    folder = tmp_path / "export"
    (folder / "tokenizer" / "tokenizer.json").mkdir(parents=True)
    (folder / "tokenizer" / "tokenizer.json" / "my_notes.txt").write_text("mine")
    tokenizer = SimpleNamespace(save_pretrained=lambda path: (Path(path) / "spiece.model").write_text("x"))
    with pytest.raises(ValueError, match="tokenizer.json"):
        write_export_tokenizer(tokenizer, folder)
    assert (folder / "tokenizer" / "tokenizer.json" / "my_notes.txt").read_text() == "mine"
    out = tmp_path / "run"
    run = claim_run_folder(TrainConfig(data="x", out=str(out), model="tiny"), resuming=False)
    run.replace_best_export(lambda f: [(f / n).write_text(n) for n in run_folder.EXPORT_FILES], 1, 2.0)
    (out / "export-best" / "tokenizer" / "tokenizer.json").mkdir(parents=True)
    with pytest.raises(RunFolderError, match="tokenizer.json"):
        run.replace_best_export(lambda f: None, 2, 1.0)


def test_crash_leftovers_of_a_tokenizer_write_are_cleaned(tmp_path):
    """.tokenizer-new-*/.tokenizer-old-* left by a crash: the next export and --overwrite remove them."""
    from musicgen_trainer.export_tokenizer import write_export_tokenizer
    folder = tmp_path / "export"
    for name in (".tokenizer-new-ab12cd34", ".tokenizer-old-zz_9yy88"):
        (folder / name / "tokenizer").mkdir(parents=True)
        (folder / name / "tokenizer" / "spiece.model").write_text("x")
    (folder / ".tokenizer-notes").write_text("a user's file of another pattern")
    tokenizer = SimpleNamespace(save_pretrained=lambda path: (Path(path) / "spiece.model").write_text("x"))
    write_export_tokenizer(tokenizer, folder)
    assert sorted(p.name for p in folder.iterdir()) == [".tokenizer-notes", "tokenizer"]
    out = tmp_path / "run"
    run = claim_run_folder(TrainConfig(data="x", out=str(out), model="tiny"), resuming=False)
    (out / "export" / ".tokenizer-new-ab12cd34").mkdir(parents=True)
    (out / "export" / "state_dict.bin").write_text("x")
    run_folder.remove_run_outputs(out, {**run.record, "states": ["step_00000001.pt"]})
    assert not (out / "export").exists()


def test_a_leftover_named_folder_holding_a_users_file_is_left(tmp_path):
    """Only what a tokenizer write leaves is removed: a folder of the leftover pattern holding
    anything else (a user's mine.txt) stays, with its file."""
    from musicgen_trainer.export_tokenizer import remove_tokenizer_leftovers
    folder = tmp_path / "export"
    (folder / ".tokenizer-new-abcd_123").mkdir(parents=True)
    (folder / ".tokenizer-new-abcd_123" / "mine.txt").write_text("user's")
    (folder / ".tokenizer-old-abcd_123" / "tokenizer" / "notes").mkdir(parents=True)
    (folder / ".tokenizer-new-ours_123").mkdir()
    (folder / ".tokenizer-new-ours_123" / "spiece.model").write_text("x")
    remove_tokenizer_leftovers(folder)
    assert (folder / ".tokenizer-new-abcd_123" / "mine.txt").read_text() == "user's"
    assert (folder / ".tokenizer-old-abcd_123" / "tokenizer" / "notes").is_dir()
    assert not (folder / ".tokenizer-new-ours_123").exists()
