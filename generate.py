#!/usr/bin/env python
"""Generate music from text with MusicGen (see `python generate.py --help`)."""
import sys

from musicgen_trainer.cli_generate import main

if __name__ == "__main__":
    sys.exit(main())
