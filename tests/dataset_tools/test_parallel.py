"""The worker-process runner (``dataset_tools.parallel``): stages, hand-offs, crashes, and
the two-stage ``convert`` it runs for ``prepare``."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from dt_helpers import RATE, tone

from dataset_tools.audio_io import write_audio
from dataset_tools.convert import ConvertTask, DecodedTrack, caption_stage, convert_source, decode_stage
from dataset_tools.options import PrepareOptions
from dataset_tools.parallel import Handoff, Stage, run_stages


@dataclass
class Half(Handoff):
    """Module-level, so worker processes can unpickle it."""
    value: int
    pid: int


def first(x: int):
    """Even numbers go on to ``second``; odd ones end here. 3 kills its worker."""
    if x == 3:
        os._exit(1)  # like a segfault in a native decoder
    return Half(x, os.getpid()) if x % 2 == 0 else x * 10


def second(half: Half):
    if half.value == 4:
        os._exit(1)
    return (half.value * 100, half.pid, os.getpid())


def test_two_stages_hand_off_and_a_crash_in_either_costs_one_task():
    results = dict(run_stages([Stage(first, fresh=True), Stage(second)], range(9), workers=2,
                              on_crash=lambda x: "crashed"))
    assert set(results) == set(range(9))
    assert results[3] == "crashed" and results[4] == "crashed"
    assert {x: results[x] for x in (1, 5, 7)} == {1: 10, 5: 50, 7: 70}
    for x in (0, 2, 6, 8):
        value, first_pid, second_pid = results[x]
        assert value == x * 100
        # each stage ran in its own worker processes, neither in this one
        assert len({first_pid, second_pid, os.getpid()}) == 3


def test_one_process_runs_the_stages_in_order_in_this_process():
    results = list(run_stages([Stage(first), Stage(second)], [0, 1, 2], workers=1, on_crash=None))
    assert [task for task, _ in results] == [0, 1, 2]
    assert results[1][1] == 10
    for x in (0, 2):
        value, first_pid, second_pid = dict(results)[x]
        assert value == x * 100 and first_pid == second_pid == os.getpid()


def _task(tmp_path, name: str, audio: np.ndarray, analyze: bool = True) -> ConvertTask:
    src = tmp_path / "src" / "rock" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    sf.write(src, audio, RATE)
    return ConvertTask(path=str(src), rel=f"rock/{name}", kind="audio", genre_dir="rock", unlabelled=False,
                       stem=f"rock/{src.stem}", out=str(tmp_path / "out"),
                       options=PrepareOptions(segment_seconds=5, analyze=analyze, progress=False),
                       soundfont=None)


def test_decode_stage_writes_only_wavs_and_caption_stage_completes_them(tmp_path):
    task = _task(tmp_path, "Song.wav", tone(9.0))
    decoded = decode_stage(task)
    assert isinstance(decoded, DecodedTrack)
    out = tmp_path / "out" / "rock"
    assert sorted(p.suffix for p in out.iterdir()) == [".wav", ".wav"]  # 5 s + 4 s
    # the analysis gets a bounded excerpt, never the whole track
    assert decoded.excerpt is not None and decoded.excerpt.ndim == 1
    result = caption_stage(decoded)
    assert result.status == "converted" and len(result.segments) == 2
    assert all(seg["caption"].startswith("Rock music") for seg in result.segments)
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".json", ".txt", ".txt", ".wav", ".wav"]
    # the two stages make exactly what the one-call conversion makes
    again = convert_source(_task(tmp_path / "again", "Song.wav", tone(9.0)))
    assert again.segments == result.segments and again.track == result.track


def test_decode_stage_ends_skipped_files_itself(tmp_path):
    result = decode_stage(_task(tmp_path, "silent.wav", np.zeros(RATE * 3, dtype=np.float32)))
    assert result.status == "skipped" and "silent" in result.reason
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


def test_write_audio_writes_long_ogg(tmp_path):
    # libsndfile 1.2 segfaults writing ~1 min of Vorbis in one call; write_audio feeds blocks.
    rate, seconds = 44100, 75
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(rate * seconds) / rate)).astype(np.float32)
    path = tmp_path / "long.ogg"
    write_audio(path, np.stack([audio, audio], axis=1), rate, format="OGG")
    info = sf.info(str(path))
    assert info.channels == 2 and abs(info.duration - seconds) < 0.05


def test_a_missing_package_is_one_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util

    from dataset_tools.__main__ import main
    src = tmp_path / "src" / "rock"
    src.mkdir(parents=True)
    sf.write(src / "a.wav", tone(2.0), RATE)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "soxr" else real(name, *a))
    assert main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: missing Python package(s): soxr") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written, nothing locked
