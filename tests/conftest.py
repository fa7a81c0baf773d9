"""Shared test setup: offline, quiet, deterministic, and independent of the machine's
caches, proxies and logging settings (this runs before any test module imports a library)."""
import os
import shutil
import tempfile

# Tests never touch the network (see README): make the hub libraries fail fast.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no version check / analytics calls from the app tests
# Set, not defaulted: a user's TF_CPP_MIN_LOG_LEVEL=0 would put TensorFlow's log lines into
# the stderr that the one-line-error tests read.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One math thread per process (set before torch/numpy load; a value the caller sets wins). The
# tiny models gain nothing from threads, and with two threads a test that shares the machine
# with another busy process waits at every parallel op for the thread that lost its core: the
# memorisation test (9 s alone) ran over 5 minutes under `nice` next to CPU hogs. Measured on a
# fresh clone: the whole suite takes 232 s this way vs 249 s with the default threads.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Every cache in a fresh folder, never the user's: with facebook/musicgen-small in
# ~/.cache/huggingface (likely on a machine that fine-tunes MusicGen) the "not in the local
# cache" tests would load the real model; a shared /tmp/gradio owned by another user is
# not writable. The libraries read these variables when first imported, i.e. after this.
_CACHES = tempfile.mkdtemp(prefix="musicgen-tests-")
os.environ["HF_HOME"] = os.path.join(_CACHES, "huggingface")
os.environ["HF_HUB_CACHE"] = os.path.join(_CACHES, "huggingface", "hub")
for _var in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "AUDIOCRAFT_CACHE_DIR"):
    os.environ.pop(_var, None)
os.environ["TORCH_HOME"] = os.path.join(_CACHES, "torch")
os.environ["MUSICGEN_CODE_CACHE"] = os.path.join(_CACHES, "codes")
os.environ["GENRE_CLASSIFIER_CACHE"] = os.path.join(_CACHES, "genre_features")
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_CACHES, "gradio")

# The app tests talk to a server on 127.0.0.1: a proxy set in the environment
# (http_proxy/HTTP_PROXY) must not get those requests (gradio then refuses to start).
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h.strip() for h in os.environ.get(_var, "").split(",") if h.strip()]
    os.environ[_var] = ",".join(_hosts + [h for h in ("127.0.0.1", "localhost") if h not in _hosts])


def pytest_unconfigure(config):
    shutil.rmtree(_CACHES, ignore_errors=True)
