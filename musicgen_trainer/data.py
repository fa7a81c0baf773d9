"""The training data: find clips and captions, and draw deterministic batches of random crops
from their cached codes (the cache itself, and the stereo checks, are in ``code_cache.py``).

Two stages, top to bottom: discovery (``find_clips``: any dataset layout we accept, and the
by-track validation split), and batches (``CropSampler``/``collate``: ``CodeBatch``
micro-batches whose every random choice is drawn from ``(seed, index)``, so resume and data
parallelism are exact).
"""
from __future__ import annotations

import hashlib
import json
import re
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataset_tools.dataset_format import AUDIO_EXTENSIONS


# --- dataset discovery ---------------------------------------------------------------------

# Find the training clips and their captions in any of the dataset layouts we accept.
#
# Accepted ``--data``:
# - a folder written by ``dataset_tools prepare`` (``manifest.jsonl`` + ``.wav``/``.txt``/``.json``);
# - an audiocraft ``data.jsonl`` file (or a folder holding one), whose lines give ``path``;
# - a plain folder of audio files with same-named ``.txt`` captions (searched recursively).
#
# The caption of a clip is the ``description`` of its ``.json`` (what audiocraft feeds T5), else
# its ``.txt``, else the manifest line's ``description``, else empty (trained unconditioned,
# with a warning). The validation split is fixed by track: taken from the manifest's ``split``
# when present, otherwise decided by a hash of the track name, so segments of one track never
# straddle the split and the split never changes between runs.

MANIFEST_NAMES = ("manifest.jsonl", "data.jsonl")


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class Clip:
    """One training file."""
    path: Path           # audio file
    caption: str         # description text given to the text encoder
    track: str           # source-track id: segments of one track share it
    split: str           # "train" or "valid"
    genre: str = ""


def _caption_for(audio: Path, fallback: str = "") -> str:
    meta = audio.with_suffix(".json")
    if meta.is_file():
        try:
            description = json.loads(meta.read_text(encoding="utf-8")).get("description")
            if isinstance(description, str) and description.strip():
                return description.strip()
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    txt = audio.with_suffix(".txt")
    if txt.is_file():
        try:
            return txt.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            return txt.read_text(encoding="latin-1").strip()
    return fallback.strip()


def _hash_split(track: str, valid_fraction: float, seed: int) -> str:
    digest = hashlib.sha1(f"{seed}:{track}".encode()).digest()
    return "valid" if int.from_bytes(digest[:8], "big") / 2**64 < valid_fraction else "train"


_SEGMENT_SUFFIX = re.compile(r"(_|-)(seg)?\d{2,4}$")


def _track_of(rel: Path) -> str:
    """Track id of a file with no manifest: its path without a trailing segment number."""
    return str(rel.with_suffix("")).replace("\\", "/") if not _SEGMENT_SUFFIX.search(rel.stem) \
        else str(rel.parent / _SEGMENT_SUFFIX.sub("", rel.stem))


def _from_manifest(manifest: Path, valid_fraction: float, seed: int) -> list[Clip]:
    root = manifest.parent
    clips = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path = Path(row["path"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"{manifest}:{n}: not a manifest line with a 'path'") from None
        if not path.is_absolute():
            path = root / path
        track = str(row.get("source") or _track_of(path.relative_to(root) if path.is_relative_to(root) else path))
        split = row.get("split") if row.get("split") in ("train", "valid") else \
            _hash_split(track, valid_fraction, seed)
        clips.append(Clip(path=path, caption=_caption_for(path, row.get("description") or ""),
                          track=track, split=split, genre=str(row.get("genre") or "")))
    return clips


def _from_folder(folder: Path, valid_fraction: float, seed: int) -> list[Clip]:
    clips = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # hidden folders: caches, partial files
        rel = path.relative_to(folder)
        track = _track_of(rel)
        genre = rel.parts[0] if len(rel.parts) > 1 else ""
        clips.append(Clip(path=path, caption=_caption_for(path), track=track,
                          split=_hash_split(track, valid_fraction, seed), genre=genre))
    return clips


def find_clips(data: tp.Union[str, Path], valid_fraction: float = 0.1, seed: int = 0) -> list[Clip]:
    """All clips of a dataset (see module doc), in a stable order.

    Raises:
        DatasetError: missing path, unreadable manifest, or no audio found.
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise DatasetError(f"dataset not found: {data}")
    if data.is_file():
        if data.suffix != ".jsonl":
            raise DatasetError(f"{data} is a file but not a .jsonl manifest")
        clips = _from_manifest(data, valid_fraction, seed)
    else:
        manifest = next((data / n for n in MANIFEST_NAMES if (data / n).is_file()), None)
        clips = _from_manifest(manifest, valid_fraction, seed) if manifest else \
            _from_folder(data, valid_fraction, seed)
    if not clips:
        raise DatasetError(f"no audio files found in {data} (expected a dataset_tools output folder, "
                           f"a data.jsonl, or audio files with .txt captions)")
    missing = [c.path for c in clips if not c.path.is_file()]
    if len(missing) == len(clips):
        raise DatasetError(f"none of the {len(clips)} files listed in {data} exist (first: {missing[0]})")
    return clips


def split_clips(clips: tp.Sequence[Clip]) -> tuple[list[Clip], list[Clip]]:
    """(train, valid); if the split left no training clip, everything trains."""
    train = [c for c in clips if c.split == "train"]
    valid = [c for c in clips if c.split == "valid"]
    if not train:
        return list(clips), []
    return train, valid


# --- batches -------------------------------------------------------------------------------

# Deterministic batches of random crops from cached codes.
#
# Every random choice (the order of clips, each crop's start, word dropout, the batch-level
# condition dropout) is drawn from a generator seeded by ``(seed, index)``, where the index
# counts items or micro-batches since the start of training. So micro-batch ``i`` is the same
# whatever the number of processes or accumulation steps, and resuming at step ``n`` needs
# nothing but ``n``: the data position is the step.

@dataclass
class CodeBatch:
    """A micro-batch.

    codes: ``[B, K, T]`` long; frame_valid: ``[B, T]`` bool (False on padding);
    captions: B strings, or ``None`` for the null condition (classifier-free guidance dropout).
    melody: melody models only: chroma crops ``[B, T_chroma, n_chroma]`` float (``melody.py``),
    ``None`` for the null melody (dropped); always ``None`` for other models.
    """
    codes: torch.Tensor
    frame_valid: torch.Tensor
    captions: list
    dropped: bool = False
    melody: tp.Optional[torch.Tensor] = None

    def to(self, device) -> "CodeBatch":
        melody = None if self.melody is None else self.melody.to(device, non_blocking=True)
        return CodeBatch(self.codes.to(device, non_blocking=True),
                         self.frame_valid.to(device, non_blocking=True), self.captions, self.dropped, melody)


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
    of ``n_frames`` (the whole clip, padded, when shorter). For melody models, ``melody``
    (``melody.MelodyCrops``) gives each crop's chroma, and the micro-batch's melody is dropped
    with ``melody.dropout`` (audiocraft's attribute dropout), drawn from ``(seed, index)`` too.
    """

    def __init__(self, codes: tp.Sequence[np.ndarray], captions: tp.Sequence[str], n_frames: int,
                 batch_size: int, seed: int = 0, cond_dropout: float = 0.3, word_dropout_p: float = 0.3,
                 melody=None):
        if not codes:
            raise ValueError("no training clips")
        self.codes, self.captions = list(codes), list(captions)
        self.n_frames, self.batch_size, self.seed = n_frames, batch_size, seed
        self.cond_dropout, self.word_dropout_p = cond_dropout, word_dropout_p
        self.melody = melody
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
        codes, caption, _, _ = self._visit(visit)
        return codes, caption

    def _visit(self, visit: int) -> tuple[np.ndarray, str, int, int]:
        """(codes crop, caption, clip index, crop start frame) of the ``visit``-th clip visit."""
        epoch, position = divmod(visit, len(self.codes))
        index = int(self._permutation(epoch)[position])
        codes = self.codes[index]
        rng = np.random.default_rng([self.seed, 1, visit])
        start = int(rng.integers(0, max(0, codes.shape[-1] - self.n_frames) + 1))
        caption = word_dropout(self.captions[index], self.word_dropout_p, rng)
        return codes[:, start:start + self.n_frames], caption, index, start

    def micro_batch(self, index: int) -> CodeBatch:
        first = index * self.batch_size
        items = [self._visit(first + j) for j in range(self.batch_size)]
        # One draw per micro-batch, as audiocraft's ClassifierFreeGuidanceDropout does.
        dropped = bool(np.random.default_rng([self.seed, 2, index]).random() < self.cond_dropout)
        captions = [None if dropped else item[1] for item in items]
        batch = collate([item[0] for item in items], captions, self.n_frames, dropped)
        if self.melody is not None:
            # One draw per micro-batch for self_wav, as audiocraft's AttributeDropout does;
            # guidance dropout nullifies it with the caption.
            melody_dropped = np.random.default_rng([self.seed, 3, index]).random() < self.melody.dropout
            if not (dropped or melody_dropped):
                batch.melody = torch.from_numpy(np.stack(
                    [self.melody.crop(clip, start, self.n_frames) for _, _, clip, start in items]))
        return batch

    def epoch_of(self, micro_batch_index: int) -> float:
        return micro_batch_index * self.batch_size / len(self.codes)


def validation_batches(codes: tp.Sequence[np.ndarray], captions: tp.Sequence[str], n_frames: int,
                       batch_size: int, melody=None) -> tp.Iterator[CodeBatch]:
    """Fixed validation batches: the first window of every clip, real captions (and melody,
    for melody models: ``melody.MelodyCrops``), no dropout."""
    for start in range(0, len(codes), batch_size):
        crops = [c[:, :n_frames] for c in codes[start:start + batch_size]]
        batch = collate(crops, list(captions[start:start + batch_size]), n_frames)
        if melody is not None:
            batch.melody = torch.from_numpy(np.stack(
                [melody.crop(i, 0, n_frames) for i in range(start, start + len(crops))]))
        yield batch
