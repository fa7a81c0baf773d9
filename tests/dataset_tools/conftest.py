"""Fixtures for the dataset_tools tests (helpers in dt_helpers.py).

``library`` builds one SRC with every supported format and every kind of bad input;
``prepared`` runs ``prepare`` over it once (2 worker processes) for many tests to inspect.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dt_helpers import MIN_SECONDS, SEGMENT_SECONDS, Library, build_library, snapshot, tone, write_audio, write_midi


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> Library:
    return build_library(tmp_path_factory.mktemp("everything"))


@dataclass
class Prepared:
    lib: Library
    out: Path
    report: object
    before: dict
    after: dict


@pytest.fixture(scope="session")
def prepared(library, tmp_path_factory) -> Prepared:
    """``prepare`` over the everything-library with 2 worker processes."""
    from dataset_tools.options import PrepareOptions
    from dataset_tools.prepare import prepare
    out = tmp_path_factory.mktemp("everything_out") / "dataset"
    before = snapshot(library.src)
    report = prepare(library.src, out, PrepareOptions(
        segment_seconds=SEGMENT_SECONDS, min_seconds=MIN_SECONDS, workers=2, progress=False,
        valid_fraction=0.3))
    return Prepared(library, out, report, before, snapshot(library.src))


@pytest.fixture
def small_library(tmp_path) -> Path:
    """8 plain tracks in 2 genres + 1 MIDI: for re-run and interruption tests."""
    src = tmp_path / "small"
    for i in range(4):
        write_audio(src / "rock" / f"Rock {i}.wav", tone(2.0 + 0.5 * i, freq=441.0 + 63 * i))
        write_audio(src / "jazz" / f"Jazz {i}.flac", tone(1.5 + 0.5 * i, freq=630.0 + 21 * i))
    write_midi(src / "jazz" / "Tune.mid")
    return src



@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions gain nothing from threads and lose a lot on shared cores."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
