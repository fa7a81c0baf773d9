"""Load a demucs source-separation model: a pretrained name or a local model file.

``load_separator(model, device)`` returns a ``Separator`` (cached per process, so a
worker that separates many files loads the model once). ``model`` is either

* a pretrained name (``htdemucs``, ``htdemucs_ft``, ``htdemucs_6s``, ``mdx_extra``...):
  loaded through demucs' own mechanism (``demucs.pretrained.get_model``), which downloads
  the checkpoint(s) once into torch hub's cache (``torch.hub.get_dir()/checkpoints``) and
  reuses them afterwards. When a checkpoint is missing and the network is unavailable (or
  ``HF_HUB_OFFLINE=1`` / ``DEMUCS_OFFLINE=1`` is set) the error is one line naming the
  missing files, the cache folder and the ``--model /path/to/model.th`` alternative.
* a path to a demucs model file: the package demucs writes (``{klass, args, kwargs,
  state}``, e.g. a ``.th`` file from ``torch.hub``'s cache or from demucs training),
  read with ``torch.load(weights_only=True)`` allowing only demucs' model classes,
  unless ``trust_model_file`` (any pickle: only for files you trust).

``random_htdemucs`` and ``save_model_file`` build and save a randomly initialised model
of the real HTDemucs architecture: the offline tests and the benchmark use them.
"""
from __future__ import annotations

import functools
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path
from .errors import SeparatorLoadError
from .options import SEPARATION_DOWNLOAD_TIMEOUT_S, SEPARATION_MODEL

if TYPE_CHECKING:
    import torch

OFFLINE_ENV = ("DEMUCS_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


@dataclass
class Separator:
    """A demucs model (or bag of models) ready to separate fixed-length windows.

    Attributes:
        name: what was asked for (pretrained name or model file path).
        models: the demucs models (one, or several for a bag such as ``htdemucs_ft``).
        weights: per model, one weight per source (a bag averages its models' estimates).
        sources: stem names in model output order, e.g. ``[drums, bass, other, vocals]``.
        samplerate: the rate the models work at (44100 for every released demucs).
        audio_channels: channels the models take and return (2 for every released demucs).
        max_segment: longest window in seconds every model accepts (HTDemucs' training
            segment, 7.8 s for htdemucs); also the default window length.
        device: where the models run.
    """
    name: str
    models: list
    weights: list
    sources: list
    samplerate: int
    audio_channels: int
    max_segment: float
    device: torch.device
    max_window: int = field(init=False)  # longest window in samples

    def __post_init__(self):
        import torch
        self.max_window = int(self.max_segment * self.samplerate)
        for model in self.models:
            if _is_htdemucs(model):  # int(Fraction * rate), exactly as HTDemucs computes it
                self.max_window = min(self.max_window, int(model.segment * model.samplerate))
        self._weights = torch.tensor(self.weights, dtype=torch.float32, device=self.device)  # [models, S]
        self._plain = len(self.models) == 1 and bool((self._weights == 1).all())

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate windows: ``mix`` ``[batch, audio_channels, length]`` (normalised as demucs
        does: zero mean, unit std) -> ``[batch, sources, audio_channels, length]``, on CPU.
        ``length`` must be at most ``max_window``."""
        import torch
        length = mix.shape[-1]
        if length > self.max_window:
            raise ValueError(f"window of {length} samples is longer than the model accepts "
                             f"({self.max_window}); use a shorter --segment")
        with torch.inference_mode():
            x = mix.to(self.device, torch.float32)
            total = None
            for k, model in enumerate(self.models):
                out = _center_trim(model(x), length)  # Demucs/HDemucs pad internally
                if not self._plain:
                    out = out * self._weights[k][None, :, None, None]
                total = out if total is None else total + out
            if not self._plain:  # weighted mean per source, as demucs.apply does for bags
                total = total / self._weights.sum(0)[None, :, None, None]
            return total.float().cpu()


def _center_trim(x: torch.Tensor, length: int) -> torch.Tensor:
    extra = x.shape[-1] - length
    if extra < 0:
        raise RuntimeError(f"model returned {x.shape[-1]} samples for a {length}-sample window")
    return x[..., extra // 2: extra // 2 + length] if extra else x


def _is_htdemucs(model) -> bool:
    from demucs.htdemucs import HTDemucs
    return isinstance(model, HTDemucs)


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None: the GPU when torch sees one, else the CPU. Otherwise checked."""
    import torch
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SeparatorLoadError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SeparatorLoadError("--device cuda: torch sees no GPU here; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SeparatorLoadError(f"--device {device}: there are only {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SeparatorLoadError("--device mps: Apple's GPU backend is not available here")
    return dev


def load_separator(model: str | os.PathLike = SEPARATION_MODEL, device: str | torch.device | None = None,
                   trust_model_file: bool = False) -> Separator:
    """The model ``model`` (pretrained name or model file path, see module doc) on ``device``
    (None/"auto": GPU if available). Cached: the same arguments return the same object.

    Raises:
        SeparatorLoadError: unknown name, missing download while offline, unreadable file.
    """
    text = str(model)
    path = Path(text).expanduser().resolve()
    if not path.is_file() and _looks_like_path(text):  # checked before importing torch
        raise SeparatorLoadError(f"model file not found: {text}" if not path.exists()
                                 else f"model path is not a file: {text}")
    import torch
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if not path.is_file():
        if pretrained_files(text) is None:
            raise SeparatorLoadError(f"unknown model {text!r}: use a pretrained demucs name "
                                     f"({', '.join(pretrained_names())}) or a path to a model file (.th)")
        return _load_cached(text, str(dev), False, None)
    stat = path.stat()
    return _load_cached(str(path), str(dev), trust_model_file, (stat.st_mtime_ns, stat.st_size))


def check_model(model: str | os.PathLike = SEPARATION_MODEL, trust_model_file: bool = False) -> None:
    """Make sure ``model`` can be loaded, cheaply, before starting worker processes: a
    pretrained name whose checkpoints are already cached is not loaded here; a missing one
    is downloaded now (once, for every worker); a model file is read once to validate it.

    Raises:
        SeparatorLoadError: as ``load_separator``.
    """
    text = str(model)
    files = pretrained_files(text)
    if files is not None and not Path(text).is_file():
        if all((hub_checkpoint_dir() / f).is_file() for f in files):
            return
    load_separator(model, "cpu", trust_model_file)


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~")) or text.endswith((".th", ".pt", ".pth"))


@functools.lru_cache(maxsize=4)
def _load_cached(model: str, device: str, trust: bool, file_version) -> Separator:
    # file_version: (mtime, size) of a model file, so that a rewritten file is reloaded;
    # None for pretrained names.
    import torch
    net = _load_pretrained(model) if file_version is None else _load_file(Path(model), trust)
    return separator_from_model(net, device=torch.device(device), name=model)


def separator_from_model(net, device: str | torch.device | None = None, name: str = "model") -> Separator:
    """Wrap a demucs model or ``BagOfModels`` (already built) as a ``Separator``."""
    import torch
    from demucs.apply import BagOfModels
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    models = list(net.models) if isinstance(net, BagOfModels) else [net]
    weights = [list(map(float, w)) for w in net.weights] if isinstance(net, BagOfModels) \
        else [[1.0] * len(net.sources)]
    for m in models:
        m.to(dev).eval()
    segment = min(float(getattr(m, "segment", 10.0)) for m in models)
    return Separator(name=name, models=models, weights=weights, sources=list(net.sources),
                     samplerate=int(net.samplerate), audio_channels=int(net.audio_channels),
                     max_segment=segment, device=dev)


# --- local model files ------------------------------------------------------------------

def _safe_classes() -> list:
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs
    return [Demucs, HDemucs, HTDemucs, Fraction]


def _load_file(path: Path, trust: bool):
    import torch
    import pickle
    from demucs.states import load_model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust:
                # Only with `separate --trust-model-file`, typed by the user for a whole pickled
                # demucs model of their own; off by default, nothing turns it on (docs/safety.md).
                package = torch.load(path, map_location="cpu", weights_only=False)
            else:
                with torch.serialization.safe_globals(_safe_classes()):
                    package = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = foreign_object(str(exc))
        if name is not None:  # a real pickle with other objects
            raise SeparatorLoadError(f"model file {path} contains Python objects other than demucs "
                                     f"models ({name}); if you trust the file, add --trust-model-file") from None
        raise SeparatorLoadError(f"cannot read model file {path}: not a PyTorch file, or damaged") from None
    except Exception as exc:  # a damaged file can fail anywhere in the unpickler (IndexError, KeyError...)
        first = (str(exc).splitlines() or [""])[0][:160]
        raise SeparatorLoadError(f"cannot read model file {path}: not a PyTorch file, or damaged "
                                 f"({type(exc).__name__}: {first})") from None
    if isinstance(package, torch.nn.Module) and hasattr(package, "sources"):
        return package.eval()  # a whole pickled model (only possible with --trust-model-file)
    if not (isinstance(package, dict) and {"klass", "args", "kwargs", "state"} <= set(package)):
        keys = ", ".join(list(map(str, package))[:4]) if isinstance(package, dict) else type(package).__name__
        raise SeparatorLoadError(f"model file {path} is not a demucs model package (it holds {keys}; "
                                 "expected klass, args, kwargs and state, as demucs saves them)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model(package).eval()
    except SystemExit:  # demucs calls dora's fatal() (sys.exit) when diffq is missing
        raise SeparatorLoadError(f"model file {path} is quantized: install diffq "
                                 "(pip install diffq) to load it") from None
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise SeparatorLoadError(f"model file {path} does not match its architecture "
                                 f"({type(exc).__name__}: {first})") from None


# torch's weights-only unpickler words its refusals differently by case and version:
# "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default",
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked" (torch 2.10).
_REFUSED_GLOBAL = re.compile(r"unsupported\s+(?:global:\s+)?GLOBAL\s+([\w.]+)", re.IGNORECASE)
_REFUSED_OBJECT = re.compile(r"allowlisted via `add_safe_globals`|unrecognized function|is blocked", re.IGNORECASE)


def foreign_object(message: str) -> str | None:
    """What made ``torch.load(weights_only=True)`` refuse a file, from its error message:
    the refused global's name (or a generic phrase), or None when the file was refused for
    being damaged rather than for holding other Python objects."""
    match = _REFUSED_GLOBAL.search(message)
    if match:
        return match.group(1).rstrip(".")
    return "objects weights-only loading refuses" if _REFUSED_OBJECT.search(message) else None


# --- pretrained models --------------------------------------------------------------------

def hub_checkpoint_dir() -> Path:
    """Where torch hub (and so demucs) caches downloaded checkpoints."""
    import torch
    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_names() -> list[str]:
    """Names ``demucs.pretrained.get_model`` knows: bags (``htdemucs``...) then signatures."""
    from demucs.pretrained import REMOTE_ROOT
    return sorted(p.stem for p in Path(REMOTE_ROOT).glob("*.yaml"))


def pretrained_files(name: str) -> list[str] | None:
    """Checkpoint file names ``name`` needs in ``hub_checkpoint_dir()``; None if unknown."""
    import yaml
    from demucs.pretrained import REMOTE_ROOT, _parse_remote_files
    urls = _parse_remote_files(Path(REMOTE_ROOT) / "files.txt")  # signature -> URL
    bag = Path(REMOTE_ROOT) / f"{name}.yaml"
    if bag.is_file():
        signatures = yaml.safe_load(bag.read_text()).get("models", [])
    elif name in urls:
        signatures = [name]
    else:
        return None
    return [urls[s].rsplit("/", 1)[-1] for s in signatures if s in urls]


def is_offline() -> bool:
    """True when the environment asks for no downloads (``DEMUCS_OFFLINE``/``HF_HUB_OFFLINE``)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in OFFLINE_ENV)


def check_pretrained_cache(name: str = SEPARATION_MODEL) -> None:
    """For code that lets demucs load ``name`` itself (audiocraft's melody conditioner calls
    ``demucs.pretrained.get_model('htdemucs')``): a cached checkpoint is read weights-only first
    (demucs unpickles it whole), and with downloads off a missing one is one ``SeparatorLoadError``
    line instead of a network error. Online, a missing file is left for demucs to download (it
    checks the download's hash)."""
    files = pretrained_files(name) or []
    cache = hub_checkpoint_dir()
    missing = [f for f in files if not (cache / f).is_file()]
    if missing and is_offline():
        raise SeparatorLoadError(f"demucs model {name!r} is not downloaded and downloads are off "
                                 f"({'/'.join(OFFLINE_ENV)} is set): connect to the internet once (it is then "
                                 f"cached in {cache}, or set TORCH_HOME), or copy {', '.join(missing)} there")
    for present in (f for f in files if f not in missing):
        _load_file(cache / present, trust=False)


def _load_pretrained(name: str):
    files = pretrained_files(name)
    if files is None:
        raise SeparatorLoadError(f"unknown model {name!r}: use a pretrained demucs name "
                                 f"({', '.join(pretrained_names())}) or a path to a model file (.th)")
    cache = hub_checkpoint_dir()
    missing = [f for f in files if not (cache / f).is_file()]
    how = (f"connect to the internet once (it is then cached in {cache}), or copy "
           f"{', '.join(missing)} there, or pass --model /path/to/model.th")
    if missing and is_offline():
        raise SeparatorLoadError(f"pretrained model {name!r} is not downloaded and downloads are off "
                                 f"({'/'.join(OFFLINE_ENV)} is set): {how}")
    # demucs reads its cache with torch.hub (a full pickle) and checks a file's hash only when
    # it downloads it: a file copied into the cache by hand is checked here, weights-only with
    # demucs' model classes allowed, before demucs opens it.
    for present in (f for f in files if f not in missing):
        _load_file(cache / present, trust=False)
    from demucs.pretrained import get_model
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(SEPARATION_DOWNLOAD_TIMEOUT_S)  # fail fast on a dead network
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_model(name)
    except SystemExit:
        raise SeparatorLoadError(f"pretrained model {name!r} is quantized: install diffq "
                                 "(pip install diffq) or choose another model") from None
    except ImportError as exc:
        raise SeparatorLoadError(f"pretrained model {name!r} needs a missing package ({exc})") from None
    except (OSError, ConnectionError, TimeoutError) as exc:  # URLError and HTTPError are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise SeparatorLoadError(f"pretrained model {name!r} is not downloaded and cannot be downloaded "
                                 f"now ({str(reason).splitlines()[0][:120]}): {how}") from None
    except Exception as exc:  # e.g. a corrupt cached file (demucs' ModelLoadingError, pickle errors)
        first = (str(exc).splitlines() or [""])[0][:160]
        raise SeparatorLoadError(f"pretrained model {name!r} could not be loaded ({type(exc).__name__}: "
                                 f"{first}); delete its file(s) {', '.join(files)} from {cache} "
                                 "to download again") from None
    finally:
        socket.setdefaulttimeout(old_timeout)


# --- random models for tests and benchmarks ------------------------------------------------

TINY_HTDEMUCS = dict(channels=4, depth=2, nfft=256, t_layers=1, t_heads=1, dconv_mode=0)


def random_htdemucs(size: str = "tiny", seed: int = 0, samplerate: int = 44100,
                    segment: float | Fraction = 1, sources=("drums", "bass", "other", "vocals")):
    """A randomly initialised ``demucs.htdemucs.HTDemucs`` (the architecture of ``htdemucs``).

    ``size="tiny"``: about 6 k parameters, for tests; ``"full"``: the constructor's default
    sizes (about 27 M parameters) with ``segment`` (7.8 is htdemucs' window). Its output is
    noise-like, not music: use it for shapes, memory and speed.
    """
    import torch
    from demucs.htdemucs import HTDemucs
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-element conv init warnings of tiny sizes
        kwargs = TINY_HTDEMUCS if size == "tiny" else {}
        return HTDemucs(sources=list(sources), samplerate=samplerate, segment=segment, **kwargs).eval()


def save_model_file(model, path) -> Path:
    """Save ``model`` (built by a demucs class) as the package ``demucs.states.load_model``
    reads (``klass``, ``args``, ``kwargs``, ``state``): a file ``--model PATH`` accepts.
    Written atomically (temporary file, then rename; folders are created)."""
    import torch
    path = Path(path)
    args, kwargs = model._init_args_kwargs  # recorded by demucs' @capture_init
    package = {"klass": type(model), "args": args, "kwargs": kwargs,
               "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(package, tmp)
    return path
