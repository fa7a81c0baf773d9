"""Deterministic batches of random crops from cached codes.

Every random choice (the order of clips, each crop's start, word dropout, the batch-level
condition dropout) is drawn from a generator seeded by ``(seed, index)``, where the index
counts items or micro-batches since the start of training. So micro-batch ``i`` is the same
whatever the number of processes or accumulation steps, and resuming at step ``n`` needs
nothing but ``n``: the data position is the step.
"""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CodeBatch:
    """A micro-batch.

    codes: ``[B, K, T]`` long; frame_valid: ``[B, T]`` bool (False on padding);
    captions: B strings, or ``None`` for the null condition (classifier-free guidance dropout).
    """
    codes: torch.Tensor
    frame_valid: torch.Tensor
    captions: list
    dropped: bool = False

    def to(self, device) -> "CodeBatch":
        return CodeBatch(self.codes.to(device, non_blocking=True),
                         self.frame_valid.to(device, non_blocking=True), self.captions, self.dropped)


def word_dropout(caption: str, p: float, rng: np.random.Generator) -> str:
    """audiocraft's T5 word dropout: each space-separated word is kept with probability 1-p."""
    if p <= 0 or not caption:
        return caption
    return " ".join(w for w in caption.split(" ") if rng.random() >= p)


def collate(crops: tp.Sequence[np.ndarray], captions: list, n_frames: int, dropped: bool = False) -> CodeBatch:
    """Right-pad crops ``[K, t_i]`` (t_i <= n_frames) into a batch; padding is masked."""
    k = crops[0].shape[0]
    codes = torch.zeros(len(crops), k, n_frames, dtype=torch.long)
    valid = torch.zeros(len(crops), n_frames, dtype=torch.bool)
    for i, crop in enumerate(crops):
        t = crop.shape[-1]
        codes[i, :, :t] = torch.from_numpy(np.asarray(crop, dtype=np.int64))
        valid[i, :t] = True
    return CodeBatch(codes, valid, list(captions), dropped)


class CropSampler:
    """Training micro-batches: ``micro_batch(i)`` for i = 0, 1, 2, ...

    Clips are visited in a fresh permutation each epoch; each visit takes a random window
    of ``n_frames`` (the whole clip, padded, when shorter).
    """

    def __init__(self, codes: tp.Sequence[np.ndarray], captions: tp.Sequence[str], n_frames: int,
                 batch_size: int, seed: int = 0, cond_dropout: float = 0.3, word_dropout_p: float = 0.3):
        if not codes:
            raise ValueError("no training clips")
        self.codes, self.captions = list(codes), list(captions)
        self.n_frames, self.batch_size, self.seed = n_frames, batch_size, seed
        self.cond_dropout, self.word_dropout_p = cond_dropout, word_dropout_p
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.codes)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.codes))
            self._perm_epoch = epoch
        return self._perm

    def item(self, visit: int) -> tuple[np.ndarray, str]:
        """The ``visit``-th clip visit: (codes crop ``[K, <=n_frames]``, caption)."""
        epoch, position = divmod(visit, len(self.codes))
        index = int(self._permutation(epoch)[position])
        codes = self.codes[index]
        rng = np.random.default_rng([self.seed, 1, visit])
        start = int(rng.integers(0, max(0, codes.shape[-1] - self.n_frames) + 1))
        caption = word_dropout(self.captions[index], self.word_dropout_p, rng)
        return codes[:, start:start + self.n_frames], caption

    def micro_batch(self, index: int) -> CodeBatch:
        first = index * self.batch_size
        items = [self.item(first + j) for j in range(self.batch_size)]
        # One draw per micro-batch, as audiocraft's ClassifierFreeGuidanceDropout does.
        dropped = bool(np.random.default_rng([self.seed, 2, index]).random() < self.cond_dropout)
        captions = [None if dropped else c for _, c in items]
        return collate([c for c, _ in items], captions, self.n_frames, dropped)

    def epoch_of(self, micro_batch_index: int) -> float:
        return micro_batch_index * self.batch_size / len(self.codes)


def validation_batches(codes: tp.Sequence[np.ndarray], captions: tp.Sequence[str], n_frames: int,
                       batch_size: int) -> tp.Iterator[CodeBatch]:
    """Fixed validation batches: the first window of every clip, real captions, no dropout."""
    for start in range(0, len(codes), batch_size):
        crops = [c[:, :n_frames] for c in codes[start:start + batch_size]]
        yield collate(crops, list(captions[start:start + batch_size]), n_frames)
