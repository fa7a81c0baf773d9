"""``prepare --channels 2``: real stereo outputs for stereo models, mono sources reported, and a
changed channel count never reuses the outputs of the other."""
from __future__ import annotations

import numpy as np
import soundfile as sf

from dt_helpers import MIN_SECONDS, SEGMENT_SECONDS, tone, write_audio

from dataset_tools.options import PrepareOptions
from dataset_tools.prepare import prepare


def options(**kw) -> PrepareOptions:
    base = dict(segment_seconds=SEGMENT_SECONDS, min_seconds=MIN_SECONDS, workers=1, progress=False,
                analyze=False)
    return PrepareOptions(**{**base, **kw})


def wavs(out):
    return {p.relative_to(out).as_posix(): sf.read(p, always_2d=True)[0] for p in sorted(out.rglob("*.wav"))}


def test_channels_2_keeps_stereo_sources_stereo_and_reports_mono_ones(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    left, right = tone(1.5, freq=441.0), tone(1.5, freq=630.0, amp=0.3)
    write_audio(src / "rock" / "Wide.wav", np.stack([left, right], axis=1))
    write_audio(src / "rock" / "Narrow.flac", tone(1.5, freq=441.0))
    report = prepare(src, out, options(channels=2))
    got = wavs(out)
    assert sorted(got) == ["rock/Narrow.wav", "rock/Wide.wav"]
    wide, narrow = got["rock/Wide.wav"], got["rock/Narrow.wav"]
    assert wide.shape == (len(left), 2) and narrow.shape[1] == 2
    # each side is its source side (16-bit rounding aside), not a mix copied to both
    np.testing.assert_allclose(wide[:, 0], left, atol=1e-3)
    np.testing.assert_allclose(wide[:, 1], right, atol=1e-3)
    assert np.array_equal(narrow[:, 0], narrow[:, 1])
    assert report.mono_copied == ["rock/Narrow.flac"]
    assert "1 mono source(s) copied to both channels" in report.summary()

    # Back to mono on the same OUT: every WAV is rewritten with one channel (the options
    # hash includes the channel count); and stereo again after that.
    again = prepare(src, out, options(channels=1))
    assert again.converted_this_run == 2 and again.mono_copied == []
    assert all(w.shape[1] == 1 for w in wavs(out).values())
    prepare(src, out, options(channels=2))
    assert all(w.shape[1] == 2 for w in wavs(out).values())
