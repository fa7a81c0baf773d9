"""Which recording a file belongs to (issue 19, item 3): segments of one recording never on both
sides of a split, even without the manifest next to the genre folders; a test split with one
recording of a genre is refused with the reason."""
import json
import logging
from collections import defaultdict
from pathlib import Path

import pytest

from genre_classifier.__main__ import main
from genre_classifier.data import DatasetError, LabelledFile, discover, genre_counts, split_by_track
from genre_classifier.grouping import group_recordings, segment_base


def _touch(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")  # discovery and grouping only look at names
    return path


def _segment_tree(root: Path, songs_per_genre=6, segments=4):
    """``root/<genre>/song<i>__00<j>.wav`` as prepare names the 30 s segments of long songs."""
    for genre in ("rock", "jazz"):
        for i in range(songs_per_genre):
            for j in range(segments):
                _touch(root / genre / f"{genre} song{i}__{j:03d}.wav")
    return root


def test_segment_names_group_a_copied_tree_without_manifest(tmp_path):
    data = _segment_tree(tmp_path / "copied")
    files = discover(data)
    assert len(files) == 2 * 6 * 4 and len({f.track for f in files}) == 2 * 6  # 48 segments, 12 recordings
    for seed in range(5):
        split = split_by_track(files, val_fraction=0.2, test_fraction=0.3, seed=seed)
        sides = defaultdict(set)
        for part, part_files in split.parts().items():
            for f in part_files:
                sides[segment_base(f.path)].add(part)
        assert all(len(parts) == 1 for parts in sides.values()), sides  # no recording on two sides


def test_manifest_in_a_parent_folder_is_used(tmp_path):
    """DATA is a genre tree inside a prepared dataset: the manifest one level up names the sources
    (the file names here are not segment names, so only the manifest can group them)."""
    prepared = tmp_path / "prepared"
    lines = []
    for genre in ("rock", "jazz"):
        for i in range(4):
            for part in ("a", "b"):
                rel = f"subset/{genre}/take{i}{part}.wav"
                _touch(prepared / rel)
                lines.append({"path": rel, "source": f"{genre}/take{i}.flac"})
    (prepared / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    files = discover(prepared / "subset")
    tracks = {f.rel: f.track for f in files}
    assert tracks["rock/take0a.wav"] == tracks["rock/take0b.wav"] == "source:rock/take0.flac"
    assert len(set(tracks.values())) == 8


def test_manifest_in_a_sub_folder_is_used(tmp_path):
    """DATA holds a prepared dataset one level down (its manifest names paths relative to it)."""
    _touch(tmp_path / "rock" / "ds" / "x1.wav")
    _touch(tmp_path / "rock" / "ds" / "x2.wav")
    (tmp_path / "rock" / "ds" / "manifest.jsonl").write_text(
        "".join(json.dumps({"path": p, "source": "raw/x.mp3"}) + "\n" for p in ("x1.wav", "x2.wav")))
    grouping = group_recordings(tmp_path, [tmp_path / "rock" / "ds" / "x1.wav", tmp_path / "rock" / "ds" / "x2.wav"])
    assert grouping.keys == ["source:raw/x.mp3"] * 2 and grouping.by_manifest == 2


def test_without_manifest_or_segment_names_the_split_by_file_is_announced(tmp_path, caplog):
    for rel in ("rock/a.wav", "rock/b.wav", "jazz/c.wav"):
        _touch(tmp_path / rel)
    with caplog.at_level(logging.WARNING, logger="genre_classifier"):
        files = discover(tmp_path)
    assert {f.track for f in files} == {"file:rock/a.wav", "file:rock/b.wav", "file:jazz/c.wav"}
    assert "split is BY FILE" in caplog.text and "overstated" in caplog.text


def test_recordings_are_counted_next_to_segments():
    files = [LabelledFile(Path(f"/d/rock/s{i}__{j:03d}.wav"), f"rock/s{i}__{j:03d}.wav", "rock", f"recording:s{i}")
             for i in range(2) for j in range(3)]
    counts = genre_counts(files, {f.path: 10 for f in files})
    assert counts == {"rock": {"recordings": 2, "files": 6, "windows": 60}}


def test_a_test_split_with_one_recording_of_a_genre_is_refused():
    files = [LabelledFile(Path(f"/d/{g}/t{i}.wav"), f"{g}/t{i}.wav", g, f"file:{g}/t{i}.wav")
             for g, n in (("rock", 10), ("jazz", 3)) for i in range(n)]
    with pytest.raises(DatasetError, match=r"genre 'jazz' has only 3 recording.*2 for the test.*not a figure"):
        split_by_track(files, val_fraction=0.15, test_fraction=0.15)
    split = split_by_track(files + [LabelledFile(Path("/d/jazz/t3.wav"), "jazz/t3.wav", "jazz", "file:jazz/t3.wav")])
    assert len({f.track for f in split.test if f.genre == "jazz"}) == 2  # 4 recordings: 2 test, 1 val, 1 train


def test_train_refuses_it_in_one_line_with_exit_2(tmp_path, capsys):
    for g, n in (("rock", 10), ("jazz", 3)):
        for i in range(n):
            _touch(tmp_path / "data" / g / f"t{i}.wav")
    status = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "m"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith("error: genre 'jazz' has only 3 recording") and "--cv K" in err[-1]
    assert not (tmp_path / "m").exists()  # refused before any work


def test_evaluate_warns_about_a_genre_with_one_held_out_recording(trained_model, tmp_path, caplog):
    from gc_helpers import write_wav
    from genre_classifier.evaluation import EvaluateConfig, evaluate
    write_wav(tmp_path / "other" / "drone" / "d.wav", 4.0, genre="drone", seed=71)
    for i in range(2):
        write_wav(tmp_path / "other" / "beats" / f"b{i}.wav", 4.0, genre="beats", seed=72 + i)
    with caplog.at_level(logging.WARNING, logger="genre_classifier"):
        evaluate(EvaluateConfig(data=tmp_path / "other", model=trained_model, out=tmp_path / "eval", progress=False))
    assert "genre 'drone' has only 1 held-out recording" in caplog.text
    assert "genre 'beats'" not in caplog.text
