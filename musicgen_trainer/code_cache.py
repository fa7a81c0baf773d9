"""The code cache: every clip encoded once by the model's compression model, codes on disk.

Also the checks a stereo model needs before and after encoding (mono files, dual-mono files).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import typing as tp
from pathlib import Path

import numpy as np
import torch

from dataset_tools.atomic import atomic_path

from .data import Clip, DatasetError

# --- code cache ----------------------------------------------------------------------------

# Encode every clip once with the model's compression model and keep the codes on disk.
#
# Training then reads small integer arrays instead of decoding, resampling and running
# EnCodec at every step (what most MusicGen trainers do). A cache entry is keyed by the
# file (absolute path, size, modification time; for a stereo model also its channel count)
# and by a fingerprint of the compression model's weights and settings, so an edited file or
# another model re-encodes and nothing stale is ever reused. Entries are written atomically.

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("MUSICGEN_CODE_CACHE",
                                        Path.home() / ".cache" / "musicgen-finetune" / "codes"))
ENCODE_CHUNK_SECONDS = 60  # bounded memory for long files; a multiple of the hop length


def compression_fingerprint(compression_model) -> str:
    """Hash of the compression model's weights and settings (16 hex chars)."""
    h = hashlib.sha1()
    h.update(f"{compression_model.sample_rate}|{compression_model.channels}|"
             f"{compression_model.num_codebooks}|{compression_model.cardinality}".encode())
    for name, tensor in sorted(compression_model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _entry_name(path: Path, fingerprint: str, channels: int = 0) -> str:
    """``channels``: the file's channel count, for stereo models only (0: not part of the key),
    so an entry made from a mono file copied to both sides is never taken for real stereo."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{fingerprint}"
    key += f"|{channels}ch" if channels else ""
    return hashlib.sha1(key.encode()).hexdigest() + ".npy"


@torch.no_grad()
def encode_file(compression_model, path: Path) -> np.ndarray:
    """Decode ``path``, resample to the model's rate, match the model's channels, encode.

    A mono model gets the mean of all channels; a stereo model gets left and right as they are
    (surround folded into front left/right, as ``prepare`` does, and a mono file copied to both
    sides: ``check_stereo_data`` lets that through only when asked to).

    Returns:
        int16 codes ``[K, T]`` with T = frames at ``compression_model.frame_rate`` (a stereo
        model's K = 8: its wrapper interleaves the left and right codebooks).
    """
    from dataset_tools.audio_io import load_audio, to_channels

    sr = compression_model.sample_rate
    channels = compression_model.channels
    audio, _ = load_audio(path, sample_rate=sr, mono=channels == 1)
    wav = torch.from_numpy(to_channels(audio, channels))
    wav = wav[None] if wav.dim() == 1 else wav  # [C, n]
    device = next(compression_model.parameters()).device
    chunk = ENCODE_CHUNK_SECONDS * sr
    parts = []
    for start in range(0, wav.shape[-1], chunk):
        piece = wav[:, start:start + chunk].to(device)[None]  # [1, C, n]
        codes, _ = compression_model.encode(piece)           # [1, K, frames]
        parts.append(codes[0].to(torch.int16).cpu())
    return torch.cat(parts, dim=-1).numpy()


# --- stereo models -------------------------------------------------------------------------

# A stereo model (facebook/musicgen-stereo-*) fed mono files would learn identical left and
# right channels: training stops before encoding unless that is asked for explicitly.

STEREO_PREPARE_HINT = "python -m dataset_tools prepare SRC OUT --channels 2"


def file_channels(path: Path) -> int:
    """Channel count from the file's header (libsndfile, else ffprobe); 0 when unreadable
    (such a file is skipped, with its reason, when it is encoded). Remembered per file version:
    the check before training and the code cache both ask."""
    try:
        stat = os.stat(path)
    except OSError:
        return 0
    return _header_channels(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _header_channels(path: str, size: int, mtime_ns: int) -> int:
    import soundfile as sf
    try:
        return int(sf.info(os.fsencode(path)).channels)
    except Exception:  # not a libsndfile format (MP3 on old libsndfile, M4A...), or damaged
        pass
    from dataset_tools.audio_io import AudioDecodeError, probe_channels_and_rate
    try:
        return probe_channels_and_rate(Path(path))[0]
    except (AudioDecodeError, OSError, ValueError):
        return 0


def check_stereo_data(clips: tp.Sequence[Clip], model_channels: int, allow_mono: bool = False) -> int:
    """Refuse mono files for a stereo model (one-line ``DatasetError`` naming how many and the
    fix), unless ``allow_mono``. Returns the number of mono files (0 for a mono model, which
    downmixes whatever it gets)."""
    if model_channels < 2:
        return 0
    mono = [c.path for c in clips if file_channels(c.path) == 1]
    if mono and not allow_mono:
        raise DatasetError(
            f"{len(mono)} of {len(clips)} audio files are mono (first: {mono[0]}), but the model is stereo: "
            f"it would learn identical left and right channels. Prepare stereo sources in stereo "
            f"(`{STEREO_PREPARE_HINT}`; mono sources stay mono, copied to both sides), or pass "
            f"--allow-mono-for-stereo to train on them anyway")
    return len(mono)


def identical_channels(codes: np.ndarray) -> bool:
    """Whether a stereo model's codes ``[2K, T]`` (left and right codebooks interleaved, as
    audiocraft's ``InterleaveStereoCompressionModel`` lays them out) encode the same audio on both
    sides. The codec is deterministic, so a dual-mono file (e.g. a mono source that
    ``prepare --channels 2`` copied to both sides) gives exactly equal left and right codes."""
    return codes.shape[0] >= 2 and bool(np.array_equal(codes[0::2], codes[1::2]))


def check_dual_mono(clips: tp.Sequence[Clip], codes: tp.Sequence[np.ndarray], model_channels: int,
                    allow_mono: bool = False) -> int:
    """After encoding, for a stereo model: refuse files whose left and right are the same (one-line
    ``DatasetError``), unless ``allow_mono``. The header check (``check_stereo_data``) cannot see
    them: they are 2-channel files. Returns how many there are."""
    if model_channels < 2:
        return 0
    same = [c.path for c, k in zip(clips, codes) if identical_channels(k)]
    if same and not allow_mono:
        raise DatasetError(
            f"{len(same)} of {len(clips)} stereo files have identical left and right channels (first: {same[0]}; "
            f"e.g. mono sources that prepare --channels 2 copied to both sides): the stereo model would learn "
            f"identical channels from them. Use stereo recordings, or pass --allow-mono-for-stereo to train on "
            f"them anyway")
    return len(same)


def _save_atomic(array: np.ndarray, path: Path) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


class CodeCache:
    """Codes of a dataset for one compression model (see module doc)."""

    def __init__(self, compression_model, cache_dir: tp.Union[str, Path, None] = None):
        self.compression_model = compression_model
        self.fingerprint = compression_fingerprint(compression_model)
        self.dir = Path(cache_dir or DEFAULT_CACHE_DIR) / self.fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)

    def codes_for(self, clips: tp.Sequence[Clip], progress: bool = True,
                  ) -> tuple[list[np.ndarray], list[Clip], list[tuple[Clip, str]]]:
        """Codes of each clip, encoding only those not cached yet.

        Returns:
            (codes, kept_clips, skipped): int16 arrays ``[K, T]`` (memory-mapped) for the
            clips that could be read, those clips, and ``(clip, reason)`` for the others.
        """
        from tqdm.auto import tqdm

        from dataset_tools.audio_io import AudioDecodeError

        codes, kept, skipped = [], [], []
        todo = []
        for clip in clips:
            try:
                entry = self._entry(clip)
            except OSError as exc:
                skipped.append((clip, f"cannot read file: {exc.strerror or exc}"))
                continue
            todo.append((clip, entry))
        missing = sum(not e.exists() for _, e in todo)
        bar = tqdm(total=missing, desc="encoding audio (once)", unit="file", disable=not progress or not missing)
        for clip, entry in todo:
            if not entry.exists():
                try:
                    array = encode_file(self.compression_model, clip.path)
                except (AudioDecodeError, OSError, RuntimeError) as exc:
                    skipped.append((clip, str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__))
                    bar.update(1)
                    continue
                if array.shape[-1] == 0:
                    skipped.append((clip, "shorter than one codec frame"))
                    bar.update(1)
                    continue
                _save_atomic(array, entry)
                bar.update(1)
            codes.append(np.load(entry, mmap_mode="r"))
            kept.append(clip)
        bar.close()
        for clip, reason in skipped:
            logger.warning("skipped %s: %s", clip.path, reason)
        return codes, kept, skipped

    def is_cached(self, clip: Clip) -> bool:
        """Whether ``clip``'s codes are on disk already (False when the file cannot be read)."""
        try:
            return self._entry(clip).exists()
        except OSError:
            return False

    def _entry(self, clip: Clip) -> Path:
        """The cache file of ``clip``'s codes (``OSError`` when the file cannot be read)."""
        # For a stereo model, how the file was laid out decides the entry too.
        channels = file_channels(clip.path) if self.compression_model.channels > 1 else 0
        return self.dir / _entry_name(clip.path, self.fingerprint, channels)
