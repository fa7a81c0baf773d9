"""Loading native libraries (TensorFlow) without their C++ start-up notices on the terminal.

TensorFlow's absl and oneDNN notices ignore ``TF_CPP_MIN_LOG_LEVEL`` and are written straight to
file descriptor 2, so Python's ``sys.stderr`` cannot catch them: ``native_stderr_muted`` points fd 2
at /dev/null while the import runs (Python exceptions still propagate), unless the user asked for
TensorFlow's logs with ``TF_CPP_MIN_LOG_LEVEL`` 0 or 1. Used by the genre classifier (Keras) and by
``fetch-tagger musicnn`` (its checkpoint reader).
"""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_muted():
    """File descriptor 2 to /dev/null for the block (restored after, also on errors), unless
    ``TF_CPP_MIN_LOG_LEVEL`` is 0 or 1 (set to 2 when unset)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = None
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1"):
        try:
            sys.stderr.flush()
            saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
