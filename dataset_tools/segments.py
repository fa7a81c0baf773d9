"""Trim silence, normalise loudness and cut tracks into training segments.

All functions take audio as float32 ``[channels, n]`` (or ``[n]``) and return the same
layout; times are in samples unless a name says seconds.
"""
from __future__ import annotations

import numpy as np


SILENCE_DB = -60.0    # default trim threshold: leading/trailing audio quieter than this (dBFS peak) goes
TRIM_BLOCK = 1 << 20  # samples per channel looked at at once: bounded memory on long tracks


def trim_silence(audio: np.ndarray, threshold_db: float) -> tuple[int, int]:
    """``(start, end)`` sample bounds of ``audio`` without leading/trailing silence.

    A sample is silent when every channel is below ``threshold_db`` dBFS (peak), measured
    from zero or from the channel's mean, whichever is closer: digital silence is silent,
    and so is a DC offset (cheap interfaces, broken files), which is not sound.
    Returns ``(0, 0)`` when the whole track is silent. Only the ends are cut, never the
    middle. Scans from each end in blocks, so it stops early and stays light on memory.
    """
    x = audio if audio.ndim == 2 else audio[None, :]
    n = x.shape[1]
    threshold = 10.0 ** (threshold_db / 20.0)
    dc = x.mean(axis=1, keepdims=True, dtype=np.float64).astype(x.dtype)

    def loud(a: int, b: int) -> np.ndarray:
        """Indices (from ``a``) of the loud samples in ``[a, b)``."""
        block = x[:, a:b]
        return np.flatnonzero(np.minimum(np.abs(block), np.abs(block - dc)).max(axis=0) > threshold)

    for a in range(0, n, TRIM_BLOCK):
        found = loud(a, min(n, a + TRIM_BLOCK))
        if found.size:
            start = a + int(found[0])
            break
    else:
        return 0, 0
    b = n
    while True:  # terminates: the sample at ``start`` is loud
        a = max(start, b - TRIM_BLOCK)
        found = loud(a, b)
        if found.size:
            return start, a + int(found[-1]) + 1
        b = a


def normalize_loudness(audio: np.ndarray, sample_rate: int, target_lufs: float) -> np.ndarray:
    """Scale to ``target_lufs`` integrated loudness (ITU-R BS.1770, via pyloudnorm).

    The gain is lowered if it would push peaks past full scale (no limiter: MusicGen
    should learn undistorted audio). Clips shorter than pyloudnorm's 0.4 s block, or
    with no measurable loudness, are returned unchanged.
    """
    import pyloudnorm
    n = audio.shape[-1]
    if n < int(0.4 * sample_rate) + 1:
        return audio
    data = audio.T if audio.ndim == 2 else audio  # pyloudnorm wants [n] or [n, channels]
    loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(data.astype(np.float64))
    if not np.isfinite(loudness):
        return audio
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    peak = float(np.abs(audio).max(initial=0.0))
    if peak * gain > 0.999:
        gain = 0.999 / peak
    return (audio * gain).astype(np.float32)


def segment_bounds(n: int, sample_rate: int, segment_seconds: float, overlap_seconds: float,
                   min_seconds: float) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` sample ranges cutting ``n`` samples into segments.

    Segments are ``segment_seconds`` long and start every ``segment_seconds -
    overlap_seconds``; the last one ends at the track's end. That final remainder is
    dropped when shorter than ``min_seconds``, unless it is the only segment: a short
    track is kept whole (the trainer masks the padding).
    """
    if n <= 0:
        return []
    length = max(1, int(round(segment_seconds * sample_rate)))
    hop = max(1, int(round((segment_seconds - overlap_seconds) * sample_rate)))
    bounds = []
    start = 0
    while True:
        end = min(start + length, n)
        bounds.append((start, end))
        if end >= n:
            break
        start += hop
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_seconds * sample_rate:
        bounds.pop()
    return bounds
