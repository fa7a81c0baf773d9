"""LoRA adapters in the web app: found under ``checkpoints/``, matched to their base, loaded.

``train.py --lora`` writes ``OUT/adapter``: peft's ``adapter_model.safetensors`` and
``adapter_config.json`` plus ``musicgen_lora.json``, which records the base model (``lora.py``).
Listing reads that JSON alone, never a weights file, so a booby-trapped folder in
``checkpoints/`` is inert; using an adapter goes through ``lora.load_with_adapter``, which reads
safetensors only. The page names adapters by their folder under ``checkpoints/``
(``adapter:my-run/adapter``), never by a server path.
"""
from __future__ import annotations

import json
import os
import typing as tp
from dataclasses import dataclass
from pathlib import Path

ADAPTER_KEY_PREFIX = "adapter:"  # a LoRA adapter's public key: "adapter:" + its folder relative to checkpoints/
NO_ADAPTER = "none"  # the adapter picker's "no adapter" entry
ADAPTER_RECORD_MAX_BYTES = 1 << 20  # ours are a few KB; a larger musicgen_lora.json is not ours


@dataclass
class AdapterChoice:
    """A LoRA adapter folder found under ``checkpoints/`` (``train.py --lora`` writes ``OUT/adapter``).

    Listed from its ``musicgen_lora.json`` alone: no weights file is opened until it is used."""
    label: str   # shown in the adapter dropdown
    value: str   # the adapter folder on the server (never sent to the page)
    key: str     # what the page and API callers see and send: "adapter:<folder under checkpoints/>"
    base: tp.Optional[str]  # ``value`` of the listed model it was trained on; None when the app offers none
    base_name: str  # how the page names that base: its key, or the recorded hub name; "" when neither
    rank: int = 0


def find_adapters(root: tp.Union[str, os.PathLike]) -> tp.List[Path]:
    """Every folder under ``root`` holding a ``musicgen_lora.json`` (walked as ``find_exports``
    walks: same depth, hidden folders skipped), sorted by path. Nothing is opened."""
    from ..exports import find_folders
    from ..lora import OURS_FILE
    return find_folders(root, lambda here: (here / OURS_FILE).is_file())


def adapter_record(folder: tp.Union[str, os.PathLike]) -> dict:
    """An adapter folder's ``musicgen_lora.json``, checked to be ours; one-line ValueError otherwise.

    Reads that JSON only (at most ``ADAPTER_RECORD_MAX_BYTES``). The folder must also hold
    peft's ``adapter_config.json`` and ``adapter_model.safetensors``: the app applies
    safetensors adapters only (a pickled ``adapter_model.bin`` is never an adapter here)."""
    from ..lora import OURS_FILE, PEFT_CONFIG, PEFT_WEIGHTS
    folder = Path(folder)
    for name in (PEFT_WEIGHTS, PEFT_CONFIG):
        if not (folder / name).is_file():
            raise ValueError(f"not a LoRA adapter folder (no {name})")
    try:
        with open(folder / OURS_FILE, encoding="utf-8") as f:
            text = f.read(ADAPTER_RECORD_MAX_BYTES + 1)
        if len(text) > ADAPTER_RECORD_MAX_BYTES:
            raise ValueError(f"{OURS_FILE} is too large")
        record = json.loads(text)
        if not isinstance(record, dict) or not isinstance(record.get("base_model"), str) or \
                not isinstance(record.get("rank"), int) or not isinstance(record.get("targets"), list):
            raise ValueError(f"{OURS_FILE} is not what train.py --lora writes")
    except (OSError, ValueError) as exc:
        raise ValueError(f"not a LoRA adapter folder ({_one_line(exc)})") from None
    return record


def _base_choice(record: dict, folder: Path, models: tp.Sequence[tp.Any]) -> tp.Any:
    """The listed model (a ``backend.ModelChoice``) the adapter was trained on (``lora.check_base``
    decides, by name: the weights are not loaded to list), or None: also when several listed models
    fit the name (an exported adapter names its base ``export-best``, which each run's best export
    is), since pairing it with the first of them would be a guess."""
    from ..lora import check_base
    matches = []
    for choice in models:
        try:
            check_base(record, choice.value, folder)
        except ValueError:
            continue
        matches.append(choice)
    path = record.get("base_model_path")
    if matches and isinstance(path, str) and not Path(path).is_dir():
        # A run's own adapter whose base folder moved: check_base lets any listed folder of that name
        # be a candidate (its weights are checked when it loads). Paired: the one whose path ends most
        # like the recorded one, by two names at least when the name is one every run has (export).
        from ..run_folder import BEST_EXPORT
        need = 2 if Path(path).name in ("export", BEST_EXPORT) else 1
        shared = {id(c): _shared_tail(Path(c.value).resolve(), Path(path)) for c in matches}
        best = max(shared.values())
        matches = [c for c in matches if shared[id(c)] == best >= need]
    return matches[0] if len(matches) == 1 else None


def _shared_tail(a: Path, b: Path) -> int:
    """How many trailing path parts ``a`` and ``b`` share."""
    count = 0
    for x, y in zip(reversed(a.parts), reversed(b.parts)):
        if x != y:
            break
        count += 1
    return count


def list_adapters(checkpoints: tp.Union[str, os.PathLike, None],
                  models: tp.Sequence[tp.Any]) -> tp.List[AdapterChoice]:
    """Every LoRA adapter under ``checkpoints``, each with the model of ``models`` (the app's
    ``backend.ModelChoice`` list) it was trained on.

    A folder whose ``musicgen_lora.json`` is missing, unreadable or not ours, or without peft's
    safetensors weights, is not listed. An adapter whose base the app does not offer (an export
    kept elsewhere, a hub model not in the list) is listed, and refused in one line when used."""
    choices: tp.List[AdapterChoice] = []
    if not checkpoints:
        return choices
    root = Path(checkpoints)
    for folder in find_adapters(root):
        try:
            record = adapter_record(folder)
        except ValueError:
            continue
        rel = folder.relative_to(root).as_posix()
        base = _base_choice(record, folder, models)
        base_name = base.key if base is not None else _public_base_name(record)
        label = f"{rel} (rank {record['rank']}, base {base_name or 'not listed here'})"
        choices.append(AdapterChoice(label, str(folder), ADAPTER_KEY_PREFIX + rel,
                                     base.value if base else None, base_name, int(record["rank"])))
    return choices


def _public_base_name(record: dict) -> str:
    """The recorded base as the page may show it: a released or built-in name; "" for anything
    else (an export folder kept elsewhere is a server path the page must not learn)."""
    from ..runtime import PRETRAINED_NAMES, SHORT_NAMES
    name = str(record.get("base_model") or "").strip()
    known = name in PRETRAINED_NAMES or name in SHORT_NAMES or name.startswith("tiny")
    return name if known and not record.get("base_model_path") else ""


def check_adapter_base(adapter: AdapterChoice, model: str) -> None:
    """One-line ValueError unless ``model`` (a listed model's value) is the adapter's base."""
    if adapter.base is None:
        base = adapter.base_name or "a base model"
        raise ValueError(f"LoRA adapter {adapter.key} was trained on {base}, which this app does not offer")
    if adapter.base != model:
        raise ValueError(f"LoRA adapter {adapter.key} was trained on base model {adapter.base_name}, "
                         f"not {model}: pick {adapter.base_name} as the model")


def load_with_adapter(name: str, adapter: str, device: tp.Optional[str] = None):
    """``lora.load_with_adapter``: the adapter's weights are read with safetensors (no pickle, so
    nothing in the file can run); a file that is not safetensors is lora.py's one-line ValueError."""
    from ..lora import load_with_adapter
    return load_with_adapter(name, adapter, device=device)


def _one_line(exc) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
