"""Preloaded by the fork server that starts ``prepare``'s analysis workers (``parallel.py``).

Importing this module does, once, the slow start-up every worker would otherwise repeat:
importing numpy/soundfile/soxr/librosa (librosa pulls in scipy.signal: seconds) and one
small tempo/key analysis, which loads librosa's lazily imported submodules and numba's
compiled functions. Workers forked afterwards inherit all of it. Not for import
anywhere else: it makes the importing process ignore Ctrl-C.
"""
import signal

from .parallel import single_thread_numerics

# The fork server ignores Ctrl-C (the parent handles it), but only once preloading is over;
# without this, a Ctrl-C during the warm-up below prints the server's traceback.
signal.signal(signal.SIGINT, signal.SIG_IGN)
single_thread_numerics()  # before numpy & co. start their thread pools

import numpy as np  # noqa: E402

from . import convert  # noqa: E402,F401  (the workers' own code)
from .analysis import analyse  # noqa: E402

# 6 s of a tone burst every half second: clear enough to run every analysis step.
_rate = 22050
_t = np.arange(_rate * 6) / _rate
try:
    analyse((np.sin(2 * np.pi * 440 * _t) * ((_t % 0.5) < 0.05)).astype(np.float32), _rate)
except Exception:  # a warm-up failure must not take the fork server (and every worker) down
    pass
