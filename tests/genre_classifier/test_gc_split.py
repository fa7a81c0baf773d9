"""Dataset discovery and the split by track (no leakage, stratified, seeded, clear errors)."""
import json
from collections import Counter
from pathlib import Path

import pytest

from genre_classifier.data import DatasetError, LabelledFile, check_genres, discover, split_by_track


def _touch(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")  # discovery only looks at names
    return path


def _files(tracks_per_genre: dict, segments=(1, 5)):
    """Synthetic LabelledFiles: each track has 1..5 segment files (like prepared 30 s segments)."""
    files = []
    for genre, n in tracks_per_genre.items():
        for t in range(n):
            for s in range(segments[0] + (t % segments[1])):
                rel = f"{genre}/t{t}_{s:03d}.wav"
                files.append(LabelledFile(Path("/d") / rel, rel, genre, f"source:{genre}/t{t}.mp3"))
    return files


def test_discover_skips_unknown_hidden_and_non_audio(tmp_path):
    for rel in ["rock/a.wav", "rock/album/b.mp3", "jazz/c.flac", "unknown/d.wav", "Unknown/e.wav",
                ".hidden/f.wav", "jazz/.g.wav", "jazz/notes.txt", "jazz/h.json", "stray.wav"]:
        _touch(tmp_path / rel)
    found = {f.rel: f for f in discover(tmp_path)}
    assert sorted(found) == ["jazz/c.flac", "rock/a.wav", "rock/album/b.mp3"]
    assert found["rock/album/b.mp3"].genre == "rock"
    assert found["rock/a.wav"].track == "file:rock/a.wav"  # no manifest: a file is a track


def test_manifest_source_groups_segments_into_tracks(tmp_path):
    for rel in ["rock/song_000.wav", "rock/song_001.wav", "rock/other_000.wav"]:
        _touch(tmp_path / rel)
    lines = [{"path": "rock/song_000.wav", "source": "raw/song.mp3"},
             {"path": "rock/song_001.wav", "source": "raw/song.mp3"},
             {"path": "rock/other_000.wav", "source": "raw/other.flac"}]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    tracks = {f.rel: f.track for f in discover(tmp_path)}
    assert tracks["rock/song_000.wav"] == tracks["rock/song_001.wav"] != tracks["rock/other_000.wav"]


@pytest.mark.parametrize("seed", range(6))
def test_split_never_leaks_a_track_and_is_stratified(seed):
    files = _files({"rock": 7, "jazz": 12, "folk": 4, "metal": 20})
    split = split_by_track(files, val_fraction=0.15, test_fraction=0.15, seed=seed)
    parts = split.parts()
    tracks = {name: {f.track for f in part} for name, part in parts.items()}
    assert not tracks["train"] & tracks["val"]
    assert not tracks["train"] & tracks["test"]
    assert not tracks["val"] & tracks["test"]
    # every file used exactly once
    assert Counter(f.rel for part in parts.values() for f in part) == Counter(f.rel for f in files)
    for name, part in parts.items():  # every genre in every part
        assert {f.genre for f in part} == {"rock", "jazz", "folk", "metal"}, name
    # proportions per genre follow the fractions (by tracks, not files)
    jazz_test = {f.track for f in split.test if f.genre == "jazz"}
    assert len(jazz_test) == round(12 * 0.15)


def test_split_is_reproducible_and_depends_on_seed():
    files = _files({"rock": 10, "jazz": 10})
    a = split_by_track(files, seed=1)
    b = split_by_track(files, seed=1)
    c = split_by_track(files, seed=2)
    assert [f.rel for f in a.test] == [f.rel for f in b.test]
    assert {f.track for f in a.test} != {f.track for f in c.test} or {f.track for f in a.val} != {f.track for f in c.val}


def test_genre_with_too_few_tracks_is_named():
    files = _files({"rock": 10, "jazz": 2})
    with pytest.raises(DatasetError, match="genre 'jazz' has only 2 recording"):
        split_by_track(files)


def test_single_genre_and_empty_datasets_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="only one genre \\('rock'\\)"):
        check_genres(_files({"rock": 5}), tmp_path)
    with pytest.raises(DatasetError, match="no audio files"):
        check_genres([], tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "missing")
