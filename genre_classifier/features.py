"""MFCC features for the genre CNN: settings, extraction and the 3-second windows.

This module runs inside worker processes, so it must never import TensorFlow (a spawned
worker would pay seconds of import time and hundreds of MB for nothing). It does not import
librosa either: `mfcc` below computes exactly what ``librosa.feature.mfcc`` computes with its
defaults (centred STFT with zero padding, periodic Hann window, power spectrum, Slaney mel
filterbank, ``power_to_db`` with ``top_db=80``, orthonormal DCT-II), checked against librosa in
the tests, at about twice the speed and without librosa's numba start-up cost per worker.

Shapes: a track's MFCC matrix is ``[frames, n_mfcc]`` (time first); the CNN sees windows of
``[settings.frames, n_mfcc]`` (130 x 13 with the defaults), cut by `track_windows`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

# Default feature settings (MFCC CNN); each model saves the ones it was trained with.
CLASSIFIER_SAMPLE_RATE = 22_050
CLASSIFIER_N_MFCC = 13
CLASSIFIER_N_FFT = 2048
CLASSIFIER_HOP_LENGTH = 512
CLASSIFIER_SEGMENT_SECONDS = 3.0  # 3 s at 22.05 kHz / hop 512 -> 130 frames
CLASSIFIER_N_MELS = 128           # mel bands under the MFCCs (librosa's default)
CLASSIFIER_MIN_TRACK_SECONDS = 0.5  # shorter files are skipped; 0.5-3 s ones are zero-padded
CLASSIFIER_SILENCE_DBFS = -60.0   # a file whose peak is below this is skipped as silent

# Bump when the numbers `extract_features` produces change for the same settings: it is part
# of the cache key, so stale cached features are never mixed with new ones.
FEATURE_CODE_VERSION = 1
TOP_DB = 80.0        # librosa.power_to_db default: floor at (max - 80 dB)
AMIN = 1e-10         # librosa.power_to_db default: avoid log(0)
CHUNK_FRAMES = 1024  # STFT frames per chunk: bounds memory on long tracks (~16 MB a chunk)


class FeatureError(RuntimeError):
    """A track cannot be turned into features (silent, too short); ``str()`` is the reason."""


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that determines the features; saved with each model so prediction never guesses."""
    sample_rate: int = CLASSIFIER_SAMPLE_RATE
    n_mfcc: int = CLASSIFIER_N_MFCC
    n_fft: int = CLASSIFIER_N_FFT
    hop_length: int = CLASSIFIER_HOP_LENGTH
    n_mels: int = CLASSIFIER_N_MELS
    segment_seconds: float = CLASSIFIER_SEGMENT_SECONDS
    min_track_seconds: float = CLASSIFIER_MIN_TRACK_SECONDS
    silence_dbfs: float = CLASSIFIER_SILENCE_DBFS

    def __post_init__(self):
        for name in ("sample_rate", "n_mfcc", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"feature setting {name} must be a positive integer, got {value!r}")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed n_mels ({self.n_mels})")
        if not self.segment_seconds * self.sample_rate >= self.n_fft:
            raise ValueError(f"segment_seconds ({self.segment_seconds}) is shorter than one FFT window")
        if not 0 <= self.min_track_seconds <= self.segment_seconds:
            raise ValueError("min_track_seconds must be between 0 and segment_seconds")

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * self.sample_rate))

    @property
    def frames(self) -> int:
        """MFCC frames per window: 1 + 66150 // 512 = 130 with the defaults (centred STFT)."""
        return 1 + self.segment_samples // self.hop_length

    def to_dict(self) -> dict:
        return {**asdict(self), "frames": self.frames}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSettings":
        """Rebuild from a model's saved settings; every field must be present (no silent defaults)."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise KeyError(", ".join(missing))
        settings = cls(**{n: data[n] for n in names})
        if "frames" in data and int(data["frames"]) != settings.frames:
            raise ValueError(f"saved frames={data['frames']} does not match the settings ({settings.frames})")
        return settings

    def cache_key(self) -> str:
        """Short stable hash of the settings and the feature code version (part of cache file names)."""
        blob = json.dumps({**asdict(self), "code": FEATURE_CODE_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class TrackFeatures:
    """One track's features: ``mfcc`` is ``[frames, n_mfcc]`` float32 over the whole track."""
    mfcc: np.ndarray
    duration: float      # seconds of audio in the file (before any padding)
    padded: bool         # True when the track was shorter than one window and zero-padded

    def windows(self, settings: FeatureSettings) -> np.ndarray:
        """``[n_windows, frames, n_mfcc]``: see `track_windows`."""
        return track_windows(self.mfcc, settings.frames)


# --- MFCC ----------------------------------------------------------------------------------
def _hz_to_mel(hz):
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    mel = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` float32 triangular filters, area-normalised ("slaney" norm)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    return np.ascontiguousarray(weights.T, dtype=np.float32)


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic Hann (scipy.signal.get_window("hann", n, fftbins=True)), as librosa uses.
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def mfcc(audio: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """MFCCs of mono ``audio`` ``[n]`` at ``settings.sample_rate``: ``[1 + n // hop, n_mfcc]`` float32."""
    from scipy.fft import dct, rfft  # scipy's FFT keeps float32 and is ~2x faster than numpy's here

    n_fft, hop = settings.n_fft, settings.hop_length
    padded = np.pad(np.asarray(audio, dtype=np.float32), n_fft // 2)  # centred frames, zero pad
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # [t, n_fft] view
    window, bank = _hann(n_fft), mel_filterbank(settings.sample_rate, n_fft, settings.n_mels)
    mel = np.empty((frames.shape[0], settings.n_mels), dtype=np.float32)
    for start in range(0, frames.shape[0], CHUNK_FRAMES):  # chunks keep long tracks in bounded memory
        spectrum = rfft(frames[start:start + CHUNK_FRAMES] * window, axis=1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        mel[start:start + CHUNK_FRAMES] = power @ bank
    db = 10.0 * np.log10(np.maximum(mel, AMIN))
    db = np.maximum(db, db.max() - TOP_DB)  # top_db is relative to the loudest bin of the track
    return dct(db, type=2, norm="ortho", axis=1)[:, :settings.n_mfcc].astype(np.float32)


def features_from_audio(audio: np.ndarray, settings: FeatureSettings) -> TrackFeatures:
    """Check and featurise decoded mono audio at ``settings.sample_rate``.

    Raises FeatureError for silent or too-short audio; tracks shorter than one window are
    zero-padded to a full window (never dropped), so every track yields >= 1 window.
    """
    duration = audio.shape[0] / settings.sample_rate
    if duration < settings.min_track_seconds:
        raise FeatureError(f"too short ({duration:.2f} s; the minimum is {settings.min_track_seconds:g} s)")
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    peak_db = 20 * np.log10(max(peak, 1e-12))
    if peak_db < settings.silence_dbfs:
        raise FeatureError(f"silent (peak {peak_db:.0f} dBFS, below {settings.silence_dbfs:g} dBFS)")
    padded = audio.shape[0] < settings.segment_samples
    if padded:
        audio = np.pad(audio, (0, settings.segment_samples - audio.shape[0]))
    return TrackFeatures(mfcc=mfcc(audio, settings), duration=duration, padded=padded)


def window_starts(total_frames: int, frames: int) -> np.ndarray:
    """Start frames of evenly spaced windows covering ``[0, total_frames)``.

    ``ceil(total / frames)`` windows, the first at 0 and the last ending exactly at the end,
    so they overlap by less than one window and no part of the track is left out.
    """
    if total_frames <= frames:
        return np.zeros(1, dtype=np.int64)
    count = -(-total_frames // frames)
    return np.round(np.linspace(0, total_frames - frames, count)).astype(np.int64)


def track_windows(mfcc_matrix: np.ndarray, frames: int) -> np.ndarray:
    """``[total, n_mfcc]`` -> ``[n_windows, frames, n_mfcc]`` float32 (zero-padded if too short)."""
    if mfcc_matrix.shape[0] < frames:  # only for features made elsewhere; ours are padded already
        mfcc_matrix = np.pad(mfcc_matrix, ((0, frames - mfcc_matrix.shape[0]), (0, 0)))
    starts = window_starts(mfcc_matrix.shape[0], frames)
    return np.stack([mfcc_matrix[s:s + frames] for s in starts]).astype(np.float32, copy=False)
