"""Unit tests of the pieces: names, captions, options, segments, analysis, MIDI, workers."""
from __future__ import annotations

import os

import numpy as np
import pytest

from dt_helpers import RATE, tone, write_midi

from dataset_tools.analysis import analyse
from dataset_tools.audio_io import AudioDecodeError, load_audio, to_channels
from dataset_tools.captions import (DEFAULT_TEMPLATE, caption_values, parse_filename, render_caption,
                                    template_fields)
from dataset_tools.files import SourceFile, assign_output_stems, check_paths, safe_name
from dataset_tools.manifest import split_tracks
from dataset_tools.midi_render import MidiError, find_soundfont, read_midi, render_midi, sanitize_midi
from dataset_tools.options import PrepareOptions
from dataset_tools.parallel import run_tasks
from dataset_tools.segments import segment_bounds, trim_silence


@pytest.mark.parametrize("stem, title, artist", [
    ("01 - Highway_Song", "Highway Song", ""),
    ("01_Highway_Song", "Highway Song", ""),
    ("1-03 Something", "Something", ""),
    ("[12] Red", "Red", ""),
    ("Track 05 - Green", "Green", ""),
    ("07 - Daft Punk - One More Time", "One More Time", "Daft Punk"),
    ("Symphony No.3 in E flat", "Symphony No.3 in E flat", ""),
    ("Op. 27 No.2", "Op. 27 No.2", ""),
    ("99 Luftballons", "99 Luftballons", ""),
    ("1.5 Degrees", "1.5 Degrees", ""),
    ("01", "01", ""),
])
def test_titles_are_cleaned_from_file_names(stem, title, artist):
    assert parse_filename(stem) == (title, artist)


def test_caption_parts_with_unknown_fields_are_dropped():
    full = caption_values(genre="hip hop", title="Flow", artist="", bpm=92.0, key="A minor",
                          instrument="", name="Flow")
    assert render_caption(DEFAULT_TEMPLATE, full) == "Hip hop music, Flow, medium tempo at 92 bpm, in A minor"
    bare = caption_values(genre="", title="Flow", artist="", bpm=None, key=None, instrument="", name="x")
    assert render_caption(DEFAULT_TEMPLATE, bare) == "Flow"
    assert render_caption("{genre} track called {title}; {key}", full) == "Hip hop track called Flow; A minor"
    with pytest.raises(ValueError, match="unknown caption field"):
        template_fields("{genre} {colour}")
    with pytest.raises(ValueError, match="unknown caption field"):
        PrepareOptions(caption_template="{colour} music")


@pytest.mark.parametrize("kwargs, words", [
    (dict(sample_rate=100), "sample rate"), (dict(channels=3), "channels"),
    (dict(segment_seconds=0.5), "segment length"), (dict(overlap_seconds=30.0), "overlap"),
    (dict(min_seconds=-1.0), "minimum segment"), (dict(trim_db=6.0), "silence threshold"),
    (dict(loudness_lufs=3.0), "loudness"), (dict(valid_fraction=1.0), "validation fraction"),
    (dict(workers=0), "workers"), (dict(subtype="MP3"), "WAV format"),
])
def test_bad_options_are_refused_with_a_readable_message(kwargs, words):
    with pytest.raises(ValueError, match=words):
        PrepareOptions(**kwargs)


def test_safe_names_are_recognisable_and_unique(tmp_path):
    assert safe_name('AC/DC: "Live" <1979>?') == "AC_DC_ _Live_ _1979_"
    assert safe_name("Café  del Mar") == "Café del Mar"
    assert safe_name("con") == "_con" and safe_name("...") == "untitled"
    assert "__" not in safe_name("a__b___c")  # reserved for segment numbers
    sources = [SourceFile(tmp_path / r, r, r.split("/")[0], "audio", 1, 1)
               for r in ("rock/Song.mp3", "rock/Song.flac", "rock/song.wav", "rock/a:b.wav", "rock/a?b.wav")]
    stems = assign_output_stems(sources)
    assert stems["rock/Song.flac"] == "rock/Song" and stems["rock/Song.mp3"] == "rock/Song-mp3"
    assert stems["rock/song.wav"] == "rock/song-wav"  # case-insensitive file systems
    assert len({s.lower() for s in stems.values()}) == 5
    assert assign_output_stems(list(reversed(sources))) == stems  # stable, order-independent


def test_out_inside_src_and_missing_src_are_errors(tmp_path):
    (tmp_path / "music").mkdir()
    with pytest.raises(ValueError, match="inside the source folder"):
        check_paths(tmp_path / "music", tmp_path / "music" / "dataset")
    with pytest.raises(ValueError, match="inside the source folder"):
        check_paths(tmp_path / "music", tmp_path / "music")
    with pytest.raises(ValueError, match="not found"):
        check_paths(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ValueError, match="inside the output folder"):
        check_paths(tmp_path / "music", tmp_path)


def test_segment_bounds():
    sr = 10
    assert segment_bounds(50, sr, 2.0, 0.0, 1.0) == [(0, 20), (20, 40), (40, 50)]
    assert segment_bounds(45, sr, 2.0, 0.0, 1.0) == [(0, 20), (20, 40)]       # 0.5 s remainder dropped
    assert segment_bounds(5, sr, 2.0, 0.0, 1.0) == [(0, 5)]                    # never the whole track
    assert segment_bounds(50, sr, 2.0, 1.0, 0.5) == [(0, 20), (10, 30), (20, 40), (30, 50)]  # overlap
    assert segment_bounds(0, sr, 2.0, 0.0, 1.0) == []


def test_trim_silence_and_channel_conversion():
    y = np.concatenate([np.zeros(100), np.full(50, 0.5), np.zeros(10), np.full(5, -0.2), np.full(30, 1e-5)])
    assert trim_silence(y.astype(np.float32), -60.0) == (100, 165)
    assert trim_silence(np.zeros(10, np.float32), -60.0) == (0, 0)
    six = np.ones((6, 100), np.float32) * 0.1
    assert to_channels(six, 1).shape == (100,)
    assert to_channels(six, 2).shape == (2, 100)
    assert to_channels(np.ones(100, np.float32), 2).shape == (2, 100)
    assert np.abs(to_channels(np.ones((6, 10), np.float32), 2)).max() <= 1.0


def test_load_audio_reasons(tmp_path):
    with pytest.raises(AudioDecodeError, match="directory"):
        load_audio(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    os.mkfifo(tmp_path / "pipe.mp3")
    with pytest.raises(AudioDecodeError, match="regular file"):
        load_audio(tmp_path / "pipe.mp3")


def test_tempo_and_key_are_estimated():
    def pluck(freq, seconds):
        t = np.arange(int(RATE * seconds)) / RATE
        return np.sin(2 * np.pi * freq * t) * np.exp(-4 * t)
    a_minor = [220.0, 261.63, 329.63, 440.0, 329.63, 261.63]       # A C E arpeggio
    y = np.concatenate([pluck(a_minor[i % 6], 0.5) for i in range(24)]).astype(np.float32) * 0.5  # 120 bpm
    bpm, key = analyse(y, RATE)
    assert key == "A minor"
    assert bpm is not None and abs(bpm - 120) <= 6
    noise = np.random.default_rng(0).normal(0, 0.1, RATE * 8).astype(np.float32)
    assert analyse(noise, RATE) == (None, None)      # no pulse, no key: nothing invented
    assert analyse(tone(2.0), RATE)[0] is None      # too short for a tempo


def test_midi_sanitising_repairs_and_counts(tmp_path):
    import mido
    path = write_midi(tmp_path / "x.mid", notes=[(60, 0.0, 1.0)], extra=[
        (0.5, mido.Message("note_on", note=60, velocity=70)),       # repeated note-on, key held
        (0.2, mido.Message("note_off", note=62)),                   # note-off without note-on
        (1.5, mido.Message("note_off", note=60))])                  # now an orphan too
    clean, summary = sanitize_midi(read_midi(path))
    assert summary.notes == 2 and summary.last_note_end == pytest.approx(1.0)
    assert any("re-struck" in r for r in summary.repaired)
    assert any("2 note-off" in r for r in summary.repaired)
    held, bad = set(), 0
    for msg in clean.tracks[0]:
        if msg.type == "note_on" and msg.velocity > 0:
            bad += (msg.channel, msg.note) in held
            held.add((msg.channel, msg.note))
        elif msg.type in ("note_on", "note_off"):
            bad += (msg.channel, msg.note) not in held
            held.discard((msg.channel, msg.note))
    assert bad == 0 and not held
    forced, s2 = sanitize_midi(read_midi(path), force_program=19, max_seconds=0.6)
    assert {m.program for m in forced.tracks[0] if m.type == "program_change"} == {19}
    assert s2.instruments == ["church organ"] and s2.length <= 0.6


@pytest.mark.skipif(find_soundfont() is None, reason="no General MIDI soundfont installed")
def test_midi_render_trims_the_release_tail(tmp_path):
    path = write_midi(tmp_path / "x.mid", notes=[(60, 0.0, 0.5), (67, 0.5, 2.0)])
    audio, rate, summary = render_midi(path, 32000, find_soundfont(), release_seconds=0.5)
    assert rate == 32000 and audio.shape[0] == 2
    assert 2.0 <= audio.shape[1] / rate <= 2.5 + 1e-3
    assert np.abs(audio[:, -10:]).max() < 0.05  # faded out at the cut, no click
    with pytest.raises(MidiError, match="no notes"):
        render_midi(write_midi(tmp_path / "empty.mid", notes=[]), 32000, find_soundfont())
    with pytest.raises(MidiError, match="soundfont"):
        render_midi(path, 32000, None)


def test_split_is_by_track_per_genre_and_stable():
    tracks = {f"{g}/t{i}": g for g in ("rock", "jazz") for i in range(10)}
    tracks.update({"unknown/u0": None, "solo/only": "solo"})
    valid = split_tracks(tracks, 0.2, seed=0)
    assert sum(1 for t in valid if t.startswith("rock/")) == 2
    assert sum(1 for t in valid if t.startswith("jazz/")) == 2
    assert "solo/only" not in valid and "unknown/u0" not in valid  # lone tracks always train
    assert split_tracks(tracks, 0.2, seed=0) == valid
    assert len({frozenset(split_tracks(tracks, 0.2, seed=s)) for s in range(5)}) > 1
    grown = dict(tracks, **{"rock/t10": "rock"})
    assert valid - split_tracks(grown, 0.2, seed=0) <= {t for t in valid if t.startswith("rock/")}
    assert split_tracks(tracks, 0.0, seed=0) == set()


def crash_on_three(x: int) -> int:
    """Module-level, so worker processes can import it."""
    if x == 3:
        os._exit(1)  # like a segfault in a native decoder: the worker dies
    return x * 10


def test_a_crashing_worker_costs_one_file_not_the_run():
    results = dict(run_tasks(crash_on_three, range(8), workers=2, on_crash=lambda x: "crashed"))
    assert results == {0: 0, 1: 10, 2: 20, 3: "crashed", 4: 40, 5: 50, 6: 60, 7: 70}
