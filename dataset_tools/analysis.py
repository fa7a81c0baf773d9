"""Estimate a track's tempo (BPM) and key with librosa, cheaply.

Both run on a mono copy downsampled to 22.05 kHz of at most 60 s from the middle of
the track (``ANALYSIS_*`` below), so a 10-minute track costs the same as a 1-minute one.

- Tempo: ``librosa.feature.tempo`` on the onset-strength envelope. This is the estimate
  ``librosa.beat.beat_track`` reports as its tempo; we skip the beat-position dynamic
  programme we do not need (it costs seconds of JIT compilation in every worker process).
  No tempo is reported when the onsets show no clear periodicity (noise, drones, pads,
  clips under 4 s): a wrong number in a caption is worse than none.
- Key: mean chroma (``librosa.feature.chroma_stft``) correlated with the Krumhansl-Kessler
  major and minor key profiles in all 12 rotations (Krumhansl-Schmuckler algorithm);
  none when the chroma is nearly flat (noise, percussion).
"""
from __future__ import annotations

import numpy as np

ANALYSIS_SAMPLE_RATE = 22_050     # Hz: tempo/key estimation runs on a downsampled copy
ANALYSIS_MAX_SECONDS = 60.0       # ...of at most this much audio from the middle of the track
PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MIN_TEMPO_SECONDS = 4.0     # shorter excerpts cannot show a tempo
MIN_PULSE_CLARITY = 0.3     # weaker periodicity of onsets than this: no tempo
MIN_KEY_CORRELATION = 0.2   # below this the chroma fits no key
MIN_CHROMA_CONTRAST = 0.3   # flatter mean chroma than this (noise ~0.2, music >0.5): no key
N_FFT, HOP = 2048, 512


def analysis_excerpt(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 ``[n]`` at ``ANALYSIS_SAMPLE_RATE``: the middle ``ANALYSIS_MAX_SECONDS``
    of ``audio`` (``[n]`` or ``[channels, n]``)."""
    from .audio_io import resample
    mono = audio.mean(axis=0) if audio.ndim == 2 else audio
    keep = int(ANALYSIS_MAX_SECONDS * sample_rate)
    if mono.shape[0] > keep:
        start = (mono.shape[0] - keep) // 2
        mono = mono[start:start + keep]
    return resample(np.ascontiguousarray(mono, dtype=np.float32), sample_rate, ANALYSIS_SAMPLE_RATE)


def power_spectrogram(y: np.ndarray) -> np.ndarray:
    """``|STFT|^2`` (n_fft 2048, hop 512: librosa's defaults), shared by tempo and key."""
    import librosa
    return np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)) ** 2


def estimate_tempo(y: np.ndarray, sr: int = ANALYSIS_SAMPLE_RATE, S: np.ndarray | None = None) -> float | None:
    """Tempo in BPM (rounded to 1) of mono ``y``, or None when there is no clear pulse.
    ``S``: ``power_spectrogram(y)`` if already computed."""
    import librosa
    if y.shape[0] < MIN_TEMPO_SECONDS * sr:
        return None
    S = power_spectrogram(y) if S is None else S
    # What onset_strength(y=...) computes, from the shared spectrogram.
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=S, sr=sr))
    onset_env = librosa.onset.onset_strength(S=mel_db, sr=sr, hop_length=HOP)
    if not np.isfinite(onset_env).all() or onset_env.max(initial=0.0) <= 1e-6:
        return None
    # Pulse clarity: the onset envelope's autocorrelation peak at beat-like lags
    # (0.25-2 s). Rhythmic music scores ~0.5-0.9; noise, drones and pads ~0.0-0.1.
    centred = onset_env - onset_env.mean()
    ac = librosa.autocorrelate(centred)
    if ac[0] <= 0:
        return None
    frame_rate = sr / HOP
    lo, hi = int(0.25 * frame_rate), int(2.0 * frame_rate)
    if float((ac[lo:hi] / ac[0]).max(initial=0.0)) < MIN_PULSE_CLARITY:
        return None
    tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset_env, sr=sr, hop_length=HOP))[0])
    return float(round(tempo)) if np.isfinite(tempo) and tempo > 0 else None


def estimate_key(y: np.ndarray, sr: int = ANALYSIS_SAMPLE_RATE, S: np.ndarray | None = None) -> str | None:
    """Key such as ``"A minor"`` or ``"Eb major"`` of mono ``y``, or None when unclear.
    ``S``: ``power_spectrogram(y)`` if already computed."""
    import librosa
    if y.shape[0] < 0.5 * sr or float(np.abs(y).max(initial=0.0)) < 1e-4:
        return None
    S = power_spectrogram(y) if S is None else S
    # tuning=0: skip librosa's tuning estimation (half the cost); a key needs semitone
    # resolution, which a recording detuned by less than a quarter-tone keeps.
    chroma = librosa.feature.chroma_stft(S=S, sr=sr, n_fft=N_FFT, tuning=0.0)  # [12, frames]
    profile = chroma.mean(axis=1)
    if not np.isfinite(profile).all() or profile.max() <= 0:
        return None
    if (profile.max() - profile.min()) / profile.max() < MIN_CHROMA_CONTRAST:
        return None  # all pitch classes about equally present: noise or percussion
    best, best_r = None, -1.0
    for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
            if r > best_r:
                best, best_r = f"{PITCH_CLASSES[tonic]} {mode}", r
    return best if best_r >= MIN_KEY_CORRELATION else None


def analyse(audio: np.ndarray, sample_rate: int) -> tuple[float | None, str | None]:
    """``(bpm, key)`` of a track (``[n]`` or ``[channels, n]`` at ``sample_rate``)."""
    return analyse_excerpt(analysis_excerpt(audio, sample_rate))


def analyse_excerpt(y: np.ndarray) -> tuple[float | None, str | None]:
    """``(bpm, key)`` from ``analysis_excerpt``'s output (mono ``[n]`` at 22.05 kHz)."""
    if y.shape[0] < N_FFT:
        return None, None
    S = power_spectrogram(y)  # one STFT for both estimates
    return estimate_tempo(y, S=S), estimate_key(y, S=S)
