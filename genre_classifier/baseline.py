"""The pooled-feature baseline the CNN is measured against (``train --cv K`` scores both on the same folds).

A plain logistic regression (scikit-learn, standardised inputs) on statistics of classic frame
features pooled over each 3 s window: the mean and standard deviation over the window of 13 MFCCs,
7 spectral-contrast bands and 12 chroma bins, so ``[n_windows, 64]`` per file. The windows are the
CNN's (`features.window_starts`), so segment accuracy means the same thing for both; a recording's
prediction is the mean of its windows' probabilities, as for the CNN.

Why it is here: on small sets of real recordings such a model is often more accurate than a CNN
trained from scratch (in the issue that asked for it: 89 % vs 70 % of recordings), and a CNN figure
without it says nothing about whether the CNN is any good.

Features are computed in worker processes (librosa's contrast and chroma; our own MFCC) and
cached like the CNN's, keyed by the file's SHA-1 and the settings.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from .extract import _pool_context, _quiet_worker
from .features import FeatureSettings, mfcc, window_starts

BASELINE_CODE_VERSION = 1
N_CONTRAST = 7   # librosa's default: 6 bands + the residual
N_CHROMA = 12


def frame_features(audio: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """``[frames, n_mfcc + 7 + 12]``: MFCC, spectral contrast and chroma of mono audio at
    ``settings.sample_rate`` (centred frames, the same frame grid as the CNN's MFCC)."""
    import librosa
    if audio.shape[0] < settings.segment_samples:  # as features_from_audio: one full window at least
        audio = np.pad(audio, (0, settings.segment_samples - audio.shape[0]))
    magnitude = np.abs(librosa.stft(audio, n_fft=settings.n_fft, hop_length=settings.hop_length,
                                    center=True, pad_mode="constant"))
    contrast = librosa.feature.spectral_contrast(S=magnitude, sr=settings.sample_rate, n_fft=settings.n_fft,
                                                 hop_length=settings.hop_length)
    # tuning=0: no pitch-tuning estimate (it warns on unpitched audio, and costs time for little)
    chroma = librosa.feature.chroma_stft(S=magnitude ** 2, sr=settings.sample_rate, n_fft=settings.n_fft,
                                         hop_length=settings.hop_length, tuning=0.0)
    m = mfcc(audio, settings)
    frames = min(len(m), contrast.shape[1], chroma.shape[1])
    return np.concatenate([m[:frames], contrast.T[:frames], chroma.T[:frames]], axis=1).astype(np.float32)


def pool_windows(frame_feats: np.ndarray, frames: int) -> np.ndarray:
    """``[T, d]`` -> ``[n_windows, 2 d]``: mean and standard deviation over each 3 s window."""
    starts = window_starts(len(frame_feats), frames)
    chunks = [frame_feats[s:s + frames] for s in starts]
    return np.stack([np.concatenate([c.mean(axis=0), c.std(axis=0)]) for c in chunks]).astype(np.float32)


def _cache_file(cache_dir: Path, sha1: str, settings: FeatureSettings) -> Path:
    return Path(cache_dir) / sha1[:2] / f"{sha1}-{settings.cache_key()}-pooled{BASELINE_CODE_VERSION}.npz"


def pooled_file(path: str, sha1: str | None, settings: FeatureSettings, cache_dir: str | None) -> np.ndarray:
    """``[n_windows, 64]`` pooled features of one file, from the cache when possible."""
    from dataset_tools.atomic import atomic_path
    from dataset_tools.audio_io import load_audio
    cache = _cache_file(Path(cache_dir), sha1, settings) if cache_dir and sha1 else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as data:
                return data["pooled"]
        except Exception:  # half-written or damaged: recompute
            pass
    audio, _ = load_audio(path, sample_rate=settings.sample_rate, mono=True)
    pooled = pool_windows(frame_features(audio, settings), settings.frames)
    if cache is not None:
        try:
            with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, pooled=pooled)
        except OSError:
            pass  # a read-only cache only costs time
    return pooled


def pooled_many(paths: list[Path], sha1s: list[str | None], settings: FeatureSettings, *,
                workers: int = 1, cache_dir: Path | None = None) -> dict[Path, np.ndarray]:
    """``{path: [n_windows, 64]}`` for files the CNN's extraction already read successfully."""
    cache = str(cache_dir) if cache_dir is not None else None
    if workers <= 1 or len(paths) <= 1:
        return {p: pooled_file(str(p), s, settings, cache) for p, s in zip(paths, sha1s)}
    out = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(paths)), mp_context=_pool_context(),
                             initializer=_quiet_worker) as pool:
        futures = {pool.submit(pooled_file, str(p), s, settings, cache): p for p, s in zip(paths, sha1s)}
        for future in as_completed(futures):
            out[futures[future]] = future.result()
    return out


class PooledBaseline:
    """StandardScaler + LogisticRegression on pooled window features ``[n, 64]``."""

    def __init__(self, n_labels: int, seed: int = 0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        self.n_labels = n_labels
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))

    def fit(self, x: np.ndarray, y: np.ndarray) -> "PooledBaseline":
        self.model.fit(x, y)
        return self

    def predict_windows(self, x: np.ndarray) -> np.ndarray:
        """``[n, 64]`` -> ``[n, n_labels]`` probabilities (0 for a label absent from training)."""
        probs = np.zeros((len(x), self.n_labels), dtype=np.float64)
        probs[:, self.model.classes_] = self.model.predict_proba(x)
        return probs
