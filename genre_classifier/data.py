"""Find the labelled files of a genre-folder tree and split them by track.

Layout: ``DATA/<genre>/**/<file>.<audio ext>``; folders named like ``unknown/`` (see
``UNKNOWN_GENRE_DIRS``) and hidden folders are not genres and are ignored. A dataset written by
``dataset_tools prepare`` has ``DATA/manifest.jsonl``; its ``source`` field names the original
track each 30 s segment was cut from, and all segments of one source form one *track* (a
recording), so the split never puts pieces of one recording on both sides (which would inflate
the accuracy). The manifest is also found in a parent or sub-folder, and without one prepare's
segment names (``name__000.wav``) group the files; see `grouping`. Only when neither works is
each file its own track, with a loud warning.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataset_tools.dataset_format import AUDIO_EXTENSIONS, UNKNOWN_GENRE_DIRS

from .grouping import MANIFEST, group_recordings, read_manifest  # noqa: F401 (MANIFEST, read_manifest: re-exported)

log = logging.getLogger("genre_classifier")


class DatasetError(ValueError):
    """The dataset cannot be used as asked; ``str()`` tells the user what to change."""


@dataclass(frozen=True)
class LabelledFile:
    path: Path    # absolute path of the audio file
    rel: str      # path relative to the dataset root (POSIX), as in the manifest
    genre: str    # the genre folder it sits in
    track: str    # grouping key: files with the same key are one recording


@dataclass
class Split:
    """Files of each part; no track has files in two parts."""
    train: list[LabelledFile] = field(default_factory=list)
    val: list[LabelledFile] = field(default_factory=list)
    test: list[LabelledFile] = field(default_factory=list)

    def parts(self) -> dict[str, list[LabelledFile]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def list_audio_files(directory: Path) -> list[Path]:
    """Audio files under ``directory`` (recursive, sorted, hidden files and folders skipped)."""
    directory = Path(directory)
    found = []
    for path in directory.rglob("*"):
        rel_parts = path.relative_to(directory).parts
        if any(part.startswith(".") for part in rel_parts):
            continue
        if path.is_file() and is_audio(path):
            found.append(path)
    return sorted(found)


def discover(root) -> list[LabelledFile]:
    """Every audio file in the genre folders of ``root`` (``unknown/`` excluded)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    found = []
    for genre_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        name = genre_dir.name
        if name.startswith(".") or name.lower() in UNKNOWN_GENRE_DIRS:
            continue
        found += [(path, name) for path in list_audio_files(genre_dir)]
    grouping = group_recordings(root, [path for path, _ in found])
    files = [LabelledFile(path=path, rel=path.relative_to(root).as_posix(), genre=genre, track=key)
             for (path, genre), key in zip(found, grouping.keys)]
    if files:
        log.info("recordings: %s", grouping.describe())
        if grouping.warning(root):
            log.warning("%s", grouping.warning(root))
    stray = [p.name for p in root.iterdir() if p.is_file() and is_audio(p)]
    if stray:
        log.warning("warning: %d audio file(s) directly in %s have no genre folder and are ignored",
                    len(stray), root)
    return files


def check_genres(files: list[LabelledFile], root) -> list[str]:
    """Sorted genre labels; DatasetError unless there are at least two."""
    genres = sorted({f.genre for f in files})
    if not genres:
        raise DatasetError(f"no audio files found in genre folders of {root} "
                           f"(expected {root}/<genre>/<track>.wav, .mp3, ...; unknown/ is ignored)")
    if len(genres) == 1:
        raise DatasetError(f"only one genre ('{genres[0]}') in {root}: a classifier needs at least two "
                           f"genre folders with audio")
    return genres


MIN_TEST_RECORDINGS = 2  # an accuracy measured on one recording of a genre is 0 % or 100 %, not a figure


def split_by_track(files: list[LabelledFile], val_fraction: float = 0.15, test_fraction: float = 0.15,
                   seed: int = 0) -> Split:
    """Stratified, seeded split by track (recording).

    Within each genre, tracks are shuffled with ``seed``; ``round(n * test_fraction)`` of them, and
    at least ``MIN_TEST_RECORDINGS``, go to test, ``round(n * val_fraction)`` (at least one) to
    validation; the rest train. Every file of a track follows its track. Raises DatasetError
    naming the genre, with the reason, when a genre has too few tracks for that.
    """
    tracks: dict[str, list[LabelledFile]] = defaultdict(list)
    for f in files:
        tracks[f.track].append(f)
    by_genre = tracks_by_genre(tracks)
    rng = np.random.default_rng(seed)
    split = Split()
    for genre in sorted(by_genre):
        keys = sorted(by_genre[genre])
        rng.shuffle(keys)
        n = len(keys)
        n_test = max(MIN_TEST_RECORDINGS, round(n * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        if n - n_test - n_val < 1:
            need = 1 + n_test + n_val
            raise DatasetError(
                f"genre '{genre}' has only {n} recording(s) (usable tracks); the split needs at least {need}: "
                f"{n_test} for the test (an accuracy on fewer than {MIN_TEST_RECORDINGS} recordings of a genre "
                f"is 0 % or 100 %, not a figure), {n_val} for validation and 1 for training. Add recordings "
                f"to '{genre}/' or move that folder out of the dataset"
                + ("; or score every recording once with --cv K" if n >= 3 else ""))
        parts = (("test", keys[:n_test]), ("val", keys[n_test:n_test + n_val]), ("train", keys[n_test + n_val:]))
        for part, chosen in parts:
            for key in chosen:
                getattr(split, part).extend(sorted(tracks[key], key=lambda f: f.rel))
    return split


def tracks_by_genre(tracks: dict[str, list[LabelledFile]]) -> dict[str, list[str]]:
    """``{genre: [track keys]}``; a track whose files sit in several genre folders counts for the
    genre of most of them."""
    by_genre: dict[str, list[str]] = defaultdict(list)
    for key, members in tracks.items():
        by_genre[Counter(m.genre for m in members).most_common(1)[0][0]].append(key)
    return by_genre


def genre_counts(files: list[LabelledFile], windows: dict | None = None) -> dict[str, dict]:
    """``{genre: {"recordings", "files", "windows"?}}``: how many source recordings stand behind
    each genre's files (``windows``: ``{path: number of 3 s windows}`` when known)."""
    counts: dict[str, dict] = {}
    for f in files:
        c = counts.setdefault(f.genre, {"recordings": set(), "files": 0, "windows": 0})
        c["recordings"].add(f.track)
        c["files"] += 1
        if windows is not None:
            c["windows"] += windows.get(f.path, 0)
    out = {}
    for genre, c in sorted(counts.items()):
        out[genre] = {"recordings": len(c["recordings"]), "files": c["files"]}
        if windows is not None:
            out[genre]["windows"] = c["windows"]
    return out
