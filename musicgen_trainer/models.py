"""Load any MusicGen this project works with, through one function: ``load_model``.

Accepted names:
- ``tiny`` (or ``tiny:SEED``): a random tiny MusicGen built offline (see ``tiny.py``);
- ``tiny-stereo`` (or ``tiny-stereo:SEED``): its stereo variant (2 channels, 8 interleaved
  codebooks, built the way audiocraft builds ``facebook/musicgen-stereo-*``);
- ``tiny-melody`` (or ``tiny-melody:SEED``): the same with musicgen-melody's chroma conditioning
  (a small random stem separator instead of htdemucs), built offline;
- ``random:small`` / ``random:medium`` / ``random:large``: random weights with the released
  models' sizes, built offline (benchmarks, memory checks);
- a folder in audiocraft's export layout (``state_dict.bin`` + ``compression_state_dict.bin``),
  which is also what our trainer exports;
- a folder in Hugging Face transformers' MusicGen format (``config.json`` with model_type
  ``musicgen`` / ``musicgen_melody`` + safetensors weights), converted on load (``sharing/``);
- an audiocraft hub name (``facebook/musicgen-small``, ``-medium``, ``-large``, ``-melody``,
  the stereo variants, or the short forms ``small``/``medium``/...), loaded with audiocraft's
  own loader. Offline and not cached, this fails at once with ``ModelUnavailableError``.
"""
from __future__ import annotations

import os
import socket
import typing as tp
from pathlib import Path
from urllib.parse import urlparse

from .checkpoint_io import CheckpointError, check_checkpoint, load_checkpoint
from .exports import COMPRESSION_FILE, LM_FILE, config_for_omegaconf, is_export, package_config
# PRETRAINED_NAMES and resolve_name are re-exported: callers know them from here.
from .runtime import PRETRAINED_NAMES, SHORT_NAMES, default_device, import_audiocraft, resolve_name  # noqa: F401
from .tiny import TINY_STEREO_NAME, is_tiny_config, load_tiny_export


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (not cached offline, missing files, bad name)."""


_BUILT_IN = ("tiny", "tiny-melody", TINY_STEREO_NAME)  # load_model builds these (and NAME:SEED, random:SIZE)


def is_builtin_name(name: tp.Union[str, os.PathLike]) -> bool:
    """True for the names ``load_model`` builds itself, never reading a folder or the hub: exactly
    those its first branches take (``tiny-run/export`` is not one: it is a folder)."""
    text = str(name)
    return text in _BUILT_IN or text.startswith(tuple(n + ":" for n in _BUILT_IN) + ("random:",))


def is_hub_name(name: str) -> bool:
    """True for a released alias (``small``, ``facebook/musicgen-small``) or a hub id's
    ``org/name`` form (one slash, neither part empty, not a path's start)."""
    text = str(name).strip()
    if text in SHORT_NAMES or text in PRETRAINED_NAMES:
        return True
    org, slash, repo = text.partition("/")
    return bool(slash and org and repo and "/" not in repo and not text.startswith((".", "~")))


def load_model(name: tp.Union[str, os.PathLike], device: tp.Optional[str] = None):
    """Load a MusicGen model (``audiocraft.models.MusicGen``) in eval mode.

    Args:
        name: ``tiny`` / ``tiny:SEED``, ``tiny-melody`` / ``tiny-melody:SEED``, an export folder, or a
            hub name (see module doc).
        device: ``cuda``, ``cpu``...; defaults to CUDA when available.
    Raises:
        ModelUnavailableError: with a one-line, user-facing explanation.
    """
    text = str(name)
    if text == TINY_STEREO_NAME or text.startswith(TINY_STEREO_NAME + ":"):
        return _load_tiny_stereo(text, default_device(device))
    if text == "tiny-melody" or text.startswith("tiny-melody:"):
        import_audiocraft()
        from .tiny import TinyConfig, build_tiny_melody_musicgen
        seed = text.partition(":")[2]
        if seed and not seed.isdigit():
            raise ModelUnavailableError(f"bad tiny model name {text!r}: use 'tiny-melody' or 'tiny-melody:SEED'")
        return build_tiny_melody_musicgen(TinyConfig(seed=int(seed or 0)), device=default_device(device), name=text)
    if text == "tiny" or text.startswith("tiny:"):
        import_audiocraft()
        from .tiny import TinyConfig, build_tiny_musicgen
        seed = text.partition(":")[2]
        if seed and not seed.isdigit():
            raise ModelUnavailableError(f"bad tiny model name {text!r}: use 'tiny' or 'tiny:SEED'")
        return build_tiny_musicgen(TinyConfig(seed=int(seed or 0)), device=default_device(device))
    if text.startswith("random:"):
        import_audiocraft()
        from .tiny import RANDOM_PRESETS, build_tiny_musicgen, random_preset
        size = text.partition(":")[2]
        if size not in RANDOM_PRESETS:
            raise ModelUnavailableError(f"bad model name {text!r}: use random:{' or random:'.join(RANDOM_PRESETS)}")
        return build_tiny_musicgen(random_preset(size), device=default_device(device), name=text)
    path = Path(text).expanduser()
    from .sharing.transformers_import import is_transformers_folder
    if path.is_dir() and not is_export(path) and is_transformers_folder(path):
        return _load_transformers(path, default_device(device))
    if path.is_dir():
        return _load_export(path, default_device(device))
    if path.exists() or text.startswith((".", "/", "~")) or os.sep + os.sep in text:
        raise ModelUnavailableError(f"{text} is not a model folder (expected a folder with "
                                    f"{LM_FILE} and {COMPRESSION_FILE})")
    return _load_pretrained(resolve_name(text), device)


def _load_tiny_stereo(text: str, device: str):
    import_audiocraft()
    from .tiny import TinyConfig, build_tiny_musicgen
    seed = text.partition(":")[2]
    if seed and not seed.isdigit():
        raise ModelUnavailableError(f"bad tiny model name {text!r}: use '{TINY_STEREO_NAME}' or "
                                    f"'{TINY_STEREO_NAME}:SEED'")
    return build_tiny_musicgen(TinyConfig(seed=int(seed or 0), stereo=True), device=device,
                               name=TINY_STEREO_NAME)


# --- export folders -------------------------------------------------------------

def _read_package(path: Path, what: str) -> dict:
    """An audiocraft package (``{'xp.cfg', 'best_state', ...}``), loaded weights-only."""
    try:
        pkg = load_checkpoint(path, what)
    except CheckpointError as exc:
        raise ModelUnavailableError(str(exc)) from None
    if not isinstance(pkg, dict) or "xp.cfg" not in pkg or "best_state" not in pkg:
        raise ModelUnavailableError(f"{path} has no 'xp.cfg'/'best_state': not an audiocraft export")
    return pkg


def _check_package(path: Path, what: str) -> None:
    """Refuse a file that does not load weights-only, before a library opens it itself."""
    try:
        check_checkpoint(path, what)
    except CheckpointError as exc:
        raise ModelUnavailableError(str(exc)) from None


def xp_config(pkg: dict) -> dict:
    """A package's ``xp.cfg`` as a plain dict, interpolations left unresolved (see ``exports.package_config``)."""
    return package_config(pkg)


def _load_export(folder: Path, device: str):
    import_audiocraft()
    missing = [f for f in (LM_FILE, COMPRESSION_FILE) if not (folder / f).is_file()]
    if missing:
        raise ModelUnavailableError(f"{folder} is not an audiocraft model folder: missing {', '.join(missing)}")
    lm_pkg = _read_package(folder / LM_FILE, "model file")
    _check_package(folder / COMPRESSION_FILE, "compression model file")
    if is_tiny_config(xp_config(lm_pkg)):
        try:
            return load_tiny_export(folder, lm_pkg, config_for_omegaconf(xp_config(lm_pkg)), device)
        except ValueError as exc:
            raise ModelUnavailableError(str(exc)) from None
    from audiocraft.models import MusicGen
    if "self_wav" in (xp_config(lm_pkg).get("conditioners") or {}):  # a melody model's fine-tune
        _check_melody_separator(str(folder))
    return _with_offline_errors(lambda: MusicGen.get_pretrained(str(folder), device=device), str(folder))


def _load_transformers(folder: Path, device: str):
    """A transformers-format MusicGen folder (``config.json`` + safetensors), converted on load."""
    import_audiocraft()
    from .sharing.transformers_import import load_transformers_folder
    try:
        return load_transformers_folder(folder, device)
    except ValueError as exc:  # NotExpressible included
        raise ModelUnavailableError(str(exc)) from None


# --- pretrained (hub) models ----------------------------------------------------------

def _hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub can be reached (honours HF_HUB_OFFLINE and HF_ENDPOINT)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(repo_id: str, filename: str) -> bool:
    # Same cache audiocraft's loader reads (AUDIOCRAFT_CACHE_DIR, else the HF default);
    # looked up without importing audiocraft so the offline error comes at once.
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(repo_id, filename, cache_dir=os.environ.get("AUDIOCRAFT_CACHE_DIR"))
    return isinstance(found, str)


def _unavailable_message(name: str) -> str:
    cache = os.environ.get("AUDIOCRAFT_CACHE_DIR") or os.environ.get("HF_HUB_CACHE") or \
        os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    return (f"{name}: weights are not in the local cache ({cache}) and the Hugging Face hub cannot be "
            f"reached. Run once with network access to cache them (they also need t5-base), copy that "
            f"cache to this machine (set HF_HOME), or pass --model /path/to/folder containing "
            f"{LM_FILE} and {COMPRESSION_FILE}.")


def _with_offline_errors(load: tp.Callable, name: str):
    """Run ``load`` turning hub/network failures into one ``ModelUnavailableError`` line."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    try:
        return load()
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError) as exc:
        raise ModelUnavailableError(_unavailable_message(name)) from exc
    except OSError as exc:  # transformers wraps missing-cache errors for t5 in OSError
        from urllib.error import URLError  # e.g. demucs downloading htdemucs for a melody model
        text = str(exc).lower()
        if isinstance(exc, URLError) or "connect" in text or "offline" in text or "cache" in text:
            raise ModelUnavailableError(_unavailable_message(name)) from exc
        raise


def unavailable_reason(name: str) -> tp.Optional[str]:
    """Without loading anything: the one-line reason why hub model ``name`` cannot load here (not
    cached and the hub unreachable), as ``load_model`` would raise it; None when it may load."""
    name = resolve_name(name)
    if "/" not in name or name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return None
    if _hub_reachable() or (_cached(name, LM_FILE) and _cached(name, COMPRESSION_FILE)):
        return None
    return _unavailable_message(name)


def _load_pretrained(name: str, device: str):
    if "/" not in name:
        known = ", ".join(["tiny", "tiny-melody", TINY_STEREO_NAME, "random:small", *SHORT_NAMES])
        raise ModelUnavailableError(f"unknown model {name!r}: use one of {known}, a hub name "
                                    f"like facebook/musicgen-small, or an export folder")
    online = _hub_reachable()
    if not online:
        if not (_cached(name, LM_FILE) and _cached(name, COMPRESSION_FILE)):
            raise ModelUnavailableError(_unavailable_message(name))
        # Everything must come from the cache: stop huggingface_hub/transformers from retrying
        # the network for every file (~20 s each) before they fall back to it.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import_audiocraft()
    from audiocraft.models import MusicGen
    device = default_device(device)
    _with_offline_errors(lambda: _check_hub_files(name), name)
    if "melody" in name:
        _check_melody_separator(name)
    return _with_offline_errors(lambda: MusicGen.get_pretrained(name, device=device), name)


def _check_melody_separator(name: str) -> None:
    """Melody models build htdemucs inside audiocraft's chroma conditioner, from torch hub's cache
    (not the Hugging Face one): check it the way the separation tools do (weights-only, and one
    line when it is missing offline) before audiocraft lets demucs open it."""
    from dataset_tools.separation.errors import SeparatorLoadError
    from dataset_tools.separation.model import check_pretrained_cache
    try:
        check_pretrained_cache("htdemucs")
    except SeparatorLoadError as exc:
        raise ModelUnavailableError(f"{name} needs the htdemucs stem separator for its melody conditioning: {exc}") \
            from None


def _check_hub_files(name: str) -> None:
    """Download (or find in the cache) the two files audiocraft's loader will read, into the same
    cache, and refuse them unless they load weights-only: whatever torch's default for the
    loader's own ``torch.load``, a booby-trapped hub repository cannot run code here."""
    from huggingface_hub import hf_hub_download
    for filename, what in ((LM_FILE, "model file"), (COMPRESSION_FILE, "compression model file")):
        path = hf_hub_download(repo_id=name, filename=filename, cache_dir=os.environ.get("AUDIOCRAFT_CACHE_DIR"))
        _check_package(Path(path), what)


# --- summary ------------------------------------------------------------------------

def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_summary(model) -> dict:
    """Facts about a loaded MusicGen: sizes, sample rate, frame rate, codebooks, text encoder."""
    lm = model.lm
    text_params = 0
    for conditioner in lm.condition_provider.conditioners.values():
        t5 = conditioner.__dict__.get("t5")
        if t5 is not None:
            text_params += count_parameters(t5)
    lm_params = count_parameters(lm)
    return {
        "name": str(model.name),
        "lm_parameters": lm_params,
        "lm_trainable_parameters": sum(p.numel() for p in lm.parameters() if p.requires_grad),
        "text_encoder_parameters_frozen": text_params,
        "compression_parameters": count_parameters(model.compression_model),
        "sample_rate": int(model.sample_rate),
        "audio_channels": int(model.audio_channels),
        "stereo": int(model.audio_channels) == 2,
        "frame_rate": float(model.frame_rate),
        "codebooks": int(lm.n_q),
        "card": int(lm.card),
        "lm_dim": int(lm.dim),
        "lm_layers": len(lm.transformer.layers),
        "max_duration": float(model.max_duration),
        "conditioners": sorted(lm.condition_provider.conditioners),
    }


def format_summary(summary: dict) -> str:
    def human(n: int) -> str:
        return f"{n / 1e6:.2f} M" if n >= 1e5 else str(n)
    rows = [
        ("model", summary["name"]),
        ("language model", f"{human(summary['lm_parameters'])} parameters "
                           f"({human(summary['lm_trainable_parameters'])} trainable), "
                           f"dim {summary['lm_dim']}, {summary['lm_layers']} layers"),
        ("text encoder (frozen)", f"{human(summary['text_encoder_parameters_frozen'])} parameters"),
        ("compression model", f"{human(summary['compression_parameters'])} parameters"),
        ("audio", f"{summary['sample_rate']} Hz, " + ("stereo (left and right codebooks interleaved)"
                                                      if summary.get("stereo") else
                                                      f"{summary['audio_channels']} channel(s)")),
        ("tokens", f"{summary['frame_rate']:g} frames/s x {summary['codebooks']} codebooks of "
                   f"{summary['card']} codes"),
        ("context window", f"{summary['max_duration']:g} s"),
        ("conditioning", ", ".join(summary["conditioners"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

