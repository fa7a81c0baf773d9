"""The example builder, stats, and the command line (messages, exit codes, help)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from dataset_tools.example import GENRES, ExampleOptions, _slots, build_example
from dataset_tools.midi_render import find_soundfont, read_midi
from dataset_tools.options import PrepareOptions
from dataset_tools.prepare import prepare
from dataset_tools.stats import StatsOptions, dataset_stats

ROOT = Path(__file__).resolve().parents[2]
needs_soundfont = pytest.mark.skipif(find_soundfont() is None, reason="no General MIDI soundfont installed")


def cli(*args, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dataset_tools", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def example_library(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("example") / "library"
    report = build_example(out, ExampleOptions(pieces_per_genre=1, unknown_pieces=2, max_seconds=6.0,
                                               workers=2, progress=False))
    return out, report


@needs_soundfont
def test_example_builds_genre_folders_of_real_rendered_music(example_library):
    out, report = example_library
    assert report.failed == []
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(list(GENRES) + ["unknown"])
    files = sorted(out.rglob("*.flac"))
    assert len(files) == len(GENRES) + 2 == len(report.files)
    for path in files:
        audio, rate = sf.read(str(path))
        assert rate == 44100 and audio.ndim == 2
        assert 1.0 < len(audio) / rate <= 6.0 + 1.0 + 0.01          # capped, plus the release tail
        assert abs(audio).max() > 0.01                               # not silence
    corpus = [f["corpus"] for f in report.files]
    assert len(set(corpus)) == len(corpus)                           # no piece used twice
    sources = json.loads((out / "example_sources.json").read_text())
    assert {f["file"] for f in sources["files"]} == {p.relative_to(out).as_posix() for p in files}
    again = build_example(out, ExampleOptions(pieces_per_genre=1, unknown_pieces=2, max_seconds=6.0,
                                              workers=2, progress=False))
    assert again.up_to_date and again.files == report.files


def test_example_piece_choice_is_deterministic(tmp_path):
    def chosen(seed):
        return [(s.folder, s.candidates) for s in _slots(tmp_path, ExampleOptions(seed=seed), None)]
    assert chosen(0) == chosen(0)
    assert chosen(0) != chosen(1)
    picks = [c for _, cands in chosen(0) for c in cands]
    assert len(picks) == len(set(picks))


def test_example_can_write_midi_with_each_genres_instrument(tmp_path):
    report = build_example(tmp_path / "midi", ExampleOptions(pieces_per_genre=1, unknown_pieces=0, max_seconds=4.0,
                                                             audio_format="mid", workers=1, progress=False))
    assert len(report.files) == len(GENRES)
    for f in report.files:
        mid = read_midi(tmp_path / "midi" / f["file"])
        programs = {m.program for t in mid.tracks for m in t if m.type == "program_change"}
        assert programs == {GENRES[f["genre"]].program}
        assert 0 < mid.length <= 4.0 + 0.01


def test_example_can_play_every_genre_on_one_instrument(tmp_path):
    """--instrument 0: the harder library the genre classifier is measured on (all on piano)."""
    report = build_example(tmp_path / "piano", ExampleOptions(pieces_per_genre=1, unknown_pieces=0, max_seconds=4.0,
                                                              audio_format="mid", instrument=0, workers=1,
                                                              progress=False))
    assert {f["genre"] for f in report.files} == set(GENRES)
    for f in report.files:
        mid = read_midi(tmp_path / "piano" / f["file"])
        assert {m.program for t in mid.tracks for m in t if m.type == "program_change"} == {0}
    with pytest.raises(ValueError, match="instrument must be a General MIDI program"):
        ExampleOptions(instrument=128)


@needs_soundfont
def test_example_then_prepare_then_stats(example_library, tmp_path):
    src, example = example_library
    out = tmp_path / "dataset"
    report = prepare(src, out, PrepareOptions(segment_seconds=5.0, workers=1, progress=False))
    assert report.tracks == len(example.files) and not report.skipped
    assert set(report.unlabelled) == {f["file"] for f in example.files if f["genre"] == "unknown"}
    captions = [p.read_text() for p in out.rglob("*.txt")]
    assert any(c.startswith("Chorale music") for c in captions)
    assert any(c.startswith("Folk music") and "by Traditional" in c for c in captions)

    stats = dataset_stats(out, StatsOptions(examples=2))
    assert stats.segments == report.segments and stats.tracks == report.tracks
    for genre in GENRES:
        assert stats.genres[genre]["tracks"] == 1
        assert stats.genres[genre]["seconds"] == pytest.approx(report.genres[genre]["seconds"], abs=1e-3)
        assert stats.captions[genre] and all(genre in c.lower() for c in stats.captions[genre])
    assert stats.genres["(unlabelled)"]["tracks"] == 2
    assert Path(stats.chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shown = cli("stats", out, "--no-chart")
    assert shown.returncode == 0 and "chorale" in shown.stdout and "Caption examples" in shown.stdout


def test_cli_prepare_prints_a_summary_and_writes_the_report(small_library, tmp_path):
    done = cli("prepare", small_library, tmp_path / "out", "--workers", "1", "--no-progress",
               "--no-analysis", "--segment-seconds", "2")
    assert done.returncode == 0, done.stderr
    assert "9 tracks" in done.stdout and "prepare_report.json" in done.stdout
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["tracks"] == 9


@pytest.mark.parametrize("args, message", [
    (["prepare", "{src}", "{src}/dataset"], "inside the source folder"),
    (["prepare", "{tmp}/missing", "{tmp}/out"], "source folder not found"),
    (["prepare", "{src}", "{tmp}/out", "--segment-seconds", "0"], "segment length"),
    (["prepare", "{src}", "{tmp}/out", "--soundfont", "{tmp}/none.sf2"], "soundfont not found"),
    (["stats", "{tmp}/empty"], "no manifest.jsonl"),
    (["example", "{tmp}/ex", "--max-seconds", "1"], "max seconds"),
])
def test_cli_errors_are_one_line_without_traceback(small_library, tmp_path, args, message):
    done = cli(*[a.format(src=small_library, tmp=tmp_path) for a in args])
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (small_library / "dataset").exists()


def test_cli_help():
    for args in ([], ["prepare", "--help"], ["stats", "--help"], ["example", "--help"]):
        done = cli(*args)
        assert "usage:" in done.stdout
        assert done.returncode == (2 if not args else 0)
    assert "--segment-seconds" in cli("prepare", "--help").stdout
