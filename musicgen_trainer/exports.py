"""Write exports exactly as audiocraft's ``utils/export.py`` does (``export_model``); find
exported fine-tunes and read what they were trained on, without loading them.

An export folder (what ``train.py`` writes, audiocraft's layout) holds ``state_dict.bin``,
``compression_state_dict.bin`` and ``export_info.json``: the training data's ``genres``,
``caption_examples``, base model, steps and window, in plain JSON. Listing exports (the web
app does it at start-up and on Rescan) reads only that JSON: no weights file is opened, so a
booby-trapped download in checkpoints/ is inert until someone loads it, and loading is
weights-only (``checkpoint_io.py``). An export without the JSON (audiocraft's own, or an older
one of ours) is listed with defaults.
"""
from __future__ import annotations

import json
import os
import re
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from dataset_tools.atomic import atomic_path

from .checkpoint_io import atomic_torch_save
from .runtime import resolve_name
from .train_config import EXPORT_DTYPES
from .tiny import is_tiny_config, tiny_export_extras

LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
EXPORT_INFO_FILE = "export_info.json"  # what an export was trained on, readable without opening the weights

MAX_DEPTH = 4  # checkpoints/<run>/export is depth 2; leave room for nested layouts


@dataclass
class ExportInfo:
    """What an export folder says about its training (empty lists when it says nothing)."""
    path: str
    genres: tp.List[str] = field(default_factory=list)
    caption_examples: tp.List[str] = field(default_factory=list)
    base_model: str = ""
    trained_steps: int = 0
    max_duration: float = 30.0  # the model's window (seconds), from its config
    cfg_coef: tp.Optional[float] = None  # the model's own guidance (its config's inference_coef); None: not recorded


def is_export(folder: tp.Union[str, os.PathLike]) -> bool:
    folder = Path(folder)
    return (folder / LM_FILE).is_file() and (folder / COMPRESSION_FILE).is_file()


def find_folders(root: tp.Union[str, os.PathLike], matches: tp.Callable[[Path], bool]) -> tp.List[Path]:
    """Every folder under ``root`` (``root`` itself included, at most ``MAX_DEPTH`` down, hidden
    folders skipped) for which ``matches(folder)``, sorted by path. Nothing is opened."""
    root = Path(root)
    found: tp.List[Path] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
        if matches(here):
            found.append(here)
    return sorted(found)


def find_exports(root: tp.Union[str, os.PathLike] = "checkpoints") -> tp.List[Path]:
    """Every export folder under ``root`` (``root`` itself included), sorted by path; hidden folders skipped."""
    return find_folders(root, is_export)


# EXPORT_DTYPES: weight formats of an export's LM. The released checkpoints are fp16 (half the
# size of fp32); audiocraft's loader casts them to the model's dtype (fp32 on CPU, fp16 on GPU).
OURS = "musicgen_trainer"  # our section of xp.cfg: base model, training data facts, options


def export_model(model, folder: tp.Union[str, os.PathLike], lm_state: tp.Optional[dict] = None,
                 extra: tp.Optional[dict] = None, dtype: str = "fp16") -> Path:
    """Write ``model`` to ``folder`` exactly as audiocraft's ``utils/export.py`` does; returns the folder.

    ``state_dict.bin`` holds ``{'best_state', 'xp.cfg', 'version', 'exported'}`` with ``xp.cfg``
    the model's config as YAML, interpolations left unresolved (a released config holds e.g.
    ``${oc.env:USER}``, which would fail wherever that variable is unset), plus, for tiny
    models, the frozen text encoder's weights. ``compression_state_dict.bin`` is the base
    model's own package (released models) or the codec's weights in the same layout (tiny
    models). ``MusicGen.get_pretrained(folder)`` and ``load_model(folder)`` both accept it. Files
    are written to temporary names and renamed, so a crash never leaves a half-written export.

    Args:
        lm_state: LM weights to export instead of ``model.lm.state_dict()`` (e.g. EMA weights).
        extra: JSON-able facts merged into ``xp.cfg['musicgen_trainer']`` (e.g. training data genres).
        dtype: ``fp16`` (the released checkpoints' format), ``bf16`` or ``fp32``: the LM's
            floating-point weights are stored in it. The codec is stored as it is (fp32).
    """
    import audiocraft
    from omegaconf import OmegaConf

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = _export_config(model.lm.cfg, extra)
    if is_tiny_config(package_config({"xp.cfg": cfg})):
        _export_tokenizer(model, cfg, folder)
    plain = package_config({"xp.cfg": cfg})
    yaml = OmegaConf.to_yaml(cfg)
    state = lm_state if lm_state is not None else model.lm.state_dict()
    lm_pkg = {"best_state": cast_state(state, dtype), "xp.cfg": yaml,
              "version": audiocraft.__version__, "exported": True}
    if is_tiny_config(plain):
        # The frozen local T5 / stem separator stay fp32: rounding them would change the reloaded
        # model's text embeddings and chroma (and the chroma cache's fingerprint).
        lm_pkg.update({k: cast_state(v, "fp32") for k, v in tiny_export_extras(model).items()})
        compression = getattr(model.compression_model, "model", model.compression_model)  # unwrap stereo wrapper
        compression_pkg = {"best_state": cast_state(compression.state_dict(), "fp32"), "xp.cfg": yaml,
                           "version": audiocraft.__version__, "exported": True}
    else:
        compression_pkg = _base_compression_package(model, plain)
    atomic_torch_save(lm_pkg, folder / LM_FILE)
    atomic_torch_save(compression_pkg, folder / COMPRESSION_FILE)
    write_export_info(folder, plain)
    return folder


def _export_tokenizer(model, cfg, folder: Path) -> None:
    """A tiny-conditioner model with a sentencepiece tokenizer (converted from transformers'
    format): its tokenizer is copied into the export and ``cfg`` names the copy by its relative
    name (``export_tokenizer.py``); the byte-level one needs no files."""
    from .export_tokenizer import write_export_tokenizer
    ours = cfg[OURS]
    ours.pop("tokenizer_folder", None)  # an older config's path is never written out
    if str(ours.get("tokenizer", None) or "byt5") != "byt5":
        tokenizer = model.lm.condition_provider.conditioners["description"].t5_tokenizer
        ours.tokenizer_folder = write_export_tokenizer(tokenizer, folder)


def cast_state(state: dict, dtype: str) -> dict:
    """A state dict's floating-point tensors in ``dtype`` (others as they are), detached, on the CPU."""
    import torch
    target = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    return {k: (v.detach().to("cpu", target) if v.is_floating_point() else v.detach().cpu())
            for k, v in state.items()}


def _escape(value):
    """Strings of our section made literal for OmegaConf: a caption such as ``costs ${5}`` is
    not an interpolation (nor a syntax error), and reads back unchanged (``package_config``)."""
    if isinstance(value, str):
        # A run of n backslashes before "${" becomes 2n + 1: the n are literal, the last escapes "${".
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape(v) for v in value]
    return value


def _export_config(lm_cfg, extra: tp.Optional[dict]):
    """The config to export: the model's own (unresolved), device ``cpu``, our facts merged in."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(lm_cfg, resolve=False))  # a copy, interpolations kept
    OmegaConf.set_struct(cfg, False)
    cfg.device = "cpu"
    ours = _section(cfg)
    if extra or ours.get("base_model"):
        ours.update(extra or {})
        if ours.get("base_model"):  # an export written before names were shortened kept a path: never again
            ours["base_model"] = shareable_base_name(ours["base_model"])
        cfg[OURS] = _escape(ours)
    return cfg


def _section(cfg) -> dict:
    """Our section of a config as plain values (escaped strings read back as written)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = cfg.get(OURS) if OURS in cfg else None
    if node is None:
        return {}
    if not OmegaConf.is_config(node):
        return node if isinstance(node, dict) else {}
    try:  # our strings are escaped, so resolving only un-escapes them
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException:  # a hand-made section with real interpolations
        return OmegaConf.to_container(node, resolve=False)


def package_config(pkg: dict) -> dict:
    """A package's ``xp.cfg`` as a plain dict, interpolations left unresolved (audiocraft's
    exports and ours store YAML, older exports of ours a dict); our section as written."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    raw = pkg.get("xp.cfg")
    if isinstance(raw, dict):  # older exports of ours: plain values, never interpolated
        return raw
    try:
        cfg = raw if OmegaConf.is_config(raw) else OmegaConf.create(raw) if isinstance(raw, str) else None
    except (OmegaConfBaseException, ValueError, TypeError):
        return {}
    if cfg is None or not OmegaConf.is_dict(cfg):
        return {}
    plain = OmegaConf.to_container(cfg, resolve=False)
    if OURS in plain:
        plain[OURS] = _section(cfg)
    return plain


def config_for_omegaconf(plain: dict) -> dict:
    """``plain`` (from ``package_config``) with our section's strings escaped again, so that
    ``OmegaConf.create`` takes it whatever the captions hold (``${`` is text there)."""
    return {**plain, OURS: _escape(plain[OURS])} if isinstance(plain.get(OURS), dict) else plain


def _base_compression_package(model, plain: dict) -> dict:
    """A released model's (or a fine-tune's) compression package: training leaves the codec
    unchanged, so the package of the folder the model was loaded from (a local base, or the export
    being exported again: ``model.name``) is copied as is, as audiocraft's
    ``export_pretrained_compression_model`` does with a package file; a model loaded from the hub
    (or a transformers folder, which has no package) gets its base's from the hub."""
    from audiocraft.models.loaders import load_compression_model_ckpt
    name = str(getattr(model, "name", "") or "")
    if name and (Path(name) / COMPRESSION_FILE).is_file():
        return load_compression_model_ckpt(name)
    base = (plain.get(OURS) or {}).get("base_model") or name
    return load_compression_model_ckpt(resolve_name(base))  # never a short name: the hub has no repo "small"


def shareable_base_name(name) -> str:
    """A base model's name as an export records it (exports get pushed): a hub or built-in name
    whole, a folder of this machine by its last name only (``/home/me/bases/mybase`` -> ``mybase``)."""
    text = str(name or "")
    path = Path(text).expanduser()
    local = path.is_absolute() or text.startswith((".", "~")) or "\\" in text or path.exists()
    return (path.name or text) if text and local else text


INFO_FORMAT = "musicgen_trainer.export_info"


def _window(xp_cfg: dict) -> float:
    """The model's window in seconds (30 when the config holds none, or an interpolation)."""
    try:
        return float((xp_cfg.get("dataset") or {}).get("segment_duration") or 30.0)
    except (TypeError, ValueError, AttributeError):
        return 30.0


def _guidance(xp_cfg: dict) -> tp.Optional[float]:
    """The model's own guidance coefficient (``classifier_free_guidance.inference_coef``) when it is
    a number in ``CFG_COEF_RANGE``; None otherwise (an interpolation, a config without one)."""
    from .generation import CFG_COEF_RANGE
    try:
        value = (xp_cfg.get("classifier_free_guidance") or {}).get("inference_coef")
    except AttributeError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high = CFG_COEF_RANGE
    return float(value) if low <= value <= high else None  # NaN fails both comparisons


def write_export_info(folder: tp.Union[str, os.PathLike], xp_cfg: dict) -> Path:
    """Write ``export_info.json`` from the export's ``xp.cfg`` (called by ``export_model``)."""
    extra = xp_cfg.get("musicgen_trainer") or {}
    info = {"format": INFO_FORMAT, "version": 1,
            "genres": [str(g) for g in extra.get("genres") or []],
            "caption_examples": [str(c) for c in extra.get("caption_examples") or []],
            "base_model": str(extra.get("base_model") or ""),
            "trained_steps": int(extra.get("trained_steps") or 0),
            "max_duration": _window(xp_cfg)}
    guidance = _guidance(xp_cfg)
    if guidance is not None:  # the web page's guidance control starts at it (read without the weights)
        info["cfg_coef"] = guidance
    path = Path(folder) / EXPORT_INFO_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def export_info(folder: tp.Union[str, os.PathLike]) -> ExportInfo:
    """The training facts an export records in ``export_info.json`` (defaults when it has none,
    or when the file is not what we write). Reads JSON only, never the weights."""
    folder = Path(folder)
    try:
        with open(folder / EXPORT_INFO_FILE, encoding="utf-8") as f:
            data = json.loads(f.read(1 << 20))  # ours are a few KB; a huge one is not ours
        if not isinstance(data, dict) or data.get("format") != INFO_FORMAT:
            raise ValueError("not an export_info.json")
        return ExportInfo(path=str(folder),
                          genres=[str(g) for g in data.get("genres") or []][:64],
                          caption_examples=[str(c) for c in data.get("caption_examples") or []][:16],
                          base_model=str(data.get("base_model") or ""),
                          trained_steps=int(data.get("trained_steps") or 0),
                          max_duration=float(data.get("max_duration") or 30.0),
                          cfg_coef=_guidance({"classifier_free_guidance": {"inference_coef": data.get("cfg_coef")}}))
    except (OSError, ValueError, TypeError):
        return ExportInfo(path=str(folder))
