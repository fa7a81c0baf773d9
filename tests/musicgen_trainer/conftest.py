import pytest


@pytest.fixture(scope="session", autouse=True)
def _audiocraft_imported_before_capsys():
    """Import audiocraft before any test here swaps sys.stderr with capsys, whatever ran first.

    Importing it sets up logging handlers (transformers, huggingface_hub, torchmetrics...) that
    keep the sys.stderr of that moment; under capsys that stream is closed after the test and,
    once TensorFlow is loaded (the genre_classifier tests), the run dies at exit with "lost
    sys.stderr". Which test imports audiocraft first depends on the selection (-k, ::, --lf)."""
    from musicgen_trainer.runtime import import_audiocraft
    import_audiocraft()


@pytest.fixture(scope="session")
def tiny_model():
    """The default tiny MusicGen (seed 0), shared read-only by the tests of a session."""
    from musicgen_trainer.models import load_model
    return load_model("tiny", device="cpu")
