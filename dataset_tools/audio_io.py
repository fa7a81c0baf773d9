"""Decode any audio file to float32 samples, and write WAVs atomically.

Decoding tries libsndfile first (WAV, FLAC, OGG/Vorbis, AIFF: fast, no subprocess) and falls
back to the ``ffmpeg`` program for everything else (MP3, M4A/AAC, Opus, WMA...). Resampling
uses soxr (high quality). Every failure is raised as ``AudioDecodeError`` with a short,
user-facing reason, so bulk tools can skip the file and say why.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .atomic import atomic_path

FFMPEG_TIMEOUT_S = 600


class AudioDecodeError(RuntimeError):
    """A file could not be decoded as audio; ``str(err)`` is a one-line reason."""


# Write errors of the machine, not of one file: every further write would fail the same way.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_SF_ERR_SYSTEM = 2  # libsndfile's code for a failed system call (its message: "System error.")


def as_os_error(exc: BaseException, folder) -> OSError | None:
    """``exc`` as the OSError it is, or None when it is none.

    libsndfile reports a failed write(2) (disk full, over quota) as "System error."
    without the reason; C's errno, read just after, still holds it. If errno was reset
    meanwhile, a folder with no free space left still tells a full disk."""
    if isinstance(exc, OSError):
        return exc
    import soundfile as sf
    if not isinstance(exc, sf.LibsndfileError) or getattr(exc, "code", None) != _SF_ERR_SYSTEM:
        return None
    code = getattr(getattr(sf, "_ffi", None), "errno", 0)
    if code not in DISK_ERRNOS:
        try:
            code = errno.ENOSPC if shutil.disk_usage(folder).free == 0 else code
        except OSError:
            pass
    return OSError(code, os.strerror(code), str(folder)) if code else None


def ffmpeg_path() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioDecodeError("ffmpeg is not installed (run `make setup` or install ffmpeg)")
    return exe


def _read_soundfile(path: Path):
    import soundfile as sf
    try:
        # bytes: soundfile encodes a str path strictly, failing on names that are not UTF-8
        data, sr = sf.read(os.fsencode(path), dtype="float32", always_2d=True)  # [n, channels]
    except Exception:
        return None
    return data.T, int(sr)


def ffmpeg_reason(stderr: str) -> str:
    """The most telling line of ffmpeg's error output, without its ``[format @ 0x...]`` prefix."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    # ffmpeg ends with a generic line ("Invalid data found..."); an earlier one is often clearer.
    for line in lines:
        if "moov atom not found" in line:
            return "moov atom not found: the file is truncated or not finished"
    if not lines:
        return ""
    # "[mp3 @ 0x55d0c8a0] Header missing" or "file.mp3: Invalid data": the message only
    return re.sub(r"^\[[^\]]* @ 0x[0-9a-fA-F]+\]\s*", "", lines[-1].split(": ", 1)[-1]).strip()


def _not_audio(reason: str) -> str:
    return f"not an audio file, or damaged (ffmpeg: {reason or 'no audio stream found'})"


def probe_channels_and_rate(path: Path) -> tuple[int, int]:
    """The first audio stream's (channels, sample rate), from ffprobe (or ffmpeg's banner)."""
    ffprobe = shutil.which("ffprobe")
    try:
        if ffprobe:
            proc = subprocess.run([ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
                                   "stream=channels,sample_rate", "-of", "json", str(path)],
                                  capture_output=True, text=True, errors="replace", timeout=60,
                                  stdin=subprocess.DEVNULL)
            try:
                streams = json.loads(proc.stdout or "{}").get("streams") or []
            except ValueError:
                streams = []
            if streams:
                return int(streams[0].get("channels") or 0), int(streams[0].get("sample_rate") or 0)
            reason = ffmpeg_reason(proc.stderr)
            raise AudioDecodeError(_not_audio(reason))
        proc = subprocess.run([ffmpeg_path(), "-nostdin", "-hide_banner", "-i", str(path)],
                              capture_output=True, text=True, errors="replace", timeout=60)
    except subprocess.TimeoutExpired:
        raise AudioDecodeError("ffprobe took longer than 60 s to read the file header") from None
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
    reason = ffmpeg_reason(proc.stderr)
    raise AudioDecodeError(_not_audio(reason))


def _read_ffmpeg(path: Path):
    channels, rate = probe_channels_and_rate(path)
    if rate <= 0:
        raise AudioDecodeError("damaged or unsupported audio (ffprobe finds no sample rate)")
    if channels <= 0:
        raise AudioDecodeError("damaged or unsupported audio (ffprobe finds no channels)")
    cmd = [ffmpeg_path(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
           "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate), "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AudioDecodeError(f"ffmpeg took longer than {FFMPEG_TIMEOUT_S} s") from None
    data = np.frombuffer(proc.stdout, dtype="<f4")
    if proc.returncode != 0 and data.size == 0:
        reason = ffmpeg_reason(proc.stderr.decode(errors="replace"))
        raise AudioDecodeError(f"ffmpeg could not decode it ({reason or 'unknown error'})")
    usable = data.size - data.size % channels
    return data[:usable].reshape(-1, channels).T.copy(), rate


def check_readable_file(path) -> Path:
    """``path`` as a Path if it is a readable, non-empty regular file; else AudioDecodeError."""
    path = Path(path)
    if path.is_dir():
        raise AudioDecodeError("is a directory")
    if not os.access(path, os.R_OK):
        raise AudioDecodeError("file is not readable (permissions)" if path.exists() else "file not found")
    if not path.is_file():
        raise AudioDecodeError("not a regular file (device, pipe or socket)")
    if path.stat().st_size == 0:
        raise AudioDecodeError("empty file (0 bytes)")
    return path


def load_audio(path, sample_rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode ``path``.

    Returns:
        (samples, sample_rate): float32 samples in [-1, 1], shape ``[n]`` when ``mono`` else
        ``[channels, n]``; the rate is ``sample_rate`` when given (resampled with soxr),
        else the file's own.
    Raises:
        AudioDecodeError: unreadable, empty, corrupt or non-audio file.
    """
    path = check_readable_file(path)
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


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Return ``audio`` (``[n]`` or ``[c, n]``) as ``[channels, n]`` (``[n]`` when ``channels`` is 1).

    Mono is the mean of all channels. Mono to stereo duplicates. More than ``channels``
    inputs (e.g. 5.1): the first ``channels`` are kept (front left/right in WAV order) and
    the rest are mixed equally into each, so nothing is lost; the result is scaled down
    only if that mix would clip.
    """
    if audio.ndim == 1:
        audio = audio[None, :]
    have = audio.shape[0]
    if channels == 1:
        return audio.mean(axis=0).astype(np.float32)
    if have == channels:
        return audio.astype(np.float32, copy=False)
    if have < channels:
        reps = -(-channels // have)  # ceil: tile mono -> stereo, stereo -> 4 ch...
        return np.tile(audio, (reps, 1))[:channels].astype(np.float32)
    out = audio[:channels] + audio[channels:].mean(axis=0, keepdims=True) / np.sqrt(2.0)
    peak = float(np.abs(out).max(initial=0.0))
    if peak > 1.0:
        out = out / peak
    return out.astype(np.float32)


WRITE_BLOCK_SECONDS = 10


def write_audio(path, data: np.ndarray, sample_rate: int, format: str | None = None,
                subtype: str | None = None) -> None:
    """``soundfile.write`` of ``[n]`` or ``[n, channels]`` samples, fed in 10 s blocks:
    libsndfile 1.2's Vorbis (OGG) encoder segfaults when handed about a minute of audio
    in one call."""
    import soundfile as sf
    channels = 1 if data.ndim == 1 else data.shape[1]
    block = WRITE_BLOCK_SECONDS * sample_rate
    try:
        with sf.SoundFile(str(path), "w", sample_rate, channels, subtype=subtype, format=format) as f:
            for i in range(0, max(1, data.shape[0]), block):
                f.write(data[i:i + block])
    except sf.LibsndfileError as exc:
        error = as_os_error(exc, Path(path).parent)  # a full disk must read as one, not as bad audio
        if error is None:
            raise
        raise error from None


def write_wav_atomic(path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write ``[n]`` or ``[channels, n]`` float audio as WAV via a temporary file + rename,
    so an interrupted run never leaves a half-written file at ``path`` (``atomic_path``)."""
    path = Path(path)
    data = audio.T if audio.ndim == 2 else audio
    with atomic_path(path) as tmp:
        write_audio(tmp, np.clip(data, -1.0, 1.0), sample_rate, format="WAV", subtype=subtype)
    return path
