"""End to end: ``prepare`` over a library with every format and every kind of bad input.

The ``prepared`` fixture (conftest.py) runs prepare once with 2 worker processes,
2-second segments and a 0.5 s minimum remainder; these tests inspect what it wrote.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile as sf

from dt_helpers import MIN_SECONDS, RATE, SEGMENT_SECONDS

MUSIC_INFO_FIELDS = ("title", "artist", "key", "bpm", "genre", "moods", "description", "name",
                     "instrument", "keywords")
AUDIOCRAFT_KEYS = ("path", "duration", "sample_rate", "amplitude", "weight", "info_path")
LOSSY_FRAME = {".mp3": 1152, ".m4a": 1024, ".aac": 1024, ".opus": 960, ".ogg": 2048}


def rows_by_source(out: Path) -> dict[str, list[dict]]:
    rows = defaultdict(list)
    for line in (out / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["source"]].append(row)
    return {k: sorted(v, key=lambda r: r["segment"]) for k, v in rows.items()}


def test_every_file_is_converted_or_skipped_with_a_reason(prepared):
    report = prepared.report
    skipped = {item["source"]: item["reason"] for item in report.skipped}
    converted = set(rows_by_source(prepared.out))
    for rel, (status, detail) in prepared.lib.expect.items():
        if status == "converted":
            assert rel in converted, f"{rel} was not converted: {skipped.get(rel)}"
        else:
            assert rel in skipped, f"{rel} should be skipped"
            assert detail.lower() in skipped[rel].lower(), (rel, skipped[rel])
            assert skipped[rel] and "\n" not in skipped[rel]
    # nothing else was skipped or failed, and the folder named like a file was scanned
    assert set(skipped) == {r for r, (s, _) in prepared.lib.expect.items() if s == "skipped"} \
        | {prepared.lib.folder_named_like_file}
    assert report.failed == []
    assert report.converted_this_run == len(prepared.lib.converted()) == report.tracks
    assert {i["source"] for i in report.ignored} == set(prepared.lib.ignored)
    assert not any(".DS_Store" in i["source"] for i in report.skipped + report.ignored)


def test_report_file_matches_and_lists_durations_per_genre(prepared):
    saved = json.loads((prepared.out / "prepare_report.json").read_text())
    assert saved["segments"] == prepared.report.segments
    rows = rows_by_source(prepared.out)
    for genre in ("rock", "jazz", "classical"):
        total = sum(r["duration"] for src, rs in rows.items() if src.startswith(genre + "/") for r in rs)
        assert saved["genres"][genre]["seconds"] == pytest.approx(total, abs=1e-3)
        assert saved["genres"][genre]["tracks"] == sum(1 for s in rows if s.startswith(genre + "/"))
    assert "Skipped" in prepared.report.summary() and "bad/zero.mp3" in prepared.report.summary()


def test_outputs_are_44k_mono_pcm16_and_as_long_as_the_source(prepared):
    rows = rows_by_source(prepared.out)
    for rel, (status, seconds) in prepared.lib.expect.items():
        if status != "converted":
            continue
        frames = 0
        for row in rows[rel]:
            info = sf.info(str(prepared.out / row["path"]))
            assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16"), rel
            assert info.frames == round(row["duration"] * RATE)
            frames += info.frames
        if seconds is None:
            continue
        ext = Path(rel).suffix.lower()
        tolerance = LOSSY_FRAME.get(ext, 1)  # one sample frame, or one codec frame if lossy
        assert abs(frames - seconds * RATE) <= tolerance, (rel, frames / RATE, seconds)


def test_long_tracks_are_segmented_and_short_remainders_dropped(prepared):
    rows = rows_by_source(prepared.out)
    assert [r["duration"] for r in rows["jazz/Long Take.flac"]] == pytest.approx([2.0, 2.0, 1.0], abs=1e-4)
    assert [r["duration"] for r in rows["jazz/Almost.flac"]] == pytest.approx([2.0, 2.0], abs=1e-4)
    assert [r["path"] for r in rows["jazz/Long Take.flac"]] == [
        "jazz/Long Take__000.wav", "jazz/Long Take__001.wav", "jazz/Long Take__002.wav"]
    # shorter than the minimum remainder, but a whole track: kept
    assert [r["duration"] for r in rows["misc/short clip.wav"]] == pytest.approx([0.5], abs=1e-4)
    assert 0.5 < MIN_SECONDS + 0.01 and SEGMENT_SECONDS == 2.0
    for src, rs in rows.items():
        assert all(r["duration"] <= SEGMENT_SECONDS + 1e-6 for r in rs)
        if len(rs) > 1:
            assert all(r["duration"] >= MIN_SECONDS for r in rs), src


def test_name_collisions_never_overwrite(prepared):
    rows = rows_by_source(prepared.out)
    paths = [r["path"] for rs in rows.values() for r in rs]
    assert len(paths) == len(set(paths))
    assert rows["rock/Song.flac"][0]["path"] != rows["rock/Song.wav"][0]["path"]
    # sorted first, Song.flac keeps the plain name (2 segments); Song.wav gets its extension
    assert [r["path"] for r in rows["rock/Song.flac"]] == ["rock/Song__000.wav", "rock/Song__001.wav"]
    assert [r["path"] for r in rows["rock/Song.wav"]] == ["rock/Song-wav.wav"]
    # each output holds its own source's audio (1.5 s vs 2.5 s)
    assert sum(r["duration"] for r in rows["rock/Song.wav"]) == pytest.approx(1.5, abs=1e-4)
    assert sum(r["duration"] for r in rows["rock/Song.flac"]) == pytest.approx(2.5, abs=1e-4)
    assert "rock/What_.wav" in {r["path"] for r in rows["rock/What?.wav"] + rows["rock/What_.wav"]}
    assert all("?" not in p for p in paths)


def test_midi_files_are_rendered_with_their_tails_trimmed(prepared):
    rows = rows_by_source(prepared.out)
    for rel in ("classical/Symphony No.3.mid", "classical/Orphans.MIDI"):
        total = sum(r["duration"] for r in rows[rel])
        # three notes ending at 1.5 s, then at most the 1 s release
        assert 1.3 < total <= 1.5 + 1.0 + 0.01, (rel, total)
    repeated = sum(r["duration"] for r in rows["classical/Repeated Notes.mid"])
    assert 0.9 < repeated <= 1.0 + 1.0 + 0.01
    repaired = {r["source"]: " ".join(r["repairs"]) for r in prepared.report.repaired}
    assert "re-struck" in repaired["classical/Repeated Notes.mid"]
    assert "without a note-on" in repaired["classical/Orphans.MIDI"]


def test_source_folder_is_never_modified(prepared):
    assert prepared.after == prepared.before


def test_every_segment_has_caption_and_complete_audiocraft_json(prepared):
    for rel, rs in rows_by_source(prepared.out).items():
        for row in rs:
            wav = prepared.out / row["path"]
            caption = wav.with_suffix(".txt").read_text(encoding="utf-8")
            info = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
            assert set(MUSIC_INFO_FIELDS) <= set(info), rel
            assert info["description"] == caption and caption.strip()
            assert isinstance(info["moods"], list) and isinstance(info["keywords"], list)
            assert info["name"] == wav.stem


def test_captions_use_genre_cleaned_title_and_nothing_for_unknown(prepared):
    rows = rows_by_source(prepared.out)

    def info(rel):
        return json.loads((prepared.out / rows[rel][0]["path"]).with_suffix(".json").read_text())

    highway = info("rock/01 - Highway_Song.wav")
    assert highway["genre"] == "rock" and highway["title"] == "Highway Song"
    assert highway["description"].lower().startswith("rock music, highway song")
    assert "01" not in highway["description"] and "_" not in highway["description"]
    assert info("jazz/Surround 5.1.wav")["title"] == "Surround 5.1"   # dots inside names kept
    assert info("classical/Symphony No.3.mid")["title"] == "Symphony No.3"
    assert "acoustic grand piano" in info("classical/Symphony No.3.mid")["description"]
    for rel in ("unknown/Mystery Track.wav", "unknow/Another One.flac", "Loose Track.wav"):
        meta = info(rel)
        assert meta["genre"] == ""
        words = meta["description"].lower()
        assert not any(w in words for w in ("unknown", "unknow", "music,", "none")), words
        assert meta["title"].lower() in words


def test_manifests_are_audiocraft_jsonl_with_a_leak_free_split(prepared):
    out = prepared.out
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    valid = [json.loads(line) for line in (out / "valid.jsonl").read_text().splitlines()]
    for row in manifest:
        assert list(row)[:6] == list(AUDIOCRAFT_KEYS)
        assert row["amplitude"] is None and row["weight"] is None and row["info_path"] is None
        assert not Path(row["path"]).is_absolute() and (out / row["path"]).is_file()
        assert row["sample_rate"] == RATE and row["split"] in ("train", "valid")
    assert sorted(map(json.dumps, train + valid)) == sorted(map(json.dumps, manifest))
    assert {r["source"] for r in train}.isdisjoint({r["source"] for r in valid})
    assert valid, "a 30 % validation split of 27 tracks is not empty"
    unlabelled = {json.loads(line)["source"] for line in (out / "unlabelled.jsonl").read_text().splitlines()}
    assert unlabelled == {"unknown/Mystery Track.wav", "unknow/Another One.flac", "Loose Track.wav"}
    assert all(r["genre"] is None for r in manifest if r["source"] in unlabelled)
    assert {r["genre"] for r in manifest if r["source"].startswith("rock/")} == {"rock"}


def test_audiocraft_music_dataset_loads_every_segment(prepared, monkeypatch, tmp_path):
    """audiocraft's own MusicDataset reads the manifest, the WAVs and the .json files with
    every field required; the text MusicGen is conditioned on is our caption."""
    pytest.importorskip("torch")
    music_dataset = pytest.importorskip("audiocraft.data.music_dataset")
    audio_dataset = pytest.importorskip("audiocraft.data.audio_dataset")
    environment = pytest.importorskip("audiocraft.environment")
    # The audiocraft wheel ships without its config/teams/*.yaml, which the dataset reads
    # (for path mappers only): give it a minimal one.
    config = tmp_path / "audiocraft_team.yaml"
    config.write_text(f"default:\n  dora_dir: {tmp_path}\n  reference_dir: {tmp_path}\n"
                      "  partitions: {global: local, team: local}\n")
    monkeypatch.setenv("AUDIOCRAFT_CONFIG", str(config))
    monkeypatch.setenv("AUDIOCRAFT_CLUSTER", "default")
    environment.AudioCraftEnvironment.reset()
    monkeypatch.chdir(prepared.out)  # manifest paths are relative to OUT
    try:
        metas = audio_dataset.load_audio_meta(prepared.out / "manifest.jsonl", resolve=False)
        dataset = music_dataset.MusicDataset(metas, segment_duration=None, shuffle=False, sample_rate=RATE,
                                             channels=1, return_info=True, info_fields_required=True)
        assert len(dataset) == prepared.report.segments
        for index in range(len(dataset)):
            wav, info = dataset[index]
            caption = (prepared.out / info.meta.path).with_suffix(".txt").read_text(encoding="utf-8")
            assert info.description == caption
            assert info.to_condition_attributes().text["description"] == caption
            assert wav.shape[0] == 1 and wav.shape[-1] == round(info.meta.duration * RATE)
    finally:  # also on failure: later tests must not get this test's temporary team config
        environment.AudioCraftEnvironment.reset()
