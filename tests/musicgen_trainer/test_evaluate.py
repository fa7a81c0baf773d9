"""The ``evaluate`` command (musicgen_trainer/evaluation/evaluate*.py): a tiny fine-tune against
its base on a small dataset of synthetic "genres" with a validation split, a tiny genre
classifier beside the dataset, 1 s clips. One run of the library function is shared by the
tests that read its report; the command line runs end to end once more."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genre_classifier.toy import toy_track
from musicgen_trainer.evaluation.evaluate import evaluate
from musicgen_trainer.evaluation.evaluate_config import EvaluateConfig, RECORD_FILE
from musicgen_trainer.evaluation.report_schema import validate

ROOT = Path(__file__).resolve().parents[2]
GENRES = ("drone", "plucks")
SR = 32_000


def write_dataset(root: Path, tracks: dict) -> Path:
    """A prepared-style dataset: ``tracks`` maps (genre, i) -> split; one 1.5 s WAV + caption each,
    listed in manifest.jsonl with its split (as dataset_tools prepare writes it)."""
    rows = []
    for (genre, i), split in tracks.items():
        path = root / genre / f"{genre}_{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, toy_track(genre, 1.5, seed=100 * GENRES.index(genre) + i, sample_rate=SR), SR)
        path.with_suffix(".txt").write_text(f"{genre.title()} music, take {i}")
        rows.append({"path": f"{genre}/{genre}_{i}.wav", "genre": genre, "source": f"{genre}/{genre}_{i}",
                     "split": split, "duration": 1.5})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A dataset (3 training + 2 held-out tracks per genre), a tiny genre classifier saved beside it
    (the demo's layout: genre-classifier/ next to dataset/), and a tiny run trained on it."""
    from genre_classifier.toy import make_toy_dataset
    from genre_classifier.training import TrainConfig as ClassifierConfig, train as train_classifier
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig

    root = tmp_path_factory.mktemp("evaluate")
    data = write_dataset(root / "dataset", {(g, i): "valid" if i >= 3 else "train" for g in GENRES for i in range(5)})
    make_toy_dataset(root / "toy", genres=GENRES, tracks_per_genre=6, seconds=(3.0, 4.0), seed=3)
    train_classifier(ClassifierConfig(data=root / "toy", out=root / "genre-classifier", epochs=6, patience=6,
                                      batch_size=16, val_fraction=0.2, test_fraction=0.34, seed=0, workers=1,
                                      progress=False))
    _record_as_trained_on(root / "genre-classifier", data)
    export = train(TrainConfig(data=str(data), model="tiny", out=str(root / "run"), cache_dir=str(root / "cache"),
                               steps=8, batch_size=2, segment_seconds=1.0, lr=2e-3, warmup_steps=2, sample_every=0,
                               valid_every=100, save_every=1000, progress=False, device="cpu"))
    return {"root": root, "data": data, "run": root / "run", "export": export}


def _record_as_trained_on(classifier: Path, data: Path) -> None:
    """``classifier``'s classifier.json names ``data`` as its training data, as the demo's does (auto
    takes a genre-classifier/ beside a dataset only then); it trained on toy music of the same genres
    (quicker)."""
    info = json.loads((classifier / "classifier.json").read_text(encoding="utf-8"))
    info["training"]["config"]["data"] = str(data.resolve())
    (classifier / "classifier.json").write_text(json.dumps(info), encoding="utf-8")


def _config(setup, out, **kw) -> EvaluateConfig:
    values = dict(model=str(setup["run"]), out=str(out), clips_per_genre=2, duration=1.0, generic_clips=1,
                  batch_size=8, device="cpu", progress=False, clap="none")
    values.update(kw)
    return EvaluateConfig(**values)


@pytest.fixture(scope="module")
def report(setup):
    """evaluate() on the run with the tiny random CLAP: the report folder and its JSON."""
    folder = evaluate(_config(setup, setup["root"] / "report", clap="tiny"), log=lambda _: None)
    return folder, json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_report_files_exist_validate_and_say_what_they_rest_on(report, setup):
    folder, data = report
    for name in ("report.json", "report.md", "report.html", RECORD_FILE, "plots/ce_per_codebook.png"):
        assert (folder / name).is_file(), name
    validate(data)
    assert data["models"]["base"] == {"name": "tiny", "path": "tiny", "source": "recorded in the run's config.json"}
    assert data["models"]["finetune"]["path"] == str(setup["export"])
    assert data["notes"][0].startswith("Held-out music: the 4 clip(s) of ") and \
        "made with the split recorded in its manifest" in data["notes"][0]
    # the held-out clips are the manifest's valid split: 2 tracks per genre, never trained on
    assert data["data"]["genres"] == {g: {"tracks": 2, "clips": 2} for g in GENRES}
    for m in ("finetune", "base"):
        ce = data["held_out_ce"][m]
        assert len(ce["per_codebook"]) == 4 and ce["n_tokens"] > 0 and ce["n_clips"] == 4
        assert data["genre_adherence"][m]["n"] == 4 and len(data["genre_adherence"][m]["labels"]) == 2
        assert data["sanity"][m]["n"] == 5
        assert data["sanity"]["memorisation"][m]["n"] == 5
        assert data["clap"][m]["n"] == 5                                    # --clap tiny: CLAP numbers
        for emb in ("classifier", "encodec", "clap"):
            fig = data["fad"][emb][m]
            assert (fig["n_a"], fig["n_b"]) == (4, 4) and 0 <= fig["low"] <= fig["high"], emb
    assert data["classifier_ceiling"]["n"] == 4
    assert "too noisy" not in json.dumps(data["fad_per_genre"])  # per genre: notes (2 clips per set)
    assert all("note" in v for v in data["fad_per_genre"].values())
    assert data["verdict"].startswith(("Held-out cross-entropy", "The fine-tune", "Warning"))
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "## Verdict" in md and "Drone music" in md


def test_both_models_get_identical_prompts_and_seeds(report):
    folder, data = report
    clips = data["clips"]
    assert [c["genre"] for c in clips] == ["drone", "drone", "plucks", "plucks", None]
    assert clips[0]["prompt"] == "Drone music" and clips[-1]["prompt"] == "music"
    assert [c["seed"] for c in clips] == data["settings"]["seeds"] == [0, 1, 2, 3, 4]  # clip i: seed + i
    for c in clips:
        assert set(c["files"]) == {"finetune", "base"}
        ft, base = (sf.read(folder / c["files"][m])[0] for m in ("finetune", "base"))
        assert ft.shape == base.shape == (SR,)                          # 1 s at 32 kHz each
        assert set(c["flags"]) == {"finetune", "base"}
    # file names do not give the blind test away: _1 / _2, the fine-tune's number drawn per prompt
    names = [Path(c["files"][m]).name for c in clips for m in ("finetune", "base")]
    assert not any("finetune" in n or "base" in n for n in names)
    assert {Path(c["files"]["finetune"]).stem[-1] for c in clips} == {"1", "2"}
    # The same request for both: a base clip is its prompt generated again alone with its own seed.
    from musicgen_trainer.generation import GenerationConfig, generate
    from musicgen_trainer.models import load_model
    wav = generate(load_model("tiny", device="cpu"), [clips[3]["prompt"]], GenerationConfig(duration=1.0, seed=3))
    again = sf.read(folder / clips[3]["files"]["base"])[0]
    assert np.allclose(again, np.clip(wav[0, 0].numpy(), -1, 1), atol=2 / 32768)
    assert not np.allclose(again, sf.read(folder / clips[2]["files"]["base"])[0], atol=1e-3)


def test_memorised_fine_tune_has_lower_held_out_ce_on_its_own_clips_than_its_base(setup, tmp_path):
    """The issue's test: a tiny run trained until it memorises its 2 clips, evaluated on a planted
    dataset whose "held-out" split is those very clips, predicts them far better than its base."""
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig

    two = write_dataset(tmp_path / "two", {("drone", 0): "train", ("plucks", 0): "train"})
    run = tmp_path / "run"
    train(TrainConfig(data=str(two), model="tiny", out=str(run), cache_dir=str(tmp_path / "cache"), steps=60,
                      batch_size=2, segment_seconds=1.0, lr=5e-3, warmup_steps=5, word_dropout=0.0, weight_decay=0.0,
                      valid_fraction=0.0, sample_every=0, valid_every=1000, save_every=1000, progress=False,
                      device="cpu"))
    planted = write_dataset(tmp_path / "planted", {("drone", 0): "valid", ("plucks", 0): "valid",
                                                   ("drone", 1): "train", ("plucks", 1): "train"})
    folder = evaluate(_config(setup, tmp_path / "report", model=str(run), data=str(planted), clips_per_genre=1,
                              generic_clips=0, classifier="none", valid_fraction=0.5), log=lambda _: None)
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    ft, base = data["held_out_ce"]["finetune"], data["held_out_ce"]["base"]
    assert ft["n_tokens"] == base["n_tokens"] > 0
    assert ft["mean"] < base["mean"] - 2.0, (ft["mean"], base["mean"])   # log(2048) = 7.6 nats for a random model
    assert "predicts your held-out music better than the base" in data["verdict"]
    # no classifier: the genre figures are notes, and the report says why
    assert data["genre_adherence"] == {"note": "no genre classifier (see the notes)"}
    assert any("Genre figures skipped (--no-classifier)" in n for n in data["notes"])


def test_missing_classifier_skips_the_genre_figures_with_a_note(setup, tmp_path):
    """No --classifier and none beside the dataset: the report has notes, not genre figures."""
    import shutil
    data = tmp_path / "elsewhere" / "dataset"
    shutil.copytree(setup["data"], data)
    folder = evaluate(_config(setup, tmp_path / "r", data=str(data), clips_per_genre=1, generic_clips=0),
                      log=lambda _: None)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert "note" in report["genre_adherence"] and "note" in report["classifier_ceiling"]
    assert any(n.startswith("No genre classifier was given or found beside the dataset") for n in report["notes"])
    assert "classifier" not in report["fad"] and "encodec" in report["fad"]
    assert "Genre adherence was not measured" in report["verdict"]
    assert any("CLAP figures skipped" in n for n in report["notes"])


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "musicgen_trainer", "evaluate", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_end_to_end_then_refuses_to_overwrite_without_overwrite(setup, tmp_path):
    out = tmp_path / "cli report"
    args = ["--model", str(setup["export"]), "--out", str(out), "--clips-per-genre", "1", "--duration", "1",
            "--generic-clips", "0", "--no-progress", "--device", "cpu", "--clap", "none", "--no-classifier"]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in proc.stdout
    validate(json.loads((out / "report.json").read_text(encoding="utf-8")))
    (out / "my notes.txt").write_text("mine")                       # a user's file in the report folder
    again = _cli(*args)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert again.stderr.startswith(f"error: --out {out} holds a report from") and "--overwrite" in again.stderr
    ours = json.loads((out / RECORD_FILE).read_text())["files"]
    (out / "clips" / "old.wav").write_bytes(b"")          # not recorded: kept too
    evaluate(_config(setup, out, model=str(setup["export"]), clips_per_genre=1, generic_clips=0, classifier="none",
                     overwrite=True, seed=3), log=lambda _: None)              # (in process: quicker)
    assert (out / "my notes.txt").read_text() == "mine" and (out / "clips" / "old.wav").exists()
    assert json.loads((out / "report.json").read_text())["settings"]["seeds"] == [3, 4]  # one clip per genre
    assert not [f for f in ours if "_s0_" in f and (out / f).exists()]  # the old clips went


@pytest.mark.parametrize("case", ["bad-model", "foreign-out", "no-base", "offline-base"])
def test_cli_bad_input_is_one_line_exit_2(setup, tmp_path, case):
    import shutil
    args = ["--model", str(setup["run"]), "--out", str(tmp_path / "r"), "--device", "cpu"]
    expected = ""
    if case == "bad-model":
        args[1] = str(tmp_path / "nope")
        expected = f"error: --model {tmp_path / 'nope'}: no such folder"
    elif case == "foreign-out":
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "holiday.jpg").write_bytes(b"x")
        expected = f"error: --out {tmp_path / 'r'} is not empty and holds no evaluation report (holiday.jpg, ...)"
    elif case == "offline-base":  # a hub base not cached offline: one line, before the fine-tune does any work
        args += ["--base", "facebook/musicgen-small", "--clips-per-genre", "1", "--duration", "1", "--no-classifier"]
        expected = "error: facebook/musicgen-small"
    else:  # an export alone, outside its run: no base recorded (tiny runs record none), no --base
        shutil.copytree(setup["export"], tmp_path / "export")
        args[1] = str(tmp_path / "export")
        args += ["--data", str(setup["data"])]
        expected = f"error: {tmp_path / 'export'} records no base model"
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
    if case == "foreign-out":
        assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["holiday.jpg"]  # untouched
    if case == "offline-base":
        assert not (tmp_path / "r" / "clips" / "finetune").exists()


def test_an_auto_found_classifier_that_cannot_load_is_a_note_and_a_named_one_an_error(setup, tmp_path):
    """Beside the dataset but damaged: the genre figures are skipped with a note (as train.py's
    --eval-classifier auto does); named with --classifier: one line, before any report folder."""
    import shutil
    root = tmp_path / "copy"
    data = root / "dataset"
    shutil.copytree(setup["data"], data)
    shutil.copytree(setup["root"] / "genre-classifier", root / "genre-classifier")
    _record_as_trained_on(root / "genre-classifier", data)
    for model_file in (root / "genre-classifier").glob("*.keras"):
        model_file.write_bytes(b"not a keras file")
    folder = evaluate(_config(setup, tmp_path / "r", data=str(data), clips_per_genre=1, generic_clips=0),
                      log=lambda _: None)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert "note" in report["genre_adherence"]
    assert any(n.startswith("Genre figures skipped: the classifier found beside the dataset") for n in report["notes"])
    with pytest.raises(ValueError, match="--classifier") as info:
        evaluate(_config(setup, tmp_path / "r2", data=str(data), classifier=str(root / "genre-classifier")),
                 log=lambda _: None)
    assert "\n" not in str(info.value) and not (tmp_path / "r2").exists()


def test_a_manifest_split_counts_even_when_the_run_said_valid_fraction_0(setup, tmp_path):
    """Training reads a manifest's split whatever --valid-fraction says: so does evaluate."""
    import dataclasses
    from musicgen_trainer.evaluation.evaluate_config import _manifest_split, resolve_inputs
    assert _manifest_split(setup["data"])
    run = tmp_path / "run"
    run.mkdir()
    for name in ("export",):
        import shutil
        shutil.copytree(setup["export"], run / name)
    (run / "config.json").write_text(json.dumps({"model": "tiny", "data": str(setup["data"]), "valid_fraction": 0.0}))
    inputs = resolve_inputs(dataclasses.replace(_config(setup, tmp_path / "r"), model=str(run)))
    assert "manifest" in inputs.split_source


def test_model_folders_resolve_to_their_export_and_run(tmp_path):
    """A run folder -> its export/; an export inside a run -> that run; a LoRA run's adapter/ -> the
    run's merged export; anything else: one line."""
    from musicgen_trainer.evaluation.evaluate_config import resolve_model
    from musicgen_trainer.exports import COMPRESSION_FILE, LM_FILE
    run = tmp_path / "lora run"
    for name in (f"export/{LM_FILE}", f"export/{COMPRESSION_FILE}", "config.json", "adapter/musicgen_lora.json"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}")
    assert resolve_model(str(run)) == (run / "export", run)
    assert resolve_model(str(run / "export")) == (run / "export", run)
    assert resolve_model(str(run / "adapter")) == (run / "export", run)
    # export-best/ (and its adapter) belong to the run too: its split and settings are the run's
    for name in (f"export-best/{LM_FILE}", f"export-best/{COMPRESSION_FILE}", "export-best/adapter/musicgen_lora.json"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}")
    assert resolve_model(str(run / "export-best")) == (run / "export-best", run)
    assert resolve_model(str(run / "export-best" / "adapter")) == (run / "export-best", run)
    (run / "config.json").unlink()
    assert resolve_model(str(run / "export")) == (run / "export", None)   # an export on its own
    with pytest.raises(ValueError, match="is neither a run folder with an export/ nor an export folder"):
        resolve_model(str(tmp_path))


def test_overwrite_deletes_only_recorded_files_inside_the_report_folder(tmp_path):
    from musicgen_trainer.evaluation.evaluate_config import claim_report_folder
    folder = claim_report_folder(tmp_path / "r", overwrite=False)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    (folder / "report.md").write_text("old")
    (folder / RECORD_FILE).write_text(json.dumps({"format": "musicgen_trainer.evaluation_report",
                                                  "files": ["report.md", "../precious.txt", str(outside)]}))
    with pytest.raises(ValueError, match="pass --overwrite"):
        claim_report_folder(folder, overwrite=False)
    claim_report_folder(folder, overwrite=True)
    assert not (folder / "report.md").exists() and outside.read_text() == "keep"
    assert json.loads((folder / RECORD_FILE).read_text())["files"] == [RECORD_FILE]


def test_small_figures_are_not_shown_as_zero():
    """FAD on EnCodec latents of a small codec is ~1e-5: the report shows it, not "0.00"."""
    from musicgen_trainer.evaluation.report_schema import num
    assert num(1.2138e-05) == "1.2e-05" and num(-0.004) == "-0.004"
    assert (num(0.0), num(0.01), num(3.14159), num(12.34), num(1234.5)) == ("0.00", "0.01", "3.14", "12.3", "1,234")


def test_a_ceiling_measured_on_the_classifiers_own_training_files_is_called_optimistic(tmp_path):
    from musicgen_trainer.data import Clip
    from musicgen_trainer.evaluation.evaluate_config import classifier_overlap_note
    data = tmp_path / "dataset"
    clips = [Clip(path=data / "jazz" / f"t{i}.wav", caption="", track=f"t{i}", split="valid", genre="jazz")
             for i in range(3)]
    (tmp_path / "cls").mkdir()
    split = {"seed": 0, "train": [{"track": "t0", "genre": "jazz", "files": [{"path": "jazz/t0.wav", "sha1": "x"}]}],
             "val": [], "test": [{"track": "t1", "genre": "jazz", "files": [{"path": "jazz/t1.wav", "sha1": "y"}]}]}
    (tmp_path / "cls" / "split.json").write_text(json.dumps(split))
    assert classifier_overlap_note(tmp_path / "cls", data, clips).startswith(
        "1 of the 3 real held-out clips were among the genre classifier's own training files")
    assert classifier_overlap_note(tmp_path / "cls", data, clips[1:]) is None
    assert classifier_overlap_note(tmp_path / "nothing", data, clips) is None


def test_a_dataset_without_genres_gets_generic_clips_compared_with_its_music(setup, tmp_path):
    """A plain folder of audio + captions (no genre folders): --clips-per-genre generic clips per
    model, and they are the ones the FAD compares with the real held-out clips."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(6):
        sf.write(plain / f"take_{i}.wav", toy_track(GENRES[i % 2], 1.5, seed=500 + i, sample_rate=SR), SR)
        (plain / f"take_{i}.txt").write_text(f"a take, number {i}")
    folder = evaluate(_config(setup, tmp_path / "r", data=str(plain), classifier="none", valid_fraction=0.5,
                              generic_clips=1), log=lambda _: None)
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert [c["genre"] for c in data["clips"]] == [None, None] and data["clips"][0]["prompt"] == "music"
    n_real = sum(v["clips"] for v in data["data"]["genres"].values())
    assert n_real >= 2
    assert (data["fad"]["encodec"]["finetune"]["n_a"], data["fad"]["encodec"]["finetune"]["n_b"]) == (2, n_real)
    assert any("is not the dataset the run trained on" in n for n in data["notes"])


def test_memorisation_index_built_once_gives_the_same_overlaps():
    from musicgen_trainer.evaluation.sanity import memorisation_overlap, training_ngrams
    rng = np.random.default_rng(0)
    training = [rng.integers(0, 2048, (4, 300 + 20 * i)) for i in range(5)]
    index = training_ngrams(training)
    half = np.concatenate([training[1][:, :125], rng.integers(0, 2048, (4, 125))], axis=1)
    for clip in (training[3][:, 40:290], rng.integers(0, 2048, (4, 250)), half):
        assert memorisation_overlap(clip, [], index=index) == memorisation_overlap(clip, training)
    assert memorisation_overlap(half, [], index=index) == pytest.approx(0.5, abs=0.1)
