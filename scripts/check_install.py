"""Smoke-check the installed stack: every heavy import this project needs must load.

Run by `make setup` right after installing; prints versions, exits 1 naming what failed.
"""
import importlib
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore")

MODULES = ["torch", "torchaudio", "xformers.ops", "transformers", "audiocraft.models",
           "accelerate", "librosa", "soundfile", "pydub", "music21", "gradio", "keras",
           "demucs.htdemucs", "demucs.pretrained", "demucs.audio", "basic_pitch", "bitsandbytes"]


def main() -> int:
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
            version = getattr(sys.modules[name.split(".")[0]], "__version__", "")
            print(f"  ok  {name} {version}")
        except Exception as exc:  # report every broken import, not just the first
            failed.append(name)
            print(f"  FAIL {name}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    import torch
    print(f"  torch device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if torch.cuda.is_available() else 'cpu'}")
    if failed:
        print(f"error: these imports failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
