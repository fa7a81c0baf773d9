"""Encode every clip once with the model's compression model and keep the codes on disk.

Training then reads small integer arrays instead of decoding, resampling and running
EnCodec at every step (what most MusicGen trainers do). A cache entry is keyed by the
file (absolute path, size, modification time) and by a fingerprint of the compression
model's weights and settings, so an edited file or another model re-encodes and nothing
stale is ever reused. Entries are written atomically.
"""
from __future__ import annotations

import hashlib
import logging
import os
import typing as tp
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .data import Clip

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


def _entry_name(path: Path, fingerprint: str) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{fingerprint}"
    return hashlib.sha1(key.encode()).hexdigest() + ".npy"


@torch.no_grad()
def encode_file(compression_model, path: Path) -> np.ndarray:
    """Decode ``path``, resample to the model's rate, downmix, encode.

    Returns:
        int16 codes ``[K, T]`` with T = frames at ``compression_model.frame_rate``.
    """
    from dataset_tools.audio_io import load_audio

    sr = compression_model.sample_rate
    channels = compression_model.channels
    audio, _ = load_audio(path, sample_rate=sr, mono=channels == 1)
    wav = torch.from_numpy(audio)
    wav = wav[None] if wav.dim() == 1 else wav
    if wav.shape[0] != channels:  # mono file for a stereo model, or >2 channels
        wav = wav.mean(0, keepdim=True).expand(channels, -1) if channels > 1 else wav.mean(0, keepdim=True)
    device = next(compression_model.parameters()).device
    chunk = ENCODE_CHUNK_SECONDS * sr
    parts = []
    for start in range(0, wav.shape[-1], chunk):
        piece = wav[:, start:start + chunk].to(device)[None]  # [1, C, n]
        codes, _ = compression_model.encode(piece)           # [1, K, frames]
        parts.append(codes[0].to(torch.int16).cpu())
    return torch.cat(parts, dim=-1).numpy()


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
                entry = self.dir / _entry_name(clip.path, self.fingerprint)
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
