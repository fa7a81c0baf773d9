"""The audiocraft runtime: import it quietly, pick a device, move a MusicGen between devices.

The lowest layer of musicgen_trainer (no other module of the package is imported here).
"""
from __future__ import annotations

import contextlib
import os
import sys
import typing as tp
import warnings

# The released MusicGen models' codec and window (EnCodec 32 kHz, as in the checkpoints).
MUSICGEN_SAMPLE_RATE = 32_000     # Hz: audio is resampled to this before encoding
MUSICGEN_FRAME_RATE = 50          # EnCodec frames (LM steps) per second
MUSICGEN_CODEBOOKS = 4            # residual codebooks per frame (mono models)
MUSICGEN_CARD = 2048              # codes per codebook; `card` is also the special (masked) token
MUSICGEN_MAX_SECONDS = 30.0       # context window of the released models

# The released checkpoints on the Hugging Face hub, and the short forms the command lines accept.
PRETRAINED_NAMES = (
    "facebook/musicgen-small", "facebook/musicgen-medium", "facebook/musicgen-large",
    "facebook/musicgen-melody", "facebook/musicgen-melody-large",
    "facebook/musicgen-stereo-small", "facebook/musicgen-stereo-medium",
    "facebook/musicgen-stereo-large", "facebook/musicgen-stereo-melody",
    "facebook/musicgen-stereo-melody-large",
)
SHORT_NAMES = {name.split("/musicgen-")[1]: name for name in PRETRAINED_NAMES}


def resolve_name(name) -> str:
    """Map short forms (``small``, ``stereo-medium``) to full hub names; other names unchanged.
    Whatever is recorded or sent to the hub is the full name: the hub has no repo ``small``. An
    existing folder called ``small`` stays a folder (``load_model`` looks for folders first)."""
    name = str(name).strip()
    if name in SHORT_NAMES and os.path.exists(os.path.expanduser(name)):
        return name
    return SHORT_NAMES.get(name, name)


@contextlib.contextmanager
def native_stderr_silenced():
    """Silence C-level stderr (TensorFlow's absl banner, printed when tensorboard imports it
    on audiocraft's import path). Python exceptions still propagate."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real file (e.g. captured by pytest)
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def import_audiocraft():
    """Import audiocraft's models once, without the native log noise of its dependencies."""
    if "audiocraft.models" in sys.modules:
        return sys.modules["audiocraft.models"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated", category=FutureWarning)
    with native_stderr_silenced():
        import audiocraft.models
    return audiocraft.models


def default_device(device: tp.Optional[str] = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return str(device)
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def to_device(model, device: str):
    """Move a MusicGen (LM, compression model, and the frozen T5 and demucs that audiocraft keeps
    outside the module tree)."""
    import torch
    device = torch.device(device)
    model.lm.to(device)
    model.compression_model.to(device)
    for conditioner in model.lm.condition_provider.conditioners.values():
        for frozen in ("t5", "demucs"):  # demucs: the melody models' stem separator
            module = conditioner.__dict__.get(frozen)
            if module is not None:
                conditioner.__dict__[frozen] = module.to(device)
        if hasattr(conditioner, "device"):
            conditioner.device = str(device)
    model.lm.condition_provider.device = str(device)
    model.device = device
    return model
