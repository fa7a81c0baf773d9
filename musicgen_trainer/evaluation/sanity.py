"""Sanity flags for generated clips: the classic failures of a bad fine-tune, caught by numbers.

- ``silent``: most of the clip is (near) silence.
- ``clipped``: a noticeable share of samples sit at full scale.
- ``repetitive``: the model is stuck in a loop. With the clip's codes, the first codebook's token
  sequence is checked for a period that repeats over most of the clip; from audio only, the same
  is done on the clip's log-spectrogram frames.
- memorisation (`memorisation_overlap`): the generated tokens reproduce a training clip verbatim.

Shapes: a wave is ``[n]`` (mono) or ``[C, n]`` float samples in [-1, 1]; codes are ``[K, T]``
integer tokens (``[1, K, T]`` is accepted too).
"""
from __future__ import annotations

import typing as tp

import numpy as np

# --- silence: 50 ms frames, quieter than -50 dBFS RMS, on more than half the clip ------------
# 50 ms is short enough to see the gaps of a clip that is mostly silent and long enough that
# one frame holds a whole period of the lowest notes. -50 dBFS RMS is well below quiet music
# (a pianissimo passage sits around -40 to -30 dBFS) and above dither and codec noise.
# A clip may start or end quietly (rendered audio carries a release tail): only "more than half"
# silent is a failure.
SILENCE_FRAME_SECONDS = 0.05
SILENCE_DBFS = -50.0
SILENT_SHARE = 0.5

# --- clipping: |x| >= 0.999 on more than 0.1 % of samples -----------------------------------
# Mastered music peaks near full scale on a handful of samples; a clip whose samples sit at
# full scale (or beyond: generated floats above 1 clip when written) 1 in 1000 times or more is
# audibly distorted (10 s at 32 kHz: 320 samples).
CLIP_LEVEL = 0.999
CLIPPED_SHARE = 0.001

# --- repetition from codes: one period that repeats on 80 % of the clip ----------------------
# A looping language model emits the same first-codebook tokens every P frames; music that
# repeats a bar still varies at the token level (2048 codes, which change with small acoustic
# differences), so a period with >= 80 % identical tokens means the model copies itself. Periods
# up to half the clip are tried, so the loop is heard at least twice. Runs of one token
# (period 1: a stuck token, often silence or a hum) count too.
TOKEN_REPEAT_SHARE = 0.8

# --- repetition from audio: log-spectrogram frames correlated at one lag ----------------------
# Frames of ~46 ms (hop ~12 ms); each frame's log-magnitude spectrum is normalised (loudness
# changes removed) and each frequency bin's mean over the clip removed (a steady timbre is not
# repetition). A loop correlates with itself one period later at 0.9-1.0 (measured on looped
# synthetic clips, whatever the period: the frame grid rarely falls on the same samples twice);
# music that repeats bars still changes notes, voicing and timing (synthetic music with varied
# notes, drum patterns included: 0.02-0.4; the example library's rendered pieces: 0.14-0.38),
# hence 0.8. Lags shorter than 0.5 s are not tried:
# neighbouring frames of any sustained sound are alike.
AUDIO_REPEAT_CORRELATION = 0.8
AUDIO_MIN_LAG_SECONDS = 0.5
AUDIO_FRAME_SECONDS = 0.046
AUDIO_FLOOR = 1e-3  # -60 dB

# --- memorisation: first-codebook n-grams of 0.5 s shared with one training clip --------------
# 25 frames at 50 Hz: chance matches of 25 tokens of 2048 between different recordings do not
# happen (apart from silence, whose constant n-grams are left out). A generated clip half of
# whose 0.5 s stretches occur verbatim in one training clip reproduces that clip.
MEMORISATION_NGRAM = 25
MEMORISATION_THRESHOLD = 0.5


def as_mono(wave: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``[n]`` mono of a wave ``[n]`` or ``[C, n]`` (the channels' mean); one-line ValueError otherwise."""
    wave = np.asarray(wave, dtype=dtype)
    if wave.ndim == 2:
        return wave.mean(axis=0)
    if wave.ndim != 1:
        raise ValueError(f"a wave must be [n] or [C, n], got shape {wave.shape}")
    return wave


def silent_share(wave: np.ndarray, sample_rate: int) -> float:
    """Share of 50 ms frames whose RMS (over all channels) is below `SILENCE_DBFS`; 1.0 when empty."""
    wave = np.asarray(wave, dtype=np.float64)
    power = (wave ** 2).mean(axis=0) if wave.ndim == 2 else wave ** 2
    frame = max(1, int(round(SILENCE_FRAME_SECONDS * sample_rate)))
    n = power.shape[0] // frame
    if n == 0:
        return 1.0 if power.size == 0 else float(10 * np.log10(power.mean() + 1e-20) < SILENCE_DBFS)
    rms_db = 10 * np.log10(power[:n * frame].reshape(n, frame).mean(axis=1) + 1e-20)
    return float((rms_db < SILENCE_DBFS).mean())


def clipped_share(wave: np.ndarray) -> float:
    """Share of samples (all channels) with ``|x| >= CLIP_LEVEL``."""
    wave = np.asarray(wave)
    return float((np.abs(wave) >= CLIP_LEVEL).mean()) if wave.size else 0.0


def token_repetition(codes) -> float:
    """The largest share of positions ``t`` with ``tokens[t] == tokens[t + P]``, over periods
    ``1 <= P <= T // 2``, for the first codebook's tokens of ``codes`` ``[K, T]``; 0.0 for T < 2."""
    tokens = _first_codebook(codes)
    t = tokens.shape[0]
    best = 0.0
    for period in range(1, t // 2 + 1):
        best = max(best, float((tokens[period:] == tokens[:-period]).mean()))
    return best


def audio_repetition(wave: np.ndarray, sample_rate: int) -> float:
    """The largest correlation of the clip's normalised log-spectrogram frames with themselves
    one lag later, over lags from `AUDIO_MIN_LAG_SECONDS` to half the clip; 0.0 when too short."""
    from scipy.fft import irfft, rfft

    mono = as_mono(wave)
    n_fft = max(64, int(2 ** round(np.log2(AUDIO_FRAME_SECONDS * sample_rate))))
    hop = n_fft // 4  # fine hops: a loop's period is rarely a whole number of hops
    if mono.shape[0] < n_fft:
        return 0.0
    window = np.hanning(n_fft).astype(np.float32)  # float32 FFTs: twice as fast, ample here
    frames = np.lib.stride_tricks.sliding_window_view(mono.astype(np.float32), n_fft)[::hop] * window
    magnitude = np.abs(rfft(frames, axis=1))                          # [T, F]
    # Floor 60 dB below each frame's peak: the noise floor's bins would otherwise weigh as much
    # as the music's, and they change with the smallest shift of the frame grid.
    spec = np.log(np.maximum(magnitude, magnitude.max(axis=1, keepdims=True) * AUDIO_FLOOR + 1e-12))
    spec -= spec.mean(axis=1, keepdims=True)                          # loudness of each frame
    spec -= spec.mean(axis=0, keepdims=True)                          # steady timbre
    min_lag = max(1, int(round(AUDIO_MIN_LAG_SECONDS * sample_rate / hop)))
    max_lag = spec.shape[0] // 2
    if max_lag < min_lag:
        return 0.0
    # All lags at once: per-bin autocorrelations through the FFT, summed over the bins, over the
    # energies of the two overlapping stretches (cumulative sums).
    n = spec.shape[0]
    spectrum = rfft(spec, n=2 * n, axis=0)
    cross = irfft((spectrum * spectrum.conj()).real, n=2 * n, axis=0)[:n].sum(axis=1)  # [lag]
    energy = np.concatenate([[0.0], np.cumsum((spec * spec).sum(axis=1))])
    lags = np.arange(min_lag, max_lag + 1)
    head = energy[n - lags]                 # frames 0 .. n-lag-1
    tail = energy[n] - energy[lags]         # frames lag .. n-1
    denom = np.sqrt(head * tail)
    corr = np.divide(cross[lags], denom, out=np.zeros(len(lags)), where=denom > 0)
    return float(max(corr.max(), 0.0))


def sanity_measures(wave: np.ndarray, sample_rate: int, codes=None) -> dict:
    """The numbers behind `sanity_flags`: ``silent_share``, ``clipped_share`` and ``repetition``
    (with ``repetition_from``: "codes" or "audio"), JSON-ready."""
    measures = {"silent_share": silent_share(wave, sample_rate), "clipped_share": clipped_share(wave)}
    if codes is not None:
        measures.update(repetition=token_repetition(codes), repetition_from="codes")
    else:
        measures.update(repetition=audio_repetition(wave, sample_rate), repetition_from="audio")
    return measures


def sanity_flags(wave: np.ndarray, sample_rate: int, codes=None) -> list[str]:
    """Flags among ``silent``, ``clipped``, ``repetitive`` for one clip (empty: nothing wrong).

    Args:
        wave: ``[n]`` or ``[C, n]`` float samples at ``sample_rate``.
        codes: the clip's tokens ``[K, T]`` (tensor or array) when known: repetition is then
            judged on the tokens (what loops is the language model), otherwise on the audio.
    """
    m = sanity_measures(wave, sample_rate, codes)
    flags = []
    if m["silent_share"] > SILENT_SHARE:
        flags.append("silent")
    if m["clipped_share"] > CLIPPED_SHARE:
        flags.append("clipped")
    limit = TOKEN_REPEAT_SHARE if m["repetition_from"] == "codes" else AUDIO_REPEAT_CORRELATION
    if m["repetition"] >= limit:
        flags.append("repetitive")
    return flags


# --- memorisation ---------------------------------------------------------------------------
def _to_numpy(codes) -> np.ndarray:
    if hasattr(codes, "detach"):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim == 3 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 2:
        raise ValueError(f"codes must be [K, T], got shape {codes.shape}")
    return codes.astype(np.int64)


def _first_codebook(codes) -> np.ndarray:
    return _to_numpy(codes)[0]


_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier: n-gram hashes mod 2^64


def _ngrams(tokens: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes ``[M]`` of the n-grams of ``tokens`` ``[T]`` that are not one repeated token.

    Hashes instead of the n-grams themselves keep a training set's index at 8 bytes per n-gram
    (10,000 clips of 30 s: ~120 MB, where Python sets of byte strings took ~4 GB); two different
    n-grams share a hash with probability ~2^-64 per pair."""
    if tokens.shape[0] < n:
        return np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, n)
    varied = windows.min(axis=1) != windows.max(axis=1)
    powers = np.ones(n, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping mod 2^64 is the hash
        for j in range(n - 2, -1, -1):
            powers[j] = powers[j + 1] * _HASH_BASE
        return (windows[varied].astype(np.uint64) + np.uint64(1)) @ powers


def training_ngrams(training_codes: tp.Sequence, n: int = MEMORISATION_NGRAM) -> tp.List[np.ndarray]:
    """Each training clip's sorted, unique first-codebook n-gram hashes: pass it as
    ``memorisation_overlap``'s ``index`` when many generated clips are checked against the same
    training set (built once instead of once per generated clip)."""
    return [np.unique(_ngrams(_first_codebook(codes), n)) for codes in training_codes]


def memorisation_overlap(generated_codes, training_codes: tp.Sequence, n: int = MEMORISATION_NGRAM,
                         index: tp.Optional[tp.Sequence[np.ndarray]] = None) -> float:
    """The largest share of the generated clip's first-codebook n-grams found in any single
    training clip (its nearest neighbour by verbatim overlap).

    Args:
        generated_codes: ``[K, T]`` tokens of one generated clip (tensor or array).
        training_codes: ``[K, T_i]`` tokens of each training clip.
        n: n-gram length in frames (default 0.5 s at 50 Hz). N-grams of one repeated token
            (silence, a hum) are left out on both sides; a clip with none gives 0.0.
        index: ``training_ngrams(training_codes, n)``, when already built (``training_codes`` is
            then not read).
    Returns:
        In [0, 1]; 1.0 when the generated clip is (a stretch of) a training clip. Above
        `MEMORISATION_THRESHOLD` the clip is flagged as memorised.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    generated = _ngrams(_first_codebook(generated_codes), n)
    if not generated.size:
        return 0.0
    best = 0.0
    sets = index if index is not None else (np.unique(_ngrams(_first_codebook(codes), n)) for codes in training_codes)
    for seen in sets:
        if len(seen):
            best = max(best, float(np.isin(generated, seen, assume_unique=False).mean()))
            if best == 1.0:
                break
    return float(best)
