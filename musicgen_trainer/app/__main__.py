"""``python -m musicgen_trainer.app``: serve the page (see ``--help``)."""
import sys

from .page import main

sys.exit(main())
