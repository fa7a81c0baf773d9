"""The Captions tab's work, without Gradio: list a prepared dataset's segments with their captions,
filter and page through them, and edit captions (one, or find-and-replace across a genre).

What is listed and edited is exactly what the trainer reads: the segments of the dataset's
``manifest.jsonl`` (written by ``dataset_tools prepare``, kept up to date by the genre tagger's
filing), each a ``.wav`` with its ``.txt`` caption and ``.json`` audiocraft metadata. A caption is
saved to both, each replaced atomically (temporary file + rename): the ``.json`` first, because
its ``description`` is what ``musicgen_trainer.data`` feeds the text encoder, then the ``.txt``.
Nothing else is ever written: a path that is not a listed segment of the dataset (or lies outside
it, through ``..`` or a link) is refused, and nothing is edited while a prepare runs on the dataset.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing as tp
from pathlib import Path

from dataset_tools.atomic import write_text_atomic
from dataset_tools.manifest import MANIFEST, read_manifest

from . import jobs
from .paths import OutsideRootError, confined
from .studio_data import hide_roots, require_root

MAX_CAPTION_CHARS = 500   # longer captions are cut by T5's tokenizer anyway
MAX_FIND_CHARS = 200
PAGE_ROWS = 50            # rows of the table per page
FILTERS = ("all", "no caption", "unknown")
ALL_GENRES = "all genres"
UNLABELLED = "(unlabelled)"  # the genre shown for tracks without one (unknown/, files in the root)
COLUMNS = ["segment", "genre", "caption", "seconds"]


@dataclasses.dataclass
class Segment:
    path: str       # relative to the dataset folder (manifest's path)
    genre: str      # the manifest's genre, or UNLABELLED
    caption: str
    seconds: float

    def row(self) -> tp.List[tp.Any]:
        return [self.path, self.genre, self.caption, round(self.seconds, 2)]


def dataset_folder(root, dataset: str) -> Path:
    """The prepared dataset ``dataset`` (relative to the data root): it must hold a manifest."""
    if not (dataset or "").strip():
        raise ValueError("choose a prepared dataset")
    folder = confined(require_root(root), dataset, must_exist=True)
    if not (folder / MANIFEST).is_file():
        raise ValueError(f"{dataset!r} is not a prepared dataset (no {MANIFEST}): prepare it on the Data tab")
    return folder


def read_caption(wav: Path) -> str:
    """A segment's caption as the trainer reads it: the ``.json``'s description, else the ``.txt``."""
    try:
        description = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8")).get("description")
        if isinstance(description, str) and description.strip():
            return description.strip()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return wav.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _is_unknown(seg: Segment) -> bool:
    return seg.genre == UNLABELLED


def load_segments(folder: Path) -> tp.List[Segment]:
    """Every segment of the dataset's manifest that is a file inside the dataset, with its caption."""
    try:
        rows = read_manifest(folder / MANIFEST)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the dataset's {MANIFEST} ({exc.__class__.__name__})") from None
    segments = []
    for row in rows:
        wav = _segment_path(folder, str(row.get("path", "")))
        if wav is None:
            continue
        rel = wav.relative_to(folder).as_posix()
        segments.append(Segment(rel, row.get("genre") or UNLABELLED, read_caption(wav),
                                float(row.get("duration") or 0.0)))
    return segments


def _segment_path(folder: Path, rel: str) -> tp.Optional[Path]:
    """The server path of segment ``rel`` when it is a ``.wav`` inside ``folder``; else None."""
    if not rel.endswith(".wav"):
        return None
    try:
        wav = confined(folder, rel)
    except OutsideRootError:
        return None
    return wav if wav.is_file() else None


def genres_of(segments: tp.Sequence[Segment]) -> tp.List[str]:
    return sorted({s.genre for s in segments}, key=lambda g: (g == UNLABELLED, g))


def filter_segments(segments: tp.Sequence[Segment], which: str = "all", genre: str = ALL_GENRES,
                    search: str = "") -> tp.List[Segment]:
    """``which``: ``all``, ``no caption`` or ``unknown`` (no genre); ``genre``: one genre or all;
    ``search``: text the caption or the segment name contains (case ignored)."""
    if which not in FILTERS:
        raise ValueError(f"filter must be one of {', '.join(FILTERS)}")
    search = (search or "").strip().lower()[:MAX_FIND_CHARS]
    picked = []
    for seg in segments:
        if which == "no caption" and seg.caption:
            continue
        if which == "unknown" and not _is_unknown(seg):
            continue
        if genre and genre != ALL_GENRES and seg.genre != genre:
            continue
        if search and search not in seg.caption.lower() and search not in seg.path.lower():
            continue
        picked.append(seg)
    return picked


def page_of(segments: tp.Sequence[Segment], page: int, rows: int = PAGE_ROWS) -> tp.Tuple[tp.List[Segment], int, int]:
    """``(the segments of page ``page`` (1-based, clamped), that page, the number of pages)``."""
    pages = max(1, math.ceil(len(segments) / rows))
    page = min(max(1, int(page or 1)), pages)
    return list(segments[(page - 1) * rows: page * rows]), page, pages


def clean_caption(text: str) -> str:
    """One line, spaces collapsed; ValueError when longer than :data:`MAX_CAPTION_CHARS`."""
    if not isinstance(text, str):
        raise ValueError("a caption must be text")
    text = re.sub(r"\s+", " ", "".join(ch if ord(ch) >= 32 else " " for ch in text)).strip()
    if len(text) > MAX_CAPTION_CHARS:
        raise ValueError(f"a caption may have at most {MAX_CAPTION_CHARS} characters (this one has {len(text)})")
    return text


def _check_not_preparing(folder: Path) -> None:
    """Refuse to edit while prepare writes the dataset (its job runs, or its own lock is there)."""
    info = jobs.job_status(folder)
    if (info is not None and info.running) or (folder / ".prepare.lock").exists():
        raise ValueError("prepare is running on this dataset: wait until it has finished")


def _editable(folder: Path, segment: str, listed: tp.Optional[tp.Set[str]] = None) -> Path:
    """The ``.wav`` of ``segment`` when it is one of the dataset's listed segments with its caption
    files; ValueError (one line) otherwise: nothing else is ever written."""
    wav = _segment_path(folder, (segment or "").strip())
    if wav is None:
        raise ValueError(f"{segment!r} is not a segment of this dataset")
    listed = listed if listed is not None else {s.path for s in load_segments(folder)}
    if wav.relative_to(folder).as_posix() not in listed:
        raise ValueError(f"{segment!r} is not a segment of this dataset")
    for sidecar in (wav.with_suffix(".json"), wav.with_suffix(".txt")):
        if os.path.islink(sidecar) or (sidecar.exists() and not sidecar.is_file()):
            raise ValueError(f"{segment!r}'s {sidecar.suffix} is not a plain file: not edited")
    return wav


def _write_caption(wav: Path, caption: str) -> None:
    """The caption into the ``.json`` (description) then the ``.txt``, each atomically."""
    meta_file = wav.with_suffix(".json")
    meta: tp.Dict[str, tp.Any] = {}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except ValueError:
            raise ValueError(f"{meta_file.name} is not valid JSON: not edited") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_file.name} is not a metadata object: not edited")
    meta["description"] = caption
    write_text_atomic(meta_file, json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(wav.with_suffix(".txt"), caption)


def set_caption(root, dataset: str, segment: str, caption: str) -> str:
    """Save ``caption`` for one segment (``.json`` and ``.txt``); returns the saved caption."""
    folder = dataset_folder(root, dataset)
    _check_not_preparing(folder)
    text = clean_caption(caption)
    _write_caption(_editable(folder, segment), text)
    return text


def replace_in_genre(root, dataset: str, genre: str, find: str, replace: str) -> int:
    """Replace the text ``find`` with ``replace`` (literally, case kept) in the captions of every
    segment of ``genre``; returns how many captions changed. Every new caption is checked before
    any file is written, so a bad result changes nothing."""
    folder = dataset_folder(root, dataset)
    _check_not_preparing(folder)
    if not find:
        raise ValueError("give the text to find")
    if len(find) > MAX_FIND_CHARS or len(replace or "") > MAX_FIND_CHARS:
        raise ValueError(f"find and replace texts may have at most {MAX_FIND_CHARS} characters")
    segments = load_segments(folder)
    if genre not in genres_of(segments):
        raise ValueError(f"{genre!r} is not a genre of this dataset")
    changes = []
    for seg in segments:
        if seg.genre == genre and find in seg.caption:
            changes.append((seg, clean_caption(seg.caption.replace(find, replace or ""))))
    listed = {s.path for s in segments}
    for seg, text in changes:
        _write_caption(_editable(folder, seg.path, listed), text)
    return len(changes)


def segment_caption(root, dataset: str, segment: str) -> str:
    """The caption of a listed segment (as the trainer reads it)."""
    wav = _segment_path(dataset_folder(root, dataset), (segment or "").strip())
    if wav is None:
        raise ValueError(f"{segment!r} is not a segment of this dataset")
    return read_caption(wav)


def segment_audio(root, dataset: str, segment: str) -> tp.Tuple[int, tp.Any]:
    """``(sample_rate, samples [frames] or [frames, channels])`` of a listed segment, for a player."""
    import soundfile as sf
    folder = dataset_folder(root, dataset)
    wav = _segment_path(folder, (segment or "").strip())
    if wav is None:
        raise ValueError(f"{segment!r} is not a segment of this dataset")
    try:
        samples, rate = sf.read(str(wav), dtype="int16", frames=int(60 * 48000))
    except (OSError, RuntimeError) as exc:
        raise ValueError(hide_roots(f"cannot read {segment}: {exc}", require_root(root))) from None
    return rate, samples
