"""Streaming source separation: memory stays flat however long the song is.

The input arrives in decoded blocks (``reader``), never as a whole. ``StemStream``
then

1. downmixes each block to the model's channels (mono is duplicated to stereo, >2
   channels are folded into front left/right) and resamples it to the model's rate with
   soxr's streaming resampler (identical to a one-shot resample, delay compensated);
2. runs the model on windows of ``window`` samples that overlap by ``overlap`` and
   cross-fades them with triangular weights (overlap-add): every sample's estimate is the
   weighted mean of the windows covering it. Once no later window can reach a sample,
   it is final and leaves the accumulator;
3. resamples finished stems back to the input's rate (streaming again) and pairs them
   with the input mix (kept, delayed, at the input's rate and channel count, so
   ``mix - vocals`` is exact), trimming/padding the resampler's last sample so the
   output has exactly the input's length.

Only a few windows of audio are buffered at any time (``peak_buffered`` records the
most, for tests and benchmarks). Normalisation follows demucs (the model sees
``(mix - mean) / std`` and its estimates are scaled back), but the track's mean and std
come from a cheap first decoding pass (``measure``) instead of a decoded whole track.

The "shift trick" (``shifts`` > 0) adds, for each shift, a second grid of windows
offset by a random amount (up to 0.5 s): every sample is then averaged over more
windows placed differently, as demucs' shifts do, at ``shifts`` times the cost.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np

from .options import SEPARATION_MAX_SHIFT_SECONDS
from .reader import MixStats, downmix, finite, output_channels


# --- buffers ------------------------------------------------------------------------------------

class _Fifo:
    """Arrays queued along their last axis; ``pop(n)`` returns the first ``n`` samples."""

    def __init__(self):
        self._parts: deque = deque()
        self.size = 0

    def push(self, part: np.ndarray) -> None:
        if part.shape[-1]:
            self._parts.append(part)
            self.size += part.shape[-1]

    def pop(self, n: int) -> np.ndarray:
        taken, need = [], n
        while need:
            part = self._parts[0]
            if part.shape[-1] <= need:
                taken.append(self._parts.popleft())
                need -= part.shape[-1]
            else:
                taken.append(part[..., :need])
                self._parts[0] = part[..., need:]
                need = 0
        self.size -= n
        return taken[0] if len(taken) == 1 else np.concatenate(taken, axis=-1)

    def fit(self, n: int, template: np.ndarray) -> None:
        """Trim to ``n`` samples, or pad with zeros shaped like ``template`` (resampler rounding)."""
        if self.size > n:
            parts = [self.pop(n)] if n else []
            self._parts, self.size = deque(parts), n
        elif self.size < n:
            self.push(np.zeros(template.shape[:-1] + (n - self.size,), dtype=np.float32))


class _OverlapAdd:
    """Windows of ``window`` samples every ``stride`` (one grid per offset), cross-faded."""

    def __init__(self, model: Callable, sources: int, channels: int, window: int, stride: int,
                 offsets: list[int], mean: float, std: float):
        self.model, self.window, self.stride = model, window, stride
        self.offsets = sorted(set(offsets), reverse=True)  # per grid step: earliest start first
        self.mean, self.std = mean, std
        half = window // 2  # triangle peaking mid-window, never zero (every sample weighted)
        tri = np.concatenate([np.arange(1, half + 1), np.arange(window - half, 0, -1)])
        self.weight = (tri / tri.max()).astype(np.float32)
        self.inp = np.zeros((channels, 0), np.float32)  # model-rate input from inp_start on
        self.inp_start = 0
        self.total = 0                                   # model-rate samples pushed so far
        self.ended = False
        self.acc = np.zeros((sources, channels, 0), np.float32)  # weighted sums from acc_start on
        self.wsum = np.zeros(0, np.float32)
        self.acc_start = 0                               # everything before it was emitted
        self._starts = self._schedule()
        self.next = next(self._starts)
        self.windows_run = 0

    def _schedule(self) -> Iterator[int]:
        step = 0
        while True:
            for offset in self.offsets:
                yield step * self.stride - offset
            step += 1

    def push(self, x: np.ndarray) -> None:
        self.inp = np.concatenate([self.inp, x], axis=1) if self.inp.shape[1] else x
        self.total += x.shape[1]

    def pull(self) -> Iterator[np.ndarray]:
        """Yield finished ``[sources, channels, m]`` estimates (de-normalised), in order."""
        while True:
            start = self.next
            if self.ended and start >= self.total:
                return
            if not self.ended and self.total < start + self.window:
                return  # wait for more input
            self._run(start)
            self.next = next(self._starts)
            boundary = self.total if self.ended and self.next >= self.total else self.next
            done = self._emit(max(boundary, 0))
            if done is not None:
                yield done

    def _run(self, start: int) -> None:
        end = start + self.window
        seg = np.zeros((self.inp.shape[0], self.window), np.float32)  # zeros beyond the track
        lo, hi = max(start, self.inp_start), min(end, self.inp_start + self.inp.shape[1])
        if hi > lo:
            seg[:, lo - start:hi - start] = self.inp[:, lo - self.inp_start:hi - self.inp_start]
        seg = (seg - self.mean) / self.std
        import torch  # here, not at module level: `--help` and option checks stay fast
        est = self.model(torch.from_numpy(seg[None]))[0].numpy()  # [S, C, window]
        est = est * self.std + self.mean
        self.windows_run += 1
        lo, hi = max(start, self.acc_start), min(end, self.total) if self.ended else end
        if hi <= lo:
            return
        need = hi - self.acc_start
        if self.acc.shape[-1] < need:
            grow = need - self.acc.shape[-1]
            self.acc = np.concatenate([self.acc, np.zeros(self.acc.shape[:2] + (grow,), np.float32)], axis=-1)
            self.wsum = np.concatenate([self.wsum, np.zeros(grow, np.float32)])
        w = self.weight[lo - start:hi - start]
        self.acc[..., lo - self.acc_start:hi - self.acc_start] += est[..., lo - start:hi - start] * w
        self.wsum[lo - self.acc_start:hi - self.acc_start] += w

    def _emit(self, boundary: int) -> np.ndarray | None:
        n = boundary - self.acc_start
        drop = max(0, self.next) - self.inp_start  # input no later window needs
        if drop > 0:
            self.inp = self.inp[:, drop:].copy()
            self.inp_start += drop
        if n <= 0:
            return None
        out = self.acc[..., :n] / self.wsum[:n]
        self.acc, self.wsum = self.acc[..., n:].copy(), self.wsum[n:].copy()
        self.acc_start = boundary
        return out


# --- the stream -----------------------------------------------------------------------------------

class StemStream:
    """Push input blocks ``[k, in_channels]`` at ``in_rate``; get ``(mix, stems)`` pairs back:
    ``mix`` ``[out_channels, m]`` (the input, downmixed as the stems are) and ``stems``
    ``[sources, out_channels, m]``, both at ``in_rate``, in order, ``m`` summing to the
    input's length. See the module doc."""

    def __init__(self, separator, in_rate: int, in_channels: int, stats: MixStats,
                 window_seconds: float | None = None, overlap: float = 0.25, shifts: int = 0, seed: int = 0):
        import soxr
        self.sep = separator
        self.in_rate, self.in_channels = int(in_rate), int(in_channels)
        self.out_channels = output_channels(in_channels)
        self.model_channels, rate = separator.audio_channels, separator.samplerate
        window = separator.max_window if window_seconds is None else int(window_seconds * rate)
        if window > separator.max_window:
            raise ValueError(f"segment {window_seconds:g} s is longer than model {separator.name!r} "
                             f"accepts ({separator.max_window / rate:.2f} s)")
        if window < 64:
            raise ValueError(f"segment {window_seconds:g} s is too short for the model")
        stride = max(1, int((1.0 - overlap) * window))
        offsets = [0]
        if shifts:
            rng = random.Random(seed)  # reproducible: the same run gives the same output
            max_shift = min(int(SEPARATION_MAX_SHIFT_SECONDS * rate), stride - 1)
            offsets = [rng.randint(0, max_shift) for _ in range(shifts)]
        self.ola = _OverlapAdd(separator, len(separator.sources), self.model_channels, window, stride,
                               offsets, stats.mean, stats.std)
        resampling = self.in_rate != rate
        self._down = soxr.ResampleStream(self.in_rate, rate, self.model_channels, dtype="float32",
                                         quality="VHQ") if resampling else None
        self._up = soxr.ResampleStream(rate, self.in_rate, len(separator.sources) * self.out_channels,
                                       dtype="float32", quality="VHQ") if resampling else None
        self._mix, self._stems = _Fifo(), _Fifo()
        self.frames_in = 0
        self.peak_buffered = 0  # most samples (per channel) held by any buffer at once

    def run(self, blocks: Iterable[np.ndarray], on_block: Callable[[int], None] | None = None):
        """Feed every block and finish; yields the ``(mix, stems)`` pairs."""
        for block in blocks:
            yield from self.push(block)
            if on_block is not None:
                on_block(block.shape[0])
        yield from self.finish()

    def push(self, block: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        block = finite(np.asarray(block, dtype=np.float32))
        if block.ndim != 2 or block.shape[1] != self.in_channels:
            raise ValueError(f"expected [frames, {self.in_channels}] blocks, got {block.shape}")
        self.frames_in += block.shape[0]
        self._mix.push(np.ascontiguousarray(downmix(block, self.out_channels).T))
        x = np.ascontiguousarray(downmix(block, self.model_channels))
        if self._down is not None:
            x = self._down.resample_chunk(x, last=False)
        self.ola.push(np.ascontiguousarray(x.T))
        for stems in self.ola.pull():
            self._push_stems(stems, last=False)
        return self._pairs()

    def finish(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._down is not None:
            tail = self._down.resample_chunk(np.zeros((0, self.model_channels), np.float32), last=True)
            self.ola.push(np.ascontiguousarray(tail.T))
        self.ola.ended = True
        for stems in self.ola.pull():
            self._push_stems(stems, last=False)
        if self._up is not None:
            self._push_stems(np.zeros((len(self.sep.sources), self.model_channels, 0), np.float32), last=True)
        # The round trip in_rate -> model rate -> in_rate may gain or lose a sample.
        self._stems.fit(self._mix.size, np.zeros((len(self.sep.sources), self.out_channels, 0)))
        pairs = self._pairs()
        assert self._mix.size == self._stems.size == 0
        return pairs

    def _push_stems(self, stems: np.ndarray, last: bool) -> None:
        """``[S, model_channels, m]`` at the model rate -> output channels, input rate."""
        if self.out_channels != self.model_channels:
            stems = stems.mean(axis=1, keepdims=True) if self.out_channels == 1 \
                else np.repeat(stems, self.out_channels, axis=1)
        if self._up is not None:
            n_sources = stems.shape[0]
            flat = np.ascontiguousarray(stems.reshape(n_sources * self.out_channels, -1).T)
            back = self._up.resample_chunk(flat, last=last)  # [m', S * out_channels]
            stems = np.ascontiguousarray(back.T).reshape(n_sources, self.out_channels, -1)
        self._stems.push(stems.astype(np.float32, copy=False))

    def _pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        self.peak_buffered = max(self.peak_buffered, self._mix.size, self._stems.size,
                                 self.ola.inp.shape[1], self.ola.acc.shape[-1])
        n = min(self._mix.size, self._stems.size)
        return [(self._mix.pop(n), self._stems.pop(n))] if n else []

