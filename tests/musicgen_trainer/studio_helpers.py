"""Helpers for the studio tab tests (a unique module name: tests/ has no packages)."""
import os
import time
from pathlib import Path

import soundfile as sf

RATE = 22_050


def make_library(folder: Path, tracks_per_genre: int = 3, unknown: int = 2, seconds: float = 4.0) -> Path:
    """A small music library: ``drone/`` and ``beats/`` (clearly different toy sounds), ``unknown/``
    with one of each, and a file that is not audio inside (skipped by prepare, with its reason)."""
    from genre_classifier.toy import toy_track
    for genre in ("drone", "beats"):
        for i in range(tracks_per_genre):
            path = folder / genre / f"{genre} {i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, toy_track(genre, seconds, i, RATE), RATE)
    for i in range(unknown):
        genre = ("drone", "beats")[i % 2]
        path = folder / "unknown" / f"mystery {i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, toy_track(genre, seconds, 20 + i, RATE), RATE)
    (folder / "beats" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    return folder


def prepared(root: Path, library: str = "lib", output: str = "lib-prepared") -> Path:
    """``root/library`` made and prepared in this process (fast: no analysis, one worker)."""
    from dataset_tools.options import PrepareOptions
    from dataset_tools.prepare import prepare
    make_library(root / library)
    prepare(root / library, root / output, PrepareOptions(analyze=False, workers=1, progress=False))
    return root / output


def wait_for(predicate, timeout: float = 120.0, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(poll)


def link_out(root: Path, name: str, target: Path) -> Path:
    """A symlink ``root/name`` pointing outside the root, at ``target``."""
    os.symlink(target, root / name)
    return root / name
