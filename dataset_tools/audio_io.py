"""Decode any audio file to float32 samples, and write WAVs atomically.

Decoding tries libsndfile first (WAV, FLAC, OGG/Vorbis, AIFF: fast, no subprocess) and falls
back to the ``ffmpeg`` program for everything else (MP3, M4A/AAC, Opus, WMA...). Resampling
uses soxr (high quality). Every failure is raised as ``AudioDecodeError`` with a short,
user-facing reason, so bulk tools can skip the file and say why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

FFMPEG_TIMEOUT_S = 600


class AudioDecodeError(RuntimeError):
    """A file could not be decoded as audio; ``str(err)`` is a one-line reason."""


def ffmpeg_path() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioDecodeError("ffmpeg is not installed (run `make setup` or install ffmpeg)")
    return exe


def _read_soundfile(path: Path):
    import soundfile as sf
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [n, channels]
    except Exception:
        return None
    return data.T, int(sr)


def _probe_channels_and_rate(path: Path) -> tuple[int, int]:
    """Ask ffmpeg (via its stderr banner) for the first audio stream's channels and rate."""
    proc = subprocess.run([ffmpeg_path(), "-nostdin", "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True, errors="replace", timeout=60)
    for line in proc.stderr.splitlines():
        if "Audio:" in line:
            parts = [p.strip() for p in line.split("Audio:", 1)[1].split(",")]
            rate = next((int(p.split()[0]) for p in parts if p.endswith("Hz")), 0)
            channels = 2 if any(p in ("stereo",) for p in parts) else 1
            for p in parts:
                if p.endswith("channels") and p.split()[0].isdigit():
                    channels = int(p.split()[0])
                elif p in ("5.1", "5.1(side)", "7.1", "quad", "2.1"):
                    channels = {"5.1": 6, "5.1(side)": 6, "7.1": 8, "quad": 4, "2.1": 3}[p]
            return channels, rate
    reason = next((l.split(": ", 1)[-1] for l in reversed(proc.stderr.splitlines()) if l.strip()), "")
    raise AudioDecodeError(f"no audio stream found ({reason.strip() or 'not an audio file'})")


def _read_ffmpeg(path: Path):
    channels, rate = _probe_channels_and_rate(path)
    if rate <= 0:
        raise AudioDecodeError("audio stream has no sample rate")
    cmd = [ffmpeg_path(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
           "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate), "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AudioDecodeError(f"ffmpeg took longer than {FFMPEG_TIMEOUT_S} s") from None
    data = np.frombuffer(proc.stdout, dtype="<f4")
    if proc.returncode != 0 and data.size == 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioDecodeError(f"ffmpeg could not decode it ({msg[-1] if msg else 'unknown error'})")
    usable = data.size - data.size % channels
    return data[:usable].reshape(-1, channels).T.copy(), rate


def load_audio(path, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode ``path``.

    Returns:
        (samples, sample_rate): float32 samples in [-1, 1], shape ``[n]`` when ``mono`` else
        ``[channels, n]``; the rate is ``sample_rate`` when given (resampled with soxr),
        else the file's own.
    Raises:
        AudioDecodeError: unreadable, empty, corrupt or non-audio file.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioDecodeError("is a directory")
    if not os.access(path, os.R_OK):
        raise AudioDecodeError("file is not readable (permissions)" if path.exists() else "file not found")
    if path.stat().st_size == 0:
        raise AudioDecodeError("empty file (0 bytes)")
    decoded = _read_soundfile(path)
    if decoded is None:
        decoded = _read_ffmpeg(path)
    audio, rate = decoded
    if audio.size == 0 or audio.shape[-1] == 0:
        raise AudioDecodeError("no audio samples decoded")
    if not np.isfinite(audio).all():
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    if mono:
        audio = audio.mean(axis=0)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return np.ascontiguousarray(audio, dtype=np.float32), int(rate)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample ``[n]`` or ``[channels, n]`` float audio with soxr (VHQ)."""
    import soxr
    if from_rate == to_rate:
        return audio
    if audio.ndim == 1:
        return soxr.resample(audio, from_rate, to_rate, quality="VHQ").astype(np.float32)
    return soxr.resample(audio.T, from_rate, to_rate, quality="VHQ").T.astype(np.float32)


def write_wav_atomic(path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write ``[n]`` or ``[channels, n]`` float audio as WAV via a temporary file + rename,
    so an interrupted run never leaves a half-written file at ``path``."""
    import soundfile as sf
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = audio.T if audio.ndim == 2 else audio
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav.part", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(data, -1.0, 1.0), sample_rate, subtype=subtype, format="WAV")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
