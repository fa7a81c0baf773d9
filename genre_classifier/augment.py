"""Optional training-time augmentation (``train --augment``), on MFCCs, in numpy.

Each epoch draws every training window at a random position in its track instead of the
fixed grid (a 3 s window can start anywhere), then per window:

- gain: a level change of ``g`` dB shifts every mel band's dB value by ``g``, which the
  orthonormal DCT maps to ``c0 += g * sqrt(n_mels)`` and leaves c1..c12 unchanged; so a random
  gain of +-6 dB is a random shift of c0 only (exact except where the 80 dB floor clips);
- a time mask: up to 15 consecutive frames replaced by the window's mean (SpecAugment-style),
  so no single moment of the window can decide the genre.

Whether this helps is an empirical question: the evaluation report in the docs compares it.
"""
from __future__ import annotations

import numpy as np

from .features import window_starts

GAIN_DB = 6.0
MAX_MASK_FRAMES = 15


class WindowSampler:
    """Draws training windows from whole-track MFCC matrices.

    ``tracks``: list of ``[total_frames_i, n_mfcc]`` arrays (each >= ``frames`` long);
    ``labels``: ``[len(tracks)]`` ints. Each epoch yields as many windows per track as the
    fixed grid would (so an epoch has the same size with or without augmentation).
    """

    def __init__(self, tracks, labels, frames: int, n_mels: int, seed: int = 0):
        self.tracks, self.labels, self.frames = tracks, np.asarray(labels), frames
        self.counts = np.array([len(window_starts(len(t), frames)) for t in tracks])
        self.c0_per_db = float(np.sqrt(n_mels))
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def epoch(self) -> tuple[np.ndarray, np.ndarray]:
        """``x`` ``[n, frames, n_mfcc, 1]`` float32 and ``y`` ``[n]``, shuffled and augmented."""
        owners = np.repeat(np.arange(len(self.tracks)), self.counts)
        self.rng.shuffle(owners)
        x = np.empty((len(owners), self.frames, self.tracks[0].shape[1]), dtype=np.float32)
        for row, t in enumerate(owners):
            track = self.tracks[t]
            start = self.rng.integers(0, len(track) - self.frames + 1)
            x[row] = track[start:start + self.frames]
        self.augment(x)
        return x[..., None], self.labels[owners]

    def augment(self, x: np.ndarray) -> None:
        """In place on ``[n, frames, n_mfcc]``: random gain (c0 shift) and one time mask per window."""
        n = len(x)
        x[:, :, 0] += (self.rng.uniform(-GAIN_DB, GAIN_DB, n) * self.c0_per_db)[:, None]
        widths = self.rng.integers(0, MAX_MASK_FRAMES + 1, n)
        starts = self.rng.integers(0, self.frames - MAX_MASK_FRAMES, n)
        means = x.mean(axis=1)
        for i in range(n):
            x[i, starts[i]:starts[i] + widths[i]] = means[i]


def make_dataset(keras, sampler: WindowSampler, batch_size: int):
    """A ``keras.utils.PyDataset`` serving a freshly sampled epoch from ``sampler`` each epoch."""

    class SampledWindows(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.x, self.y = sampler.epoch()

        def __len__(self):
            return -(-len(sampler) // batch_size)

        def __getitem__(self, index):
            part = slice(index * batch_size, (index + 1) * batch_size)
            return self.x[part], self.y[part]

        def on_epoch_end(self):
            self.x, self.y = sampler.epoch()

    return SampledWindows()
