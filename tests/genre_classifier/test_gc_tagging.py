"""predict and tag: dry run vs apply, captions and manifest updated, nothing overwritten or lost."""
import csv
import json
import os

import pytest

from genre_classifier.filing import caption_with_genre, place_file
from genre_classifier.tagging import TagConfig, predict, tag
from gc_helpers import make_prepared_unknown, needs_ffmpeg, read_jsonl, to_mp3, write_wav

GENRES = ["beats", "buzz", "drone", "plucks"]


def _snapshot(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _audio(root):
    return sorted(p.name for p in root.rglob("*.wav")) + sorted(p.name for p in root.rglob("*.mp3"))


def test_predict_top3(classifier, tmp_path):
    good = write_wav(tmp_path / "song.wav", 7.0, genre="drone", seed=123)
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    results = predict([good, bad], classifier, workers=1)
    assert len(results[0].top) == 3 and results[0].top[0][0] == "drone"
    probs = [p for _, p in results[0].top]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert results[1].top == [] and results[1].reason


def test_dry_run_moves_nothing_and_writes_results(trained_model, tmp_path):
    dataset = make_prepared_unknown(tmp_path / "ds")
    write_wav(dataset / "unknown" / "raw_song.wav", 5.0, genre="plucks", seed=77)
    (dataset / "unknown" / "corrupt.wav").write_bytes(b"RIFF0000WAVEjunk")
    before = _snapshot(dataset)
    result = tag(TagConfig(directory=dataset / "unknown", model=trained_model, min_confidence=0.0,
                           workers=2, progress=False))
    after = _snapshot(dataset)
    assert set(after) - set(before) == {"unknown/genre_tags.csv", "unknown/genre_tags.json"}
    assert set(before) <= set(after)
    rows = {r["file"]: r for r in csv.DictReader(open(result.csv_path))}
    assert rows["corrupt.wav"]["status"] == "skipped" and rows["corrupt.wav"]["note"]
    assert all(rows[f]["status"] == "tagged" and rows[f]["action"] == "dry run" for f in rows if f != "corrupt.wav")
    # the two segments of one source track are decided together
    assert rows["track0_000.wav"]["genre"] == rows["track0_001.wav"]["genre"]
    assert rows["track0_000.wav"]["confidence"] == rows["track0_001.wav"]["confidence"]
    assert json.loads(result.json_path.read_text())["counts"]["skipped"] == 1
    # a second run never overwrites the first run's results
    again = tag(TagConfig(directory=dataset / "unknown", model=trained_model, workers=1, progress=False))
    assert again.csv_path.name == "genre_tags-1.csv" and result.csv_path.exists()


def test_threshold_keeps_tracks_unknown(trained_model, tmp_path):
    dataset = make_prepared_unknown(tmp_path / "ds")
    before = _snapshot(dataset)
    result = tag(TagConfig(directory=dataset / "unknown", model=trained_model, min_confidence=1.0,
                           apply="move", workers=1, progress=False))
    assert {r.status for r in result.rows} == {"unknown"} and {r.genre for r in result.rows} == {"unknown"}
    assert set(before) <= set(_snapshot(dataset))  # nothing moved
    assert result.counts().get("moved", 0) == 0


def test_apply_move_files_tracks_updates_captions_and_manifest(trained_model, tmp_path):
    dataset = make_prepared_unknown(tmp_path / "ds")
    # a same-named file already waits in every genre folder: it must survive untouched
    for genre in GENRES:
        (dataset / genre).mkdir()
        (dataset / genre / "track0_000.wav").write_bytes(b"precious")
    audio_before = len(_audio(dataset))
    result = tag(TagConfig(directory=dataset / "unknown", model=trained_model, min_confidence=0.0,
                           apply="move", workers=2, progress=False))
    assert result.counts()["moved"] == 4 and not result.counts().get("failed")
    assert len(_audio(dataset)) == audio_before  # no track lost
    assert list((dataset / "unknown").glob("*.wav")) == []
    for genre in GENRES:
        assert (dataset / genre / "track0_000.wav").read_bytes() == b"precious"
    manifest = read_jsonl(dataset / "manifest.jsonl")
    assert len(manifest) == 4
    for row in result.rows:
        dst = dataset / row.genre / os.path.basename(row.destination)
        assert row.action == "moved" and dst.exists() and not (dataset / "unknown" / row.file).exists()
        if row.file == "track0_000.wav":
            assert dst.name == "track0_000-1.wav"  # a free name, not an overwrite
        caption = dst.with_suffix(".txt").read_text().strip()
        assert caption == (f"{row.genre.capitalize()} music, Track{row.file[5]}, medium tempo at "
                           f"{80 + int(row.file[5])} bpm, in A minor")
        meta = json.loads(dst.with_suffix(".json").read_text())
        assert meta["genre"] == row.genre and meta["description"] == caption and meta["name"] == dst.stem
        assert meta["keywords"] == ["medium tempo"]  # other fields kept
        entry = next(m for m in manifest if m["path"] == f"{row.genre}/{dst.name}")
        assert entry["genre"] == row.genre and entry["info_path"] is None
        assert entry["source"].startswith("unknown/track")  # the other fields are kept
        subset = read_jsonl(dataset / f"{entry['split']}.jsonl")  # train.jsonl / valid.jsonl follow
        assert any(m["path"] == entry["path"] and m["genre"] == row.genre for m in subset)
    assert not any(m["path"].startswith("unknown/") for m in manifest)
    assert len(read_jsonl(dataset / "train.jsonl")) + len(read_jsonl(dataset / "valid.jsonl")) == 4
    assert read_jsonl(dataset / "unlabelled.jsonl") == []  # they all have a genre now
    saved = json.loads(result.json_path.read_text())
    assert [r["action"] for r in saved["rows"]] == ["moved"] * 4  # results rewritten after filing


def test_apply_copy_keeps_originals_and_adds_manifest_lines(trained_model, tmp_path):
    dataset = make_prepared_unknown(tmp_path / "ds")
    original_caption = (dataset / "unknown" / "track1_001.txt").read_text()
    result = tag(TagConfig(directory=dataset / "unknown", model=trained_model, min_confidence=0.0,
                           apply="copy", workers=1, progress=False))
    assert result.counts()["copied"] == 4
    assert len(list((dataset / "unknown").glob("*.wav"))) == 4  # originals stay
    assert (dataset / "unknown" / "track1_001.txt").read_text() == original_caption
    manifest = read_jsonl(dataset / "manifest.jsonl")
    assert len(manifest) == 8 and sum(m["genre"] is None for m in manifest) == 4
    assert len(read_jsonl(dataset / "unlabelled.jsonl")) == 4
    for row in result.rows:
        copy = dataset / row.genre / os.path.basename(row.destination)
        assert copy.read_bytes() == (dataset / "unknown" / row.file).read_bytes()
        assert copy.with_suffix(".txt").read_text().startswith(f"{row.genre.capitalize()} music, ")


@needs_ffmpeg
def test_apply_copy_raw_files_into_another_dataset(trained_model, tmp_path):
    inbox = tmp_path / "inbox"
    wav = write_wav(inbox / "a.wav", 6.0, genre="beats", seed=5)
    mp3 = to_mp3(write_wav(inbox / "sub" / "b.wav", 6.0, genre="buzz", seed=6))
    into = tmp_path / "library"
    into.mkdir()
    result = tag(TagConfig(directory=inbox, model=trained_model, min_confidence=0.0, apply="copy", into=into,
                           workers=1, progress=False))
    assert wav.exists() and mp3.exists()  # copies: the originals stay
    copies = {r.file: r.destination for r in result.rows}
    for rel, dst in copies.items():
        assert os.path.exists(dst) and os.path.getsize(dst) == os.path.getsize(inbox / rel)
    assert copies["sub/b.mp3"].endswith(".mp3")


def test_apply_needs_a_destination(trained_model, tmp_path):
    inbox = tmp_path / "inbox"
    write_wav(inbox / "a.wav", 4.0)
    with pytest.raises(ValueError, match="--into"):
        TagConfig(directory=inbox, model=trained_model, apply="move")
    with pytest.raises(ValueError, match="min-confidence"):
        TagConfig(directory=inbox, model=trained_model, min_confidence=1.5)


def test_caption_with_genre():
    assert caption_with_genre("calm piano piece", "jazz") == "Jazz music, calm piano piece"
    assert caption_with_genre("a Jazz trio, upbeat", "jazz") == "a Jazz trio, upbeat"
    assert caption_with_genre("hip hop beat", "hip_hop") == "hip hop beat"
    assert caption_with_genre("jazzy", "jazz") == "Jazz music, jazzy"
    assert caption_with_genre("", "folk") == "Folk music"


def test_place_file_never_overwrites(tmp_path):
    src, dst = tmp_path / "a.wav", tmp_path / "b.wav"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    for move in (False, True):
        with pytest.raises(FileExistsError):
            place_file(src, dst, move=move)
        assert src.read_bytes() == b"new" and dst.read_bytes() == b"old"
    place_file(src, tmp_path / "c.wav", move=True)
    assert not src.exists() and (tmp_path / "c.wav").read_bytes() == b"new"
