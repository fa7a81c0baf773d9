#!/usr/bin/env python
"""Fine-tune MusicGen on your own music (see `python train.py --help`)."""
import sys

from musicgen_trainer.cli_train import main

if __name__ == "__main__":
    sys.exit(main())
