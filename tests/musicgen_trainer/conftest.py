import pytest


@pytest.fixture(scope="session")
def tiny_model():
    """The default tiny MusicGen (seed 0), shared read-only by the tests of a session."""
    from musicgen_trainer.loading import load_model
    return load_model("tiny", device="cpu")
