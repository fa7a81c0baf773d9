"""Open audio for streaming: decode in blocks, never the whole file.

libsndfile formats (WAV, FLAC, OGG, AIFF, MP3) are read block by block through soundfile;
everything else is decoded by an ``ffmpeg`` pipe (raw float32 at the file's own rate, read
in the same blocks). ``AudioInput.blocks()`` can be iterated again, which ``measure`` uses
for the first pass (length, and the mean/std demucs normalises by). Problems are raised as
``AudioDecodeError`` with the same one-line reasons ``load_audio`` gives.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

# The private helpers are shared so that skipped files get exactly `prepare`'s reasons.
from ..audio_io import (AudioDecodeError, ffmpeg_reason, probe_channels_and_rate, check_readable_file,
                        ffmpeg_path)
from .options import SEPARATION_BLOCK_FRAMES


# --- inputs ---------------------------------------------------------------------------------

@dataclass
class AudioInput:
    """An input opened for streaming; ``blocks()`` may be iterated more than once.

    ``frames`` is known up front for libsndfile formats and arrays, None for ffmpeg ones.
    """
    name: str
    rate: int
    channels: int
    frames: int | None
    path: Path | None = None
    array: np.ndarray | None = None  # [n, channels] float32, for in-memory input
    use_ffmpeg: bool = False

    def blocks(self, block_frames: int = SEPARATION_BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """Yield float32 ``[k, channels]`` blocks, ``k <= block_frames``, in order."""
        if self.array is not None:
            for i in range(0, self.array.shape[0], block_frames):
                yield self.array[i:i + block_frames]
        elif self.use_ffmpeg:
            yield from _ffmpeg_blocks(self.path, self.channels, self.rate, block_frames)
        else:
            import soundfile as sf
            try:
                with sf.SoundFile(os.fsencode(self.path)) as f:
                    for block in f.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                        yield block
            except (RuntimeError, sf.LibsndfileError) as exc:  # damaged data after a good header
                raise AudioDecodeError(f"damaged audio data ({str(exc).splitlines()[0][:120]})") from None


def open_input(path) -> AudioInput:
    """Open ``path`` for streaming (reads the header only).

    Raises:
        AudioDecodeError: missing, unreadable, empty or non-audio file (one-line reason).
    """
    import soundfile as sf
    path = check_readable_file(path)
    try:
        with _quiet_native_stderr():  # libmpg123 prints "Illegal Audio-MPEG-Header" notes on fd 2
            info = sf.info(os.fsencode(path))
        if info.samplerate > 0 and info.channels > 0:
            return AudioInput(path.name, int(info.samplerate), int(info.channels),
                              int(info.frames) if info.frames > 0 else None, path=path)
    except Exception:  # not a libsndfile format: ffmpeg decides
        pass
    channels, rate = probe_channels_and_rate(path)  # the same checks and messages as load_audio
    if rate <= 0:
        raise AudioDecodeError("damaged or unsupported audio (ffprobe finds no sample rate)")
    if channels <= 0:
        raise AudioDecodeError("damaged or unsupported audio (ffprobe finds no channels)")
    return AudioInput(path.name, rate, channels, None, path=path, use_ffmpeg=True)


@contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 (native libraries' messages) for a moment."""
    import os
    import sys
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. captured): nothing to do
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def array_input(audio: np.ndarray, rate: int, name: str = "array") -> AudioInput:
    """Wrap ``[n]`` or ``[channels, n]`` float audio as an ``AudioInput``."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise ValueError(f"audio must be [n] or [channels, n], got shape {audio.shape}")
    return AudioInput(name, int(rate), audio.shape[0], audio.shape[1], array=audio.T)


def _ffmpeg_blocks(path: Path, channels: int, rate: int, block_frames: int) -> Iterator[np.ndarray]:
    cmd = [ffmpeg_path(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
           "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate), "-"]
    frame_bytes = 4 * channels
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: ffmpeg can never block on it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        got = 0
        try:
            while True:
                data = proc.stdout.read(block_frames * frame_bytes)  # full blocks until EOF
                usable = len(data) - len(data) % frame_bytes
                if usable:
                    got += usable // frame_bytes
                    yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
                if len(data) < block_frames * frame_bytes:
                    break
            proc.wait()
            if proc.returncode != 0 and got == 0:
                err.seek(0)
                reason = ffmpeg_reason(err.read().decode(errors="replace"))
                raise AudioDecodeError(f"ffmpeg could not decode it ({reason or 'unknown error'})")
        finally:
            if proc.poll() is None:  # the consumer stopped early (error, Ctrl-C)
                proc.kill()
                proc.wait()
            proc.stdout.close()


# --- channels and statistics -------------------------------------------------------------------

def downmix(block: np.ndarray, channels: int) -> np.ndarray:
    """``[k, c]`` -> ``[k, channels]`` (1 or 2). Mono is duplicated; more than two channels
    keep front left/right with the rest mixed equally into both (no per-block rescaling,
    which would change the gain from block to block)."""
    have = block.shape[1]
    if have == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True)
    if have == 1:
        return np.repeat(block, channels, axis=1)
    rest = block[:, channels:].mean(axis=1, keepdims=True) / np.sqrt(2.0)
    return (block[:, :channels] + rest).astype(np.float32)


def output_channels(in_channels: int) -> int:
    """Stems keep mono inputs mono; stereo and multichannel inputs give stereo stems."""
    return 1 if in_channels == 1 else 2


@dataclass
class MixStats:
    """What the first pass learns: length, and the mean/std demucs normalises the mix by."""
    frames: int
    mean: float
    std: float


def measure(inp: AudioInput, model_channels: int = 2, block_frames: int = SEPARATION_BLOCK_FRAMES) -> MixStats:
    """Mean and standard deviation of the (model-channel) mix averaged over channels, as
    demucs computes them on the whole track, but accumulated block by block (float64)."""
    n, total, squares = 0, 0.0, 0.0
    for block in inp.blocks(block_frames):
        mono = downmix(finite(block), model_channels).mean(axis=1, dtype=np.float64)
        n += mono.size
        total += float(mono.sum())
        squares += float(np.dot(mono, mono))
    if n == 0:
        raise AudioDecodeError("no audio samples decoded")
    mean = total / n
    std = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
    # A silent (or DC-only) track: demucs would divide by zero; scaling by 1 keeps it silent.
    return MixStats(n, mean, std if std > 1e-8 else 1.0)


def finite(block: np.ndarray) -> np.ndarray:
    """``block`` with NaN and infinite samples set to 0 (itself when all are finite)."""
    return block if np.isfinite(block).all() else np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
