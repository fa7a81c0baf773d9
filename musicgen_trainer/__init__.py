"""MusicGen fine-tuning: model loading, training, generation.

Heavy modules (torch, audiocraft) load on first use, so `import musicgen_trainer`
and `musicgen_trainer.constants` stay cheap for the dataset tools.
"""
import os
from importlib import import_module

# TensorFlow is imported indirectly (tensorboard); keep its C++ INFO logs out of our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_LAZY = {
    "load_model": "musicgen_trainer.loading",
    "export_model": "musicgen_trainer.loading",
    "model_summary": "musicgen_trainer.loading",
    "ModelUnavailableError": "musicgen_trainer.loading",
    "build_tiny_musicgen": "musicgen_trainer.tiny",
    "generate": "musicgen_trainer.generation",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'musicgen_trainer' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
