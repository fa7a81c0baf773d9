"""A generated "genre" dataset for tests, benchmarks and trying the tool without music.

Four acoustically distinct synthetic styles, each track with its own random tempo, pitches,
level and background noise, so a classifier must learn the style rather than memorise a file:

- ``drone``:  sustained sine chords with slow swells and vibrato
- ``beats``:  kick-drum sweeps and hi-hat noise bursts, no pitch
- ``plucks``: decaying harmonic plucks (a guitar-like timbre) on random notes
- ``buzz``:   a low-passed sawtooth bass line

Layout written: ``root/<genre>/<genre>_<i>.wav`` at 44.1 kHz (some as .mp3 through ffmpeg
when ``mp3_every`` is set and ffmpeg exists).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

TOY_GENRES = ("drone", "beats", "plucks", "buzz")
TOY_RATE = 44_100


def _note_hz(rng, low=40, high=76) -> float:
    return 440.0 * 2 ** ((rng.integers(low, high) - 69) / 12)


def _drone(rng, n, sr):
    t = np.arange(n) / sr
    out = np.zeros(n)
    root = _note_hz(rng, 36, 52)
    for ratio in rng.choice([1.0, 1.25, 1.5, 2.0, 1.2, 1.335], size=3, replace=False):
        vibrato = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
        out += np.sin(2 * np.pi * root * ratio * np.cumsum(vibrato) / sr + rng.uniform(0, 6.3))
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3))
    return out * swell


def _beats(rng, n, sr):
    out = np.zeros(n)
    beat = int(sr * 60 / rng.uniform(90, 150))
    kick_len, hat_len = int(0.15 * sr), int(0.05 * sr)
    tk = np.arange(kick_len) / sr
    kick = np.sin(2 * np.pi * np.cumsum(np.linspace(150, 45, kick_len)) / sr) * np.exp(-tk * 25)
    for start in range(0, n, beat):
        end = min(n, start + kick_len)
        out[start:end] += kick[:end - start]
        for offset in (beat // 2, beat // 4 * 3):
            s = start + offset
            if s < n:
                hat = np.diff(rng.standard_normal(hat_len + 1)) * np.exp(-np.arange(hat_len) / sr * 80) * 0.4
                e = min(n, s + hat_len)
                out[s:e] += hat[:e - s]
    return out


def _plucks(rng, n, sr):
    out = np.zeros(n)
    step = int(sr * rng.uniform(0.2, 0.5))
    length = int(1.2 * sr)
    tp = np.arange(length) / sr
    for start in range(0, n, step):
        f0 = _note_hz(rng, 60, 84)
        note = sum(np.sin(2 * np.pi * f0 * k * tp) * np.exp(-tp * (3 + 2 * k)) / k for k in range(1, 8))
        end = min(n, start + length)
        out[start:end] += note[:end - start]
    return out


def _buzz(rng, n, sr):
    step = int(sr * 60 / rng.uniform(80, 140))
    phase, out = 0.0, np.zeros(n)
    for start in range(0, n, step):
        f0 = _note_hz(rng, 28, 48)
        m = min(step, n - start)
        ph = phase + f0 * np.arange(m) / sr
        out[start:start + m] = 2 * (ph % 1.0) - 1
        phase = ph[-1] if m else phase
    alpha = np.exp(-2 * np.pi * rng.uniform(400, 900) / sr)  # one-pole low-pass: a darker buzz
    from scipy.signal import lfilter
    return lfilter([1 - alpha], [1, -alpha], out)


_MAKERS = {"drone": _drone, "beats": _beats, "plucks": _plucks, "buzz": _buzz}


def toy_track(genre: str, seconds: float, seed: int, sample_rate: int = TOY_RATE,
              level_db: tuple[float, float] = (-12.0, -3.0)) -> np.ndarray:
    """One track of ``genre``: float32 mono ``[round(seconds * sample_rate)]``, its peak level
    drawn uniformly from ``level_db`` (dBFS)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    audio = _MAKERS[genre](rng, n, sample_rate)
    audio = audio / (np.max(np.abs(audio)) + 1e-9)
    audio += rng.standard_normal(n) * 10 ** (rng.uniform(-50, -35) / 20)  # a little hiss
    peak_db = rng.uniform(*level_db)
    return (audio / np.max(np.abs(audio)) * 10 ** (peak_db / 20)).astype(np.float32)


def make_toy_dataset(root, genres=TOY_GENRES, tracks_per_genre: int = 8, seconds=(4.0, 8.0),
                     seed: int = 0, mp3_every: int = 0, level_db=(-12.0, -3.0)) -> list[Path]:
    """Write ``tracks_per_genre`` tracks per genre under ``root``; returns the written paths.

    Track lengths are uniform in ``seconds``; every ``mp3_every``-th track of a genre is MP3
    (0: none) so tests also cover the ffmpeg decoding path. A wide ``level_db`` range (e.g.
    (-30, -3)) makes a harder dataset: loudness then varies more within a genre.
    """
    import soundfile as sf

    root = Path(root)
    rng = np.random.default_rng(seed)
    written = []
    for g_index, genre in enumerate(genres):
        (root / genre).mkdir(parents=True, exist_ok=True)
        for i in range(tracks_per_genre):
            audio = toy_track(genre, rng.uniform(*seconds), seed=seed * 100_003 + g_index * 1009 + i,
                              level_db=level_db)
            path = root / genre / f"{genre}_{i:02d}.wav"
            sf.write(path, audio, TOY_RATE, subtype="PCM_16")
            if mp3_every and i % mp3_every == mp3_every - 1 and shutil.which("ffmpeg"):
                mp3 = path.with_suffix(".mp3")
                subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-b:a", "128k",
                                str(mp3)], check=True)
                path.unlink()
                path = mp3
            written.append(path)
    return written
