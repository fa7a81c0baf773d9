"""The model card: rendered from data (dataset summary, settings, evaluation, samples, escaping),
written from an export and its run (links only to files that exist, no file names unless asked),
and left by a train.py run in export/ and export-best/."""
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_trainer.sharing.card import CARD_MARK, CardData, GenreRow, Sample, md_text, render_card
from musicgen_trainer.sharing.card_data import write_card

EVIL = "<script>alert(1)</script> *loud* | [x](http://e.vil) `code`"


def _report(export) -> dict:
    return {"models": {"finetune": {"name": "run", "path": str(export)}, "base": {"name": "tiny", "path": "tiny"}},
            "held_out_ce": {"finetune": {"mean": 4.125, "n_tokens": 4000, "per_codebook": [4.1] * 4},
                            "base": {"mean": 6.5, "n_tokens": 4000, "per_codebook": [6.5] * 4}},
            "genre_adherence": {"finetune": {"accuracy": 0.75, "n": 8, "labels": [], "confusion": []},
                                "base": {"accuracy": 0.25, "n": 8, "labels": [], "confusion": []}},
            "fad": {"encodec": {"finetune": {"fad": 1.5, "low": 1.2, "high": 1.9, "n_a": 8, "n_b": 6},
                                "base": {"fad": 9.25, "low": 8.0, "high": 10.5, "n_a": 8, "n_b": 6}}},
            "verdict": "The fine-tune is clearly closer to your music."}


def test_render_card_shows_data_settings_evaluation_samples_and_escapes_user_text(tmp_path):
    data = CardData(title="lofi " + EVIL, license="mit", base_model="facebook/musicgen-small", trained_steps=1200,
                    genres=[GenreRow("jazz", tracks=12, clips=40, seconds=5400.0, held_out_tracks=2),
                            GenreRow("hip_hop", tracks=3, clips=9, seconds=900.0, held_out_tracks=1),
                            GenreRow("", tracks=1, clips=2, seconds=None)],
                    caption_examples=["# Jazz music, " + EVIL], settings=[("lr", 1e-5), ("batch_size", 4), ("ema", True)],
                    evaluation=_report("x"), samples=[Sample("samples/sample_01.wav", "samples/sample_01.png", EVIL)])
    text = render_card(data)
    header = text.split("---")[1]
    assert "license: mit" in header and 'base_model: "facebook/musicgen-small"' in header
    assert '- "hip hop"' in header and "library_name: audiocraft" in header
    assert CARD_MARK in text
    # hours and tracks per genre
    assert "| jazz | 12 | 40 | 1.50 h | 2 |" in text
    assert "| hip hop | 3 | 9 | 15.0 min | 1 |" in text
    assert "| (unlabelled) | 1 | 2 | ? | 0 |" in text
    assert "16 tracks, ? of audio" in text  # one genre's duration unknown: no made-up total
    # settings
    assert "| `--lr` | 1e-05 |" in text and "| `--ema` | on |" in text
    # evaluation numbers, with what they rest on
    assert re.search(r"\| held-out cross-entropy \(lower is better\) \| 4\.125 \| 6\.500 \| 4,000 tokens", text)
    assert "| 75 % | 25 % |" in text and "1.50 \\[1.20, 1.90\\]" in text
    assert "clearly closer to your music" in text
    # samples linked
    assert '<audio controls src="samples/sample_01.wav"></audio>' in text
    assert "](samples/sample_01.png)" in text
    # user text is inert outside the code blocks (where HTML is text anyway): no raw HTML, no link,
    # no table cell break, no heading
    prose = re.sub(r"```python\n.*?```", "", text, flags=re.S)
    assert "<script>" not in prose and "&lt;script&gt;" in prose
    assert "\\[x\\](http://e.vil)" in prose and "\\| \\[x\\]" in prose
    assert "- \\# Jazz music" in text
    # the snippets are Python literals that cannot close the fence
    assert "\\u0060code\\u0060" in text and text.count("```") % 2 == 0


def test_md_text_escapes_block_starts_only_at_a_block_start():
    assert md_text("1. first", start=True) == "1\\. first"
    assert md_text("- item", start=True) == "\\- item"
    assert md_text("0.002") == "0.002"  # a table cell
    assert md_text("a\nb  c") == "a b c"


# --- written from an export and its run -------------------------------------------------------------

def _dataset(root: Path) -> Path:
    data = root / "data"
    for genre, seconds in (("jazz", 1.5), ("rock", 0.5)):
        (data / genre).mkdir(parents=True)
        for i in range(2):
            sf.write(data / genre / f"secret_title_{genre}_{i}.wav", np.zeros(int(seconds * 8000), np.float32), 8000)
            (data / genre / f"secret_title_{genre}_{i}.txt").write_text(f"{genre} music, take {i}")
    return data


def _run(root: Path, samples=2) -> Path:
    """A run folder as train.py leaves it, without weights (dummy export files)."""
    run = root / "run"
    export = run / "export"
    export.mkdir(parents=True)
    for name in ("state_dict.bin", "compression_state_dict.bin"):
        (export / name).write_bytes(b"weights")
    (export / "export_info.json").write_text(json.dumps({
        "format": "musicgen_trainer.export_info", "version": 1, "genres": ["jazz", "rock"],
        "caption_examples": ["jazz music, take 0", "rock music, take 1"], "base_model": "facebook/musicgen-small",
        "trained_steps": 20, "max_duration": 30.0}))
    (run / "config.json").write_text(json.dumps({
        "data": str(_dataset(root)), "valid_fraction": 0.5, "seed": 0, "model": "facebook/musicgen-small",
        "total_steps": 20, "batch_size": 2, "lr": 0.002, "precision_used": "fp32", "lora": None, "ema": False,
        "sample_prompts": []}))
    for step in (10, 20):
        folder = run / "samples" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        for i, prompt in enumerate(["jazz music, take 0", "rock music, take 1"][:samples]):
            slug = prompt.replace(",", "").replace(" ", "_")
            sf.write(folder / f"{i:02d}_{slug}.wav", 0.1 * np.ones(3200, np.float32), 32000)
    return run


def _links(card: Path) -> list:
    text = card.read_text(encoding="utf-8")
    return re.findall(r"\]\(([^)]+)\)", text) + re.findall(r'src="([^"]+)"', text)


def test_write_card_summarises_the_run_and_links_only_existing_samples(tmp_path):
    run = _run(tmp_path)
    export = run / "export"
    card = write_card(export, license="MIT")
    text = card.read_text(encoding="utf-8")
    assert "license: mit" in text and "# run" in text
    assert "| jazz | 2 | 2 | 3.0 s | 1 |" in text and "| rock | 2 | 2 | 1.0 s | 1 |" in text
    assert "| `--lr` | 0.002 |" in text and "| `--lora` | off |" in text
    assert "- jazz music, take 0" in text
    # the run's newest training samples (step 20), copied with a spectrogram each
    assert "step 20" in text
    assert sorted(p.name for p in (export / "samples").iterdir()) == [
        "sample_01.png", "sample_01.wav", "sample_02.png", "sample_02.wav"]
    links = [link for link in _links(card) if not link.startswith("http")]
    assert len([link for link in links if link.endswith(".wav")]) == 4  # player + link, two samples
    assert all((export / link).is_file() for link in links), links
    # no file names, no dataset path without --card-files
    assert "secret_title" not in text and str(tmp_path) not in text
    # no evaluation report: no evaluation section
    assert "## Evaluation" not in text


def test_card_files_lists_names_and_a_rewrite_drops_samples_that_are_gone(tmp_path):
    run = _run(tmp_path)
    export = run / "export"
    write_card(export)
    text = write_card(export, card_files=True, samples=[]).read_text(encoding="utf-8")
    assert "- rock/secret\\_title\\_rock\\_1.wav" in text
    assert not (export / "samples").exists()  # the previous card's samples removed, none linked
    assert "samples/" not in text.split("## Use it")[0]


def test_card_shows_the_evaluation_of_this_export_not_of_earlier_weights(tmp_path):
    run = _run(tmp_path)
    export = run / "export"
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.json").write_text(json.dumps(_report(export)))
    text = write_card(export).read_text(encoding="utf-8")
    assert "## Evaluation" in text and "| 4.125 | 6.500 |" in text and "| 75 % | 25 % |" in text
    # the export retrained after the report: the numbers are about other weights
    later = time.time() + 60
    os.utime(export / "state_dict.bin", (later, later))
    text = write_card(export).read_text(encoding="utf-8")
    assert "4.125" not in text and "evaluate this export again" in text
    # a report of another export is not this one's
    (report_dir / "report.json").write_text(json.dumps(_report(tmp_path / "elsewhere")))
    os.utime(report_dir / "report.json", (later + 1, later + 1))
    assert "## Evaluation" not in write_card(export).read_text(encoding="utf-8")


def test_a_readme_the_card_did_not_write_is_kept(tmp_path):
    export = _run(tmp_path) / "export"
    (export / "README.md").write_text("my notes")
    with pytest.raises(ValueError, match="not written by musicgen_trainer"):
        write_card(export)
    assert (export / "README.md").read_text() == "my notes"


def test_bad_license_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="licence id"):
        write_card(_run(tmp_path) / "export", license="MIT; rm -rf /")


# --- left by a training run ----------------------------------------------------------------------------

def test_training_leaves_a_card_in_export_and_export_best(tmp_path):
    from musicgen_trainer.finetune import train
    from musicgen_trainer.run_folder import claim_run_folder
    from musicgen_trainer.train_config import TrainConfig
    data = tmp_path / "data"
    for genre, freq in (("jazz", 220.0), ("rock", 330.0)):
        (data / genre).mkdir(parents=True)
        for i in range(2):
            t = np.arange(44100) / 44100
            sf.write(data / genre / f"{genre}_{i}.wav", (0.3 * np.sin(2 * np.pi * freq * (i + 1) * t)).astype(np.float32),
                     44100)
            (data / genre / f"{genre}_{i}.txt").write_text(f"{genre}, take {i}")
    config = TrainConfig(data=str(data), model="tiny", out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                         batch_size=2, segment_seconds=1.0, lr=2e-3, warmup_steps=1, steps=3, eval_every=1,
                         valid_fraction=0.5, sample_every=1000, sample_seconds=0.5, save_every=1000, progress=False,
                         device="cpu", license="apache-2.0")
    export = train(config)
    card = (export / "README.md").read_text(encoding="utf-8")
    assert "license: apache-2.0" in card and "| jazz | 2 | 2 | 2.0 s | 1 |" in card and "| `--steps` | 3 |" in card
    assert "jazz_0" not in card
    # samples asked for, but the run ended before the first: generated by the final weights, with their files
    assert (export / "samples" / "sample_01.wav").is_file() and (export / "samples" / "sample_01.png").is_file()
    assert all((export / link).is_file() for link in _links(export / "README.md") if not link.startswith("http"))
    best = tmp_path / "run" / "export-best"
    assert "(best)" in (best / "README.md").read_text(encoding="utf-8")  # rewritten at each new best
    # --overwrite removes the cards with the run's other files
    claim_run_folder(TrainConfig(**{**config.to_dict(), "overwrite": True}), resuming=False)
    assert not (export / "README.md").exists() and not (export / "samples").exists()
    assert not (best / "README.md").exists()


def test_an_export_without_its_run_says_what_it_knows(tmp_path):
    import shutil
    export = tmp_path / "shared"
    shutil.copytree(_run(tmp_path) / "export", export)
    text = write_card(export).read_text(encoding="utf-8")
    assert "run folder was not found" in text and "genres: jazz, rock" in text
    assert "No samples yet" in text and not (export / "samples").exists()
    assert "MusicGen (`facebook/musicgen-small`)" in text and "license: cc-by-nc-4.0" in text
    local = render_card(CardData(title="x", license="other", base_kind="local"))
    assert "a local MusicGen model" in local and "test model" not in local


def test_a_transformers_export_card_says_transformers(tmp_path):
    from musicgen_trainer.sharing.card_data import export_formats
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "musicgen_melody"}))
    assert export_formats(folder) == []  # no weights yet
    (folder / "model.safetensors").write_bytes(b"x")
    assert export_formats(folder) == ["transformers"]
    text = write_card(folder, samples=[]).read_text(encoding="utf-8")
    assert "library_name: transformers" in text and "MusicgenMelodyForConditionalGeneration" in text
    assert "MusicGen.get_pretrained" not in text and "convert it first" not in text


def test_a_card_made_from_another_folder_finds_the_runs_relative_dataset(tmp_path, monkeypatch):
    """train.py --data data (relative) ran in proj/: a card written from elsewhere summarises
    proj/data, found as evaluate finds it (the recorded working folder, the run folder's place),
    not the current folder's own data/."""
    proj = tmp_path / "proj"
    run = _run(proj)
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "data": "data", "out": "run",
                                                 "working_folder": str(proj)}))
    decoy = tmp_path / "elsewhere" / "data" / "techno"
    decoy.mkdir(parents=True)
    sf.write(decoy / "x.wav", np.zeros(8000, np.float32), 8000)
    monkeypatch.chdir(tmp_path / "elsewhere")
    text = write_card(run / "export", license="MIT").read_text(encoding="utf-8")
    assert "| jazz | 2 | 2 | 3.0 s | 1 |" in text and "techno" not in text
    moved = tmp_path / "moved"  # the project moved: found from the run folder's place
    (proj).rename(moved)
    text = write_card(moved / "run" / "export", license="MIT").read_text(encoding="utf-8")
    assert "| rock | 2 | 2 | 1.0 s | 1 |" in text and "techno" not in text
