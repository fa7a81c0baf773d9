"""LoRA fine-tuning with peft: adapters on the LM's transformer linears, adapter folders, merging.

``apply_lora(lm, ...)`` injects peft's LoRA layers into audiocraft's ``LMModel`` in place (the LM
stays callable exactly as before: ``lm(sequence, conditions)``, ``lm.compute_predictions``,
DDP wrapping) and leaves only the adapters (plus, by option, the output heads and the
conditioner's output projection) trainable. The targets are found by name: by default each
layer's attention input projections (``in_proj``: queries, keys and values), output projections
(``out_proj``), self and cross attention, and feed-forward ``linear1`` / ``linear2``.

audiocraft keeps the attention's input projection as a raw parameter (``in_proj_weight``
``[3 x dim, dim]``, used through ``F.linear``, sliced into q / k / v in cross attention), not an
``nn.Linear``: a target naming ``in_proj`` becomes peft's ``target_parameters`` (``in_proj_weight``),
whose ``ParamWrapper`` wraps the attention module and, for each of its calls, reparametrises the
weight as ``W + scaling * B @ A``. The attention's own code (streaming KV cache included) runs
unchanged. The cost: that ``[3 x dim, dim]`` sum is computed per call and kept for backward
(docs/training.md measures it); merged models (exports, ``generate.py --lora``) do not pay it.
peft's parameter adapters take no dropout: ``--lora-dropout`` applies to the ``nn.Linear`` adapters.

An adapter folder holds peft's ``adapter_model.safetensors`` + ``adapter_config.json``, the
extra trained weights (``extra_weights.safetensors``: heads / condition projection when trained)
and ``musicgen_lora.json`` (the base model's name and our options), so loading never guesses
the base. ``merged_state_dict`` folds ``W + scaling * B @ A`` into the base's own key names:
the merged export is an ordinary audiocraft checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import typing as tp
from contextlib import contextmanager
from pathlib import Path

import torch

from .train_config import LORA_TARGETS as DEFAULT_TARGETS  # one list of defaults

ADAPTER_NAME = "default"  # peft's adapter name inside the LM
OURS_FILE = "musicgen_lora.json"
EXTRA_FILE = "extra_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
HEADS_PREFIX = "linears."  # the per-codebook output heads
PARAM_TARGET = "in_proj"  # a target naming a raw weight parameter (``in_proj_weight``), not a module
BASE_FINGERPRINT_ATTR = "_musicgen_lora_base_fingerprint"  # set on the LM by apply_lora
# 2: over a sample of every base tensor; 1 (records without a version): over emb.* only, which LoRA
# never trains, so every merged LoRA fine-tune of one release had that release's fingerprint.
FINGERPRINT_VERSION = 2
_FINGERPRINT_SAMPLE = 4096  # elements per tensor, evenly strided: cheap on a 1.5B model


# peft imports bitsandbytes when installed, whose CPU backend logs a warning about an optional
# kernels package at import: noise for LoRA in fp32/bf16, which never uses its 4-bit kernels.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def resolved_alpha(rank: int, alpha: tp.Optional[float]) -> float:
    """``alpha`` or, when unset, ``2 x rank`` (adapter scaling alpha / rank = 2)."""
    return float(alpha) if alpha is not None else 2.0 * rank


def extra_trainable(name: str, train_heads: bool, train_condition_proj: bool) -> bool:
    """Whether a base parameter trains alongside the adapters (``--lora-train-heads`` and
    ``--lora-train-condition-proj``)."""
    if train_heads and name.startswith(HEADS_PREFIX):
        return True
    return train_condition_proj and name.startswith("condition_provider.") and ".output_proj." in name


def split_targets(targets: tp.Sequence[str]) -> tp.Tuple[tp.List[str], tp.List[str]]:
    """(peft's ``target_modules``: ``nn.Linear`` names, ``target_parameters``: raw weights).

    ``in_proj`` (or ``self_attn.in_proj``, ``cross_attention.in_proj``) names the attention's
    ``in_proj_weight``; every other name is an ``nn.Linear`` module's (peft matches name suffixes)."""
    modules = [t for t in targets if t != PARAM_TARGET and not t.endswith("." + PARAM_TARGET)]
    params = [f"{t}_weight" for t in targets if t not in modules]
    return modules, params


def apply_lora(lm, rank: int, alpha: tp.Optional[float] = None, dropout: float = 0.0,
               targets: tp.Sequence[str] = DEFAULT_TARGETS, train_heads: bool = False,
               train_condition_proj: bool = False) -> int:
    """Inject LoRA adapters (rank ``rank``) into ``lm`` in place; returns the trainable parameter count.

    The adapters are created on the device of the layer they adapt, in fp32 (the base may be in
    fp16 on GPU; the adapters are the master weights). ``lora_B`` starts at zero, so the LM's
    output is unchanged until it trains.

    ``dropout`` applies to the ``nn.Linear`` adapters' input; the ``in_proj`` adapters (peft's
    ``ParamWrapper``, which refuses dropout: it adapts a weight, not an input) have none.

    Raises:
        ValueError: rank < 1, or ``targets`` match no ``nn.Linear`` / ``in_proj_weight`` of the LM (one line).
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import Linear as LoraLinear

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    modules, params = split_targets(targets)
    # The base's identity, taken before peft wraps it and training changes heads: save_adapter records it.
    if not lora_layers(lm):
        setattr(lm, BASE_FINGERPRINT_ATTR, base_fingerprint(lm.state_dict()))
    config = LoraConfig(r=int(rank), lora_alpha=resolved_alpha(rank, alpha), bias="none",
                        lora_dropout=0.0 if params else float(dropout),
                        target_modules=modules or None, target_parameters=params or None)
    try:
        inject_adapter_in_model(config, lm, adapter_name=ADAPTER_NAME)
    except ValueError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"--lora-targets {','.join(targets)}: no matching linear layer (or in_proj weight) "
                         f"in the LM ({first})") from None
    # peft fails only when no target matches: a misspelt one next to good ones would go unnoticed.
    adapted = [_base_key(name) + (f".{layer.parameter_name}" if hasattr(layer, "parameter_name") else "")
               for name, layer in lora_layers(lm).items()]
    unmatched = [t for t in targets if not any(a == n or a.endswith("." + n) for a in adapted
                                               for n in [t if t in modules else f"{t}_weight"])]
    if unmatched:
        raise ValueError(f"--lora-targets {','.join(unmatched)}: no matching linear layer (or in_proj weight) "
                         f"in the LM (the default targets: {','.join(DEFAULT_TARGETS)})")
    # peft's config keeps lora_dropout 0 (its ParamWrapper refuses more, so peft loads the adapter);
    # the linears get the dropout as peft builds it for lora_dropout > 0.
    if params and dropout:
        for layer in lora_layers(lm).values():
            if isinstance(layer, LoraLinear):
                layer.lora_dropout[ADAPTER_NAME] = torch.nn.Dropout(p=float(dropout))
    for name, param in lm.named_parameters():
        if is_adapter_param(name):
            param.data = param.data.float()
            param.requires_grad_(True)
        else:
            param.requires_grad_(extra_trainable(name, train_heads, train_condition_proj))
    return sum(p.numel() for p in lm.parameters() if p.requires_grad)


def is_adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_layers(lm) -> tp.Dict[str, tp.Any]:
    """Module name -> peft LoRA layer of ``lm``: ``lora.Linear`` for each adapted linear,
    ``lora.ParamWrapper`` for each attention whose ``in_proj_weight`` is adapted (its ``out_proj``
    is then named ``<attention>.base_layer.out_proj``)."""
    from peft.tuners.lora import LoraLayer
    return {name: m for name, m in lm.named_modules() if isinstance(m, LoraLayer)}


def merged_state_dict(lm, weights: tp.Optional[dict] = None) -> dict:
    """The LM state dict with every adapter folded into its base weight, under the base's names.

    ``weights``: the adapted LM's state dict to merge (e.g. EMA or exported weights; default
    ``lm.state_dict()``). For each adapted weight ``P.w`` (``w``: ``weight`` of a linear,
    ``in_proj_weight`` of an attention): ``P.w = P.base_layer.w + scaling * lora_B [out, r] @
    lora_A [r, in]``, computed in fp32, stored in the base's dtype.
    """
    weights = dict(lm.state_dict() if weights is None else weights)
    merged = {}
    for prefix, layer in lora_layers(lm).items():
        a = weights[f"{prefix}.lora_A.{ADAPTER_NAME}.weight"].float()
        b = weights[f"{prefix}.lora_B.{ADAPTER_NAME}.weight"].float()
        name = getattr(layer, "parameter_name", "weight")  # ParamWrapper: the raw parameter it adapts
        base = weights[f"{prefix}.base_layer.{name}"]
        merged[_base_key(f"{prefix}.{name}")] = (base.float() + layer.scaling[ADAPTER_NAME] * (b @ a)).to(base.dtype)
    for key, value in weights.items():
        if ".lora_" in key:
            continue
        merged.setdefault(_base_key(key), value)
    return merged


def _base_key(key: str) -> str:
    """The base model's name of an adapted model's key (peft's wrappers nest: ``self_attn.base_layer.
    out_proj.base_layer.weight`` -> ``self_attn.out_proj.weight``)."""
    return key.replace(".base_layer.", ".")


@contextmanager
def raw_weights_folded(lm) -> tp.Iterator[None]:
    """Inside: each ``in_proj`` adapter's weight is ``W + scaling B A``, computed once, and peft's
    ``ParamWrapper`` skips its per-call reparametrisation (as for a merged layer), so streaming
    generation from the adapted LM (training samples) runs at a merged model's speed instead of
    recomputing that ``[3 x dim, dim]`` sum for every attention at every step. The sum replaces
    the weight's data (no in-place add): on exit the frozen base is restored bit-identical, also
    in bf16. For inference (no gradients); costs one ``in_proj_weight`` copy per attention meanwhile."""
    from peft.tuners.lora import ParamWrapper
    folded = []
    try:
        with torch.no_grad():
            for layer in lora_layers(lm).values():
                if isinstance(layer, ParamWrapper) and not layer.merged and ADAPTER_NAME in layer.lora_A:
                    param = layer.get_param()
                    original = param.data
                    param.data = original + layer.get_delta_weight(ADAPTER_NAME).to(original.dtype)
                    layer.merged_adapters.append(ADAPTER_NAME)
                    folded.append((layer, param, original))
        yield
    finally:
        for layer, param, original in folded:
            param.data = original
            layer.merged_adapters.remove(ADAPTER_NAME)


def merge_in_place(lm) -> None:
    """Fold the adapters into ``lm``'s weights and remove peft's wrappers: a plain audiocraft LM."""
    weights = merged_state_dict(lm)
    # Parents are looked up before any replacement: an attention's ParamWrapper holds its out_proj's layer.
    swaps = []
    for name, layer in lora_layers(lm).items():
        parent_name, _, child = name.rpartition(".")
        swaps.append((lm.get_submodule(parent_name) if parent_name else lm, child, layer.get_base_layer()))
    for parent, child, base in swaps:
        setattr(parent, child, base)
    lm.__dict__.pop("peft_config", None)
    lm.load_state_dict(weights)


def _options(config) -> dict:
    return {"rank": config.lora, "alpha": resolved_alpha(config.lora, config.lora_alpha),
            "dropout": config.lora_dropout, "targets": list(config.lora_targets),
            "train_heads": config.lora_train_heads, "train_condition_proj": config.lora_train_condition_proj}


def apply_lora_from_config(lm, config) -> int:
    """``apply_lora`` with a ``TrainConfig``'s ``--lora*`` options."""
    o = _options(config)
    return apply_lora(lm, o["rank"], o["alpha"], o["dropout"], o["targets"], o["train_heads"],
                      o["train_condition_proj"])


def save_adapter(lm, weights: dict, folder: tp.Union[str, os.PathLike], config, extra: tp.Optional[dict] = None,
                 shareable: bool = False) -> Path:
    """Write the adapter folder from ``weights`` (the adapted LM's state dict, e.g. with EMA).

    Files: peft's ``adapter_model.safetensors`` (adapter weights, keys as peft's
    ``get_peft_model_state_dict`` names them) and ``adapter_config.json``; ``extra_weights.safetensors``
    (heads / condition projection, when trained); ``musicgen_lora.json`` (base model, options, shapes,
    and ``base_fingerprint``, the base's weights' identity, see ``base_fingerprint``).

    ``shareable``: the copy inside an export (``export-best/adapter/``, which a push uploads): a base
    model that is a folder of this machine is named by its last name only, its path is not recorded
    (``check_base`` then recognises the base by its fingerprint). The run's own ``OUT/adapter/`` keeps
    the resolved path (``base_model_path``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .exports import shareable_base_name
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter = get_peft_model_state_dict(lm, state_dict=weights, adapter_name=ADAPTER_NAME)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in adapter.items()}, str(folder / PEFT_WEIGHTS))
    base = shareable_base_name(config.model) if shareable else config.model
    peft_config = lm.peft_config[ADAPTER_NAME]
    peft_config.base_model_name_or_path = base
    peft_config.save_pretrained(str(folder))
    o = _options(config)
    trained_extra = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()
                     if ".lora_" not in k and extra_trainable(k, o["train_heads"], o["train_condition_proj"])}
    if trained_extra:
        save_file(trained_extra, str(folder / EXTRA_FILE))
    record = {"base_model": base, "base_model_path": None if shareable else _real_folder(config.model),
              "base_fingerprint": _recorded_fingerprint(lm, weights),
              "base_fingerprint_version": FINGERPRINT_VERSION, **o,
              "shapes": {k: list(v.shape) for k, v in adapter.items()}, **(extra or {})}
    (folder / OURS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def base_fingerprint(state: dict, version: int = FINGERPRINT_VERSION) -> str:
    """The identity of the base weights an adapter fits, from the base LM's state dict (as loaded,
    before LoRA is applied): a hash of each tensor's name, shape and an evenly strided sample of
    ``_FINGERPRINT_SAMPLE`` of its values, rounded to fp16 so that a base loaded in fp32 (CPU) or
    fp16 (GPU) from the same checkpoint gives the same one. ``version`` 1: the code embeddings
    (``emb.*``) only, as adapters written before version 2 recorded it."""
    import hashlib
    digest = hashlib.sha256()
    for name, value in sorted(state.items()):
        if version < 2 and not name.startswith("emb."):
            continue
        value = value.detach()
        if version >= 2:
            digest.update(repr(tuple(value.shape)).encode())
            flat = value.reshape(-1)
            value = flat[::max(1, flat.numel() // _FINGERPRINT_SAMPLE)][:_FINGERPRINT_SAMPLE]
        digest.update(name.encode())
        digest.update(value.to("cpu", torch.float16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]


def _recorded_fingerprint(lm, weights: dict) -> str:
    """The fingerprint ``apply_lora`` took of ``lm``'s base; for an LM it did not see, that of the
    base's names in ``weights`` (the adapted state dict; right unless heads were trained too)."""
    fingerprint = getattr(lm, BASE_FINGERPRINT_ATTR, None)
    if isinstance(fingerprint, str):
        return fingerprint
    return base_fingerprint({_base_key(k): v for k, v in weights.items() if ".lora_" not in k})


def _real_folder(name: str) -> tp.Optional[str]:
    """The resolved path when the base model is a folder (an export), else None (a hub/tiny name)."""
    path = Path(str(name)).expanduser()
    return str(path.resolve()) if path.is_dir() else None


def read_adapter_record(folder: tp.Union[str, os.PathLike]) -> dict:
    """``musicgen_lora.json`` of an adapter folder; one-line ``ValueError`` when it is not one."""
    folder = Path(folder)
    for name in (OURS_FILE, PEFT_WEIGHTS, PEFT_CONFIG):
        if not (folder / name).is_file():
            raise ValueError(f"--lora {folder}: not an adapter folder (no {name}; train.py --lora writes OUT/adapter)")
    try:
        return json.loads((folder / OURS_FILE).read_text())
    except ValueError as exc:
        raise ValueError(f"--lora {folder}: unreadable {OURS_FILE} ({exc})") from None


def check_base(record: dict, base: str, folder, lm=None) -> None:
    """One-line ``ValueError`` when the adapter was trained on another base model than ``base``.

    The run's own adapter records the base folder's resolved path: that folder it is. An exported
    adapter (pushed, so it names a local base by its last folder name only) fits a base folder of
    that name (before loading) whose weights have its ``base_fingerprint``. A hub or built-in base
    is matched by name. In every case, given ``lm`` (the loaded base, before the adapter is applied)
    and a recorded fingerprint, the weights must have it too: two exports of one name (two runs'
    ``export-best``), or a folder and a hub model of one name, are told apart by their weights.

    A base folder that moved (the recorded path is gone) is recognised by its weights: another
    folder fits when the adapter records a version-2 fingerprint (a sample of every tensor, which
    the loaded weights must then have); before loading (``lm`` None: the app's list) only a folder
    of the recorded one's name is a candidate."""
    from .runtime import resolve_name
    recorded = record.get("base_model")
    real = _real_folder(base)
    fingerprint = record.get("base_fingerprint")
    path = record.get("base_model_path")
    gone = bool(path) and not Path(str(path)).is_dir()
    moved = gone and real is not None and real != path
    if moved and strong_fingerprint(record):
        same = lm is not None or Path(real).name == Path(str(path)).name
    elif path:
        same = real is not None and real == path
    elif real is not None:
        same = Path(real).name == recorded or lm is not None and isinstance(fingerprint, str)
    else:
        same = resolve_name(recorded) == resolve_name(base)
    hint = f"pass --model {recorded}" if path or real is None else \
        f"pass --model the folder of the base model {recorded!r} it was trained on"
    if gone:
        hint = (f"its base folder {path} is gone; pass --model the folder it moved to (its weights are checked)"
                if strong_fingerprint(record) else f"its base folder {path} is gone and the adapter records no "
                f"weights fingerprint to recognise it elsewhere: put the base back there")
    if not same:
        raise ValueError(f"--lora {folder} was trained on base model {recorded!r}, not {str(base)!r}: {hint}")
    if lm is not None and isinstance(fingerprint, str):
        version = record.get("base_fingerprint_version", 1)
        if not isinstance(version, int) or base_fingerprint(lm.state_dict(), version) != fingerprint:
            raise ValueError(f"--lora {folder} was trained on base model {recorded!r} with other weights than "
                             f"{str(base)!r} has (another model of that name?): {hint}")


def strong_fingerprint(record: dict) -> bool:
    """Whether the adapter records a fingerprint that tells its base's weights apart (version 2: a
    sample of every tensor; version 1 covered the code embeddings only, which every LoRA fine-tune
    of one release shares)."""
    version = record.get("base_fingerprint_version", 1)
    return isinstance(record.get("base_fingerprint"), str) and isinstance(version, int) and \
        not isinstance(version, bool) and version >= 2


def _read_safetensors(path: Path, folder: Path) -> dict:
    """Tensors of a safetensors file (no pickle: nothing in it can run); a file that is not one
    (e.g. a pickle renamed) or is damaged is a one-line ValueError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"cannot read LoRA adapter {folder}: {path.name} is not a readable safetensors file "
                         f"({reason})") from None


def apply_adapter(lm, folder: tp.Union[str, os.PathLike], base: str, merge: bool = True) -> dict:
    """Apply the adapter folder onto ``lm`` (the base model ``base``); returns its record.

    ``merge``: fold it into the weights (a plain LM, as fast as the base), else keep peft's layers.
    Raises ValueError (one line): not an adapter folder, another base model, or shapes that differ.
    """
    from peft import set_peft_model_state_dict

    folder = Path(folder)
    record = read_adapter_record(folder)
    check_base(record, base, folder, lm=lm)
    apply_lora(lm, int(record["rank"]), record["alpha"], 0.0, record["targets"])
    weights = _read_safetensors(folder / PEFT_WEIGHTS, folder)
    expected = {k: tuple(v.shape) for k, v in lm.state_dict().items()}
    for key, value in weights.items():
        full = key.replace(".weight", f".{ADAPTER_NAME}.weight")
        if expected.get(full) != tuple(value.shape):
            raise ValueError(f"--lora {folder} does not fit this base model: {key} is {tuple(value.shape)}, "
                             f"the model has {expected.get(full)}")
    device = next(lm.parameters()).device
    result = set_peft_model_state_dict(lm, {k: v.to(device) for k, v in weights.items()}, adapter_name=ADAPTER_NAME)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"--lora {folder} does not fit this base model: {result.unexpected_keys[:2]} unknown")
    if (folder / EXTRA_FILE).is_file():
        extra = _read_safetensors(folder / EXTRA_FILE, folder)
        params = dict(lm.named_parameters())
        with torch.no_grad():
            for key, value in extra.items():
                if key not in params or params[key].shape != value.shape:
                    raise ValueError(f"--lora {folder} does not fit this base model: {key}")
                params[key].copy_(value.to(params[key].dtype))
    lm.requires_grad_(False)
    if merge:
        merge_in_place(lm)
    return record


def load_with_adapter(base: str, adapter: tp.Union[str, os.PathLike], device: tp.Optional[str] = None,
                      merge: bool = True):
    """``load_model(base)`` with the adapter folder applied (``apply_adapter``)."""
    from .models import load_model
    read_adapter_record(adapter)  # a wrong folder fails before the (slow) model load
    model = load_model(base, device=device)
    apply_adapter(model.lm, adapter, str(base), merge=merge)
    model.lm.eval()
    return model
