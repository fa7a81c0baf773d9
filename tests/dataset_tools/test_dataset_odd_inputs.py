"""Inputs found in real libraries beyond the fixture library: file names that are not
UTF-8, DC offsets, float files louder than full scale, and ffmpeg's error wording."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from dt_helpers import RATE, tone

from dataset_tools.audio_io import ffmpeg_reason
from dataset_tools.files import text_name
from dataset_tools.options import PrepareOptions
from dataset_tools.prepare import prepare
from dataset_tools.segments import trim_silence


def test_text_name_reads_non_utf8_bytes_as_cp1252_and_keeps_names_unique():
    latin1 = os.fsdecode(b"Caf\xe9 del Mar.wav")  # how Python sees a Latin-1 file name
    assert text_name("Café.wav") == "Café.wav"
    assert text_name(latin1) == "Café del Mar.wav"
    assert text_name(os.fsdecode(b"\x93Quoted\x94.mp3")) == "\u201cQuoted\u201d.mp3"
    # the same letters already taken by a real UTF-8 sibling: the bytes are spelled out
    spelled = text_name(latin1, {"Café del Mar.wav", latin1})
    assert spelled == "Caf\\xe9 del Mar.wav" and spelled.encode("utf-8")


def test_a_library_with_non_utf8_names_converts_with_readable_captions(tmp_path):
    src = tmp_path / "src"
    folder = os.path.join(os.fsencode(src), b"Chanson fran\xe7aise")  # a non-UTF-8 genre folder
    try:
        os.makedirs(folder)
    except OSError:  # e.g. macOS: APFS refuses names that are not UTF-8
        pytest.skip("this file system refuses names that are not UTF-8")
    for raw in (b"01 - Caf\xe9 del Mar.wav", b"02 - Cafe del Mar.wav"):
        sf.write(os.path.join(folder, raw), tone(2.0), RATE)
    out = tmp_path / "out"
    report = prepare(src, out, PrepareOptions(workers=2, progress=False, analyze=False))
    assert report.tracks == 2 and report.failed == [] and report.skipped == []
    captions = sorted(p.read_text(encoding="utf-8") for p in out.rglob("*.txt"))
    assert captions[0].startswith("Chanson française music, Cafe del Mar")
    assert captions[1].startswith("Chanson française music, Café del Mar")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["source"] for r in rows) == ["Chanson française/01 - Café del Mar.wav",
                                                 "Chanson française/02 - Cafe del Mar.wav"]
    for row in rows:
        assert sf.info(str(out / row["path"])).frames == 2 * RATE
    # the re-run finds the same names again: nothing to redo
    again = prepare(src, out, PrepareOptions(workers=2, progress=False, analyze=False))
    assert again.up_to_date == 2 and again.converted_this_run == 0


def test_dc_offset_is_not_sound():
    dc_only = np.full(RATE, 0.5, dtype=np.float32)
    assert trim_silence(dc_only, -60.0) == (0, 0)
    music = np.concatenate([np.zeros(RATE // 2, np.float32), tone(1.0), np.zeros(RATE // 2, np.float32)])
    start, end = trim_silence(music + 0.2, -60.0)  # the same music on a DC offset trims the same
    assert (start, end) == trim_silence(music, -60.0) and start >= RATE // 2 - 1


def test_float_sources_above_full_scale_are_scaled_not_clipped(tmp_path):
    src = tmp_path / "src"
    (src / "rock").mkdir(parents=True)
    hot = tone(2.0) * 8.0  # peak 4.0
    sf.write(src / "rock" / "hot.wav", hot, RATE, subtype="FLOAT")
    out = tmp_path / "out"
    report = prepare(src, out, PrepareOptions(workers=1, progress=False, analyze=False, subtype="FLOAT"))
    assert report.tracks == 1
    written, _ = sf.read(str(out / "rock" / "hot.wav"), dtype="float32")
    assert np.abs(written).max() <= 1.0
    np.testing.assert_allclose(written, hot[:len(written)] / 4.0, atol=1e-6)  # same waveform, no clipping


def test_ffmpeg_reasons_lose_their_codec_address_prefix():
    assert ffmpeg_reason("[mjpeg @ 0x56549bec8bc0] No JPEG data found in image\n") == "No JPEG data found in image"
    assert ffmpeg_reason("x.mp3: Invalid data found when processing input") == \
        "Invalid data found when processing input"


def test_trim_scans_in_blocks_with_the_same_result(monkeypatch):
    import dataset_tools.segments as segments
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, channels = int(rng.integers(1, 3000)), int(rng.integers(1, 3))
        x = np.zeros((channels, n), np.float32)
        if rng.random() < 0.8:  # a burst of sound somewhere (else: silence)
            a = int(rng.integers(0, n))
            b = int(rng.integers(a, n + 1))
            x[:, a:b] = rng.normal(0, 0.3, (channels, b - a))
        x += np.float32(rng.choice([0.0, 0.2]))  # with or without a DC offset
        x = x[0] if rng.random() < 0.3 else x
        monkeypatch.setattr(segments, "TRIM_BLOCK", 1 << 30)
        whole = segments.trim_silence(x, -60.0)
        monkeypatch.setattr(segments, "TRIM_BLOCK", int(rng.integers(1, 200)))
        assert segments.trim_silence(x, -60.0) == whole
