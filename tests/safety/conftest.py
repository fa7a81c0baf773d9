"""Fixtures shared by the safety tests (tests/safety/ holds the whole safety contract)."""
import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A training folder: jazz/ and rock/, two 1 s tones each with a .txt caption."""
    root = tmp_path_factory.mktemp("data")
    t = np.arange(44100) / 44100
    for genre, freq in (("jazz", 220.0), ("rock", 330.0)):
        (root / genre).mkdir()
        for i in range(2):
            tone = (0.3 * np.sin(2 * np.pi * freq * (i + 1) * t)).astype("float32")
            sf.write(root / genre / f"{genre}_{i}.wav", tone, 44100)
            (root / genre / f"{genre}_{i}.txt").write_text(f"{genre}, take {i}")
    return root


@pytest.fixture(scope="session")
def tiny_model():
    """The default tiny MusicGen (seed 0), shared read-only."""
    from musicgen_trainer.models import load_model
    return load_model("tiny", device="cpu")
