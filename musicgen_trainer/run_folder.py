"""A run folder and its training states: one run per folder, states written atomically and read
without running code, and train.py touching only what it wrote.

``OUT/run.json`` is written when a run starts in a folder and records the run: its id, base
model, creation time, options, and the training states it saved. With it:

- ``train.py --out OUT`` on another run's folder stops before any work (``--resume`` continues
  that run, ``--overwrite`` starts over, another ``--out`` starts a new one);
- ``--resume`` refuses a state of another base model or of options that would make the
  resumed run differ from an uninterrupted one (``RESUME_MUST_MATCH``);
- pruning old states and ``--overwrite`` delete only files the run recorded or that only
  train.py writes in its own sub-folders; a user's own files in OUT are never touched, and a
  foreign file where train.py would write stops the run with one line naming it.
"""
from __future__ import annotations

import json
import os
import random
import re
import secrets
import time
import typing as tp
from pathlib import Path

import numpy as np
import torch

from dataset_tools.atomic import atomic_path

from .checkpoint_io import atomic_torch_save, load_checkpoint
from .export_tokenizer import TOKENIZER_DIR, foreign_tokenizer_files, remove_tokenizer_leftovers, tokenizer_files
from .runtime import resolve_name


# --- training states -----------------------------------------------------------------------

# Full training states on disk: written atomically, read without running code, found again
# for --resume. Which states belong to a run (and so may be pruned) is the run folder's record
# (below), not a file-name pattern.

STATE_FORMAT = "musicgen_trainer.train_state"
STATE_VERSION = 2  # 2: RNG states as plain lists (loads weights-only); 1 pickled numpy arrays
# Optional keys added without a new version (older states load without them): "eval", the
# held-out evaluation's best cross-entropy, its step and the evaluations since (train_eval.py).
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def state_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_states(folder: Path) -> list[Path]:
    """Saved states in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def save_state(folder: Path, step: int, state: dict) -> Path:
    """Write the state for ``step`` (atomically: a crash leaves the previous file or none)."""
    path = state_path(folder, step)
    atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, **state}, path)
    return path


def load_state(path: Path, mmap: bool = False) -> dict:
    """A training state written by train.py; ``CheckpointError``/``ValueError`` (one line) otherwise.
    Loaded weights-only: a state that holds other Python objects is refused, never run.
    ``mmap``: map the file instead of reading it. Every process of a distributed run loads the
    state: mapped, its tens of GB (medium, large) exist once in the page cache instead of once
    per process (the mapping is private: writes to the tensors never reach the file)."""
    state = load_checkpoint(path, "training state", mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training state written by train.py")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} has training-state version {state.get('version')}; "
                         f"this version of train.py reads version {STATE_VERSION}")
    return state


def resolve_resume(resume: tp.Optional[str], own_states: tp.Sequence[Path]) -> tp.Optional[Path]:
    """``auto`` → the newest of the run's own states (None if there is none); a path → that
    file, or the newest ``step_*.pt`` in that folder."""
    if not resume:
        return None
    if resume == "auto":
        return own_states[-1] if own_states else None
    path = Path(resume)
    if path.is_dir():
        states = list_states(path)
        if not states:
            raise ValueError(f"no training state (step_*.pt) in {path}")
        return states[-1]
    if not path.is_file():
        raise ValueError(f"resume checkpoint not found: {path}")
    return path


def rng_state() -> dict:
    """Every RNG's state as tensors and plain numbers/lists, so the state loads weights-only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- run folder ----------------------------------------------------------------------------


RUN_FILE = "run.json"
RUN_FORMAT = "musicgen_trainer.run"
# What train.py writes directly in OUT (a foreign file of one of these names stops a new run).
OWN_ENTRIES = ("config.json", "checkpoints", "tensorboard", "samples", "export", "adapter", "export-best")
BEST_EXPORT = "export-best"  # the export with the lowest held-out cross-entropy (--keep-best)
EXPORT_FILES = ("state_dict.bin", "compression_state_dict.bin", "export_info.json")  # exports.py's names
_PARTIAL = re.compile(r"^\.export-best-[A-Za-z0-9_]+$")  # the temporary folder a new best is written to
CARD_FILE, SAMPLES_DIR = "README.md", "samples"  # an export's model card and its samples (sharing/card_data.py)
SAMPLE_FILE = re.compile(r"^sample_\d{2}\.(wav|png|json)$")  # the card's files in export/samples/
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "extra_weights.safetensors",
                 "musicgen_lora.json")  # OUT/adapter/ of a --lora run (lora.py)
# Options that must be the same to resume: the base model, what is trained, and what decides
# the data order (batches, crops and dropout are drawn from seed, batch size and window).
RESUME_MUST_MATCH = ("model", "freeze", "batch_size", "segment_seconds", "seed",
                     "optimizer",  # its saved state has another layout
                     "lora", "lora_alpha", "lora_targets", "lora_train_heads", "lora_train_condition_proj",
                     "sharding")  # sharded states hold the optimiser keyed by names, unsharded by index
# ... and micro-batches per step, all processes together (grad_accum x processes): step n reads
# micro-batches n*M .. n*M+M-1 whatever the split between processes and accumulation.


class RunFolderError(ValueError):
    """OUT cannot be used for this run; the message says why and what to do (one line)."""


class RunFolder:
    """The run's record in ``OUT/run.json``; create with :func:`claim_run_folder`."""

    def __init__(self, path: Path, record: dict):
        self.path = Path(path)
        self.record = record

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def own_states(self) -> list:
        """The run's saved states that still exist, oldest first."""
        paths = (self.checkpoints_dir / name for name in self.record.get("states", []))
        return sorted((p for p in paths if p.is_file()), key=lambda p: p.name)

    def save_state(self, step: int, state: dict, keep_last: int) -> Path:
        """Write the state for ``step``, record it, and delete the run's own states but the newest ``keep_last``."""
        path = state_path(self.checkpoints_dir, step)
        if path.exists() and path.name not in self.record.get("states", []):
            raise RunFolderError(f"{path} exists and was not written by this run: move it away")
        save_state(self.checkpoints_dir, step, state)
        names = [n for n in self.record.get("states", []) if n != path.name] + [path.name]
        self.record["states"] = names
        self.write()
        for old in self.own_states()[:-keep_last]:
            old.unlink(missing_ok=True)
        self.record["states"] = [p.name for p in self.own_states()]
        self.write()
        return path

    def replace_best_export(self, write: tp.Callable[[Path], None], step: int, valid_ce: float) -> Path:
        """OUT/export-best/ from ``write(folder)`` (which fills a new, empty folder), swapped in only
        once complete: written to a temporary folder in OUT (named in the record first, so a crash
        leaves nothing unaccounted for), then renamed over the previous best. Records the step and
        cross-entropy. ``RunFolderError`` if an export-best/ this run did not write is in the way."""
        best = self.path / BEST_EXPORT
        self.check_best_export_free()
        self.clean_partial_best()
        tmp = self.path / f".export-best-{secrets.token_hex(6)}"  # (mkdtemp's folders are private: 0700)
        previous = self.record.get("best_export")
        self.record["best_export"] = {**(previous if isinstance(previous, dict) else {}), "partial": tmp.name}
        self.write()
        tmp.mkdir()
        write(tmp)
        old = None
        if best.exists():
            old = self.path / f"{tmp.name}_old"
            os.replace(best, old)  # a crash here: clean_partial_best puts it back
        os.replace(tmp, best)
        self.record["best_export"] = {"folder": BEST_EXPORT, "step": int(step), "valid_ce": float(valid_ce)}
        self.write()
        if old is not None:
            _remove_export(old)
        return best

    def check_best_export_free(self) -> None:
        """Refuse an OUT/export-best/ that holds an export this run did not record (one line)."""
        best = self.path / BEST_EXPORT
        if best.is_symlink() or best.exists() and not best.is_dir():
            raise RunFolderError(f"{best} exists and was not written by this run: move it away or choose another --out")
        if not self.record.get("best_export") and any((best / n).exists() for n in EXPORT_FILES):
            raise RunFolderError(f"{best} holds an export that was not written by this run: move it away "
                                 f"(or pass --no-keep-best)")
        # The folder is replaced as a whole by each new best: nothing else may live in it.
        if best.is_dir():
            adapter = best / "adapter"
            others = [p for p in best.iterdir()
                      if p.name not in (*EXPORT_FILES, "adapter", CARD_FILE, SAMPLES_DIR, TOKENIZER_DIR)]
            others += foreign_tokenizer_files(best)
            others += [p for p in adapter.iterdir() if p.name not in ADAPTER_FILES] if adapter.is_dir() else []
            samples = best / SAMPLES_DIR
            others += [p for p in samples.iterdir() if not SAMPLE_FILE.match(p.name)] if samples.is_dir() else []
            if others:
                raise RunFolderError(f"{others[0]} is in {best}, which train.py replaces with each new best "
                                     f"export: move it away (or pass --no-keep-best)")

    def clean_partial_best(self) -> None:
        """Finish what a crash interrupted: the previous best back in place if the swap was cut
        short, the temporary folders' files removed."""
        info = self.record.get("best_export")
        name = info.get("partial") if isinstance(info, dict) else None
        if not isinstance(name, str) or not _PARTIAL.match(name):
            return
        tmp, old, best = self.path / name, self.path / f"{name}_old", self.path / BEST_EXPORT
        if not best.exists() and old.is_dir():
            os.replace(old, best)
        for folder in (tmp, old):
            _remove_export(folder)
        info.pop("partial", None)
        self.write()

    def write(self) -> None:
        with atomic_path(self.path / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")


def claim_run_folder(config, resuming: bool) -> RunFolder:
    """The run folder for ``config`` (``config.out``), checked before any work.

    New folder or one without a run: a new record (refused if a foreign file stands where
    train.py writes). A folder with a run: refused unless ``resuming`` (then the options are
    checked against the run's) or ``config.overwrite`` (then the old run's files are removed).
    Raises ``RunFolderError`` with a one-line message.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder: choose a folder for the run")
    record = read_record(out)
    if record is not None and not record.get("states") and not _has_export(out):
        # A run that stopped before saving anything (a typo in --model, no usable audio, out of
        # memory at the first step) leaves nothing to continue: a new start replaces its record.
        remove_run_outputs(out, record)
        record = None
    if record is not None:
        if getattr(config, "overwrite", False):
            remove_run_outputs(out, record)
            record = None
        elif resuming:
            check_resume(record.get("config") or {}, config, f"the run in {out}")
            return RunFolder(out, record)
        else:
            started = record.get("created", "?")
            raise RunFolderError(
                f"{out} already holds a training run (model {record.get('model')}, started {started}): "
                f"add --resume to continue it, --overwrite to start over, or choose another --out")
    elif resuming and list_states(out / "checkpoints"):
        raise RunFolderError(f"{out} has training states but no {RUN_FILE}: they come from an older version "
                             f"of train.py, which this one cannot resume; choose another --out")
    _refuse_foreign(out)
    record = {"format": RUN_FORMAT, "version": 1, "run_id": secrets.token_hex(8),
              "created": time.strftime("%Y-%m-%d %H:%M:%S"), "model": str(config.model),
              "config": config.to_dict(), "states": []}
    folder = RunFolder(out, record)
    out.mkdir(parents=True, exist_ok=True)
    folder.write()
    return folder


def _has_export(out: Path) -> bool:
    return any((Path(out) / folder / name).exists() for folder in ("export", BEST_EXPORT)
               for name in ("state_dict.bin", "compression_state_dict.bin"))


def _remove_export(folder: Path) -> None:
    """Delete an export folder's own files (the export's and the adapter's), then the folders
    if they are empty: a user's file inside keeps its folder. A link at ``tokenizer/`` or
    ``samples/`` (never written by train.py) is removed as a link: nothing is deleted through it."""
    folder = Path(folder)
    if folder.is_symlink():
        return
    for path in [folder / n for n in EXPORT_FILES] + [folder / "adapter" / n for n in ADAPTER_FILES] + \
            _card_files(folder) + tokenizer_files(folder):
        _unlink_own(path, folder.parent)
    _drop_links(folder)
    for path in (folder / "adapter", folder / SAMPLES_DIR, folder / TOKENIZER_DIR, folder):
        try:
            path.rmdir()
        except OSError:
            pass


def _drop_links(export: Path) -> None:
    """An export's ``tokenizer/`` and ``samples/`` when they are links: the link goes, its target stays;
    and the temporary folders an interrupted tokenizer write left."""
    for name in (TOKENIZER_DIR, SAMPLES_DIR):
        if (export / name).is_symlink():
            (export / name).unlink()
    remove_tokenizer_leftovers(export)


def _unlink_own(path: Path, root: Path) -> None:
    """Delete ``path`` (a name under ``root`` that train.py writes) when it is a regular file reached
    through real folders only: a link anywhere between ``root`` and it (``export/tokenizer`` linked to
    a user's folder) would make the deletion land in someone else's files, so nothing is deleted."""
    path, root = Path(path), Path(root)
    here = root
    for part in path.relative_to(root).parts[:-1]:
        here = here / part
        if here.is_symlink() or not here.is_dir():
            return
    if path.is_file() and not path.is_symlink():
        path.unlink()


def _card_files(export: Path) -> list:
    """The model card of an export folder and its samples (names of ours only)."""
    samples = export / SAMPLES_DIR
    return [export / CARD_FILE] + ([p for p in sorted(samples.iterdir()) if SAMPLE_FILE.match(p.name)]
                                   if samples.is_dir() and not samples.is_symlink() else [])


def read_record(out: Path) -> tp.Optional[dict]:
    path = Path(out) / RUN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path} is damaged ({exc.__class__.__name__}); move the folder away "
                             f"or choose another --out") from None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{path} was not written by train.py; choose another --out")
    states = record.get("states", [])
    # Only plain step_NNNNNNNN.pt names: a crafted record must not make pruning or --overwrite
    # delete "/home/you/x" or "../../x" (the names are joined onto OUT/checkpoints).
    if not isinstance(states, list) or not all(isinstance(n, str) and _NAME.match(n) for n in states):
        raise RunFolderError(f"{path} lists training states that are not step_*.pt files in its checkpoints "
                             f"folder: it was not written by train.py; choose another --out")
    return record


def check_resume_world(saved: dict, config, world: int, what: str) -> None:
    """Refuse a resume whose micro-batches per step (``grad_accum`` x processes) differ."""
    old = int(saved.get("world_size", 1)) * int((saved.get("config") or {}).get("grad_accum", config.grad_accum))
    new = world * config.grad_accum
    if old != new:
        raise RunFolderError(f"cannot resume {what}: it ran {old} micro-batches per step (--grad-accum x "
                             f"processes), this command {new}; use --grad-accum {max(1, old // world)} with "
                             f"{world} process(es) (or start a new run)")


def check_resume(saved: dict, config, what: str) -> None:
    """Refuse to resume ``what`` (saved options ``saved``) with options that do not match."""
    for key in RESUME_MUST_MATCH:
        if key not in saved:
            continue
        old, new = saved[key], getattr(config, key)
        if key == "model":  # a run recorded before names were resolved says "small"
            old, new = resolve_name(old), resolve_name(new)
        if isinstance(old, float) or isinstance(new, float):
            same = old is not None and new is not None and abs(float(old) - float(new)) < 1e-9
        else:
            same = (list(old) if isinstance(old, (list, tuple)) else old) == \
                   (list(new) if isinstance(new, (list, tuple)) else new)
        if not same:
            flag = "--" + key.replace("_", "-")
            raise RunFolderError(f"cannot resume {what}: it was trained with {flag} {_show(old)}, this "
                                 f"command asks for {_show(new)}; resume with the same value, or start "
                                 f"a new run (--overwrite or another --out)")


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def _refuse_foreign(out: Path) -> None:
    """Stop a new run before any work if something not written by this run stands where it
    would write. A user's other files in OUT (or in its sub-folders, under other names) stay."""
    in_the_way = [out / "config.json", out / "metrics.jsonl", out / "export" / "state_dict.bin",
                  out / "export" / "compression_state_dict.bin", out / "export" / "export_info.json"]
    in_the_way += [out / "adapter" / name for name in ADAPTER_FILES]
    in_the_way += [out / BEST_EXPORT / name for name in EXPORT_FILES]
    in_the_way += _card_files(out / "export") + _card_files(out / BEST_EXPORT)
    in_the_way += tokenizer_files(out / "export") + tokenizer_files(out / BEST_EXPORT)
    in_the_way += [out / BEST_EXPORT / "adapter" / name for name in ADAPTER_FILES]
    in_the_way += [p for p in (out / name for name in OWN_ENTRIES[1:]) if p.exists() and not p.is_dir()]
    in_the_way += list_states(out / "checkpoints")
    in_the_way += sorted((out / "samples").glob("step_*")) if (out / "samples").is_dir() else []
    for path in in_the_way:
        if path.exists() or path.is_symlink():
            raise RunFolderError(f"{path} exists and was not written by a run in this folder: "
                                 f"move it away or choose another --out")


def remove_run_outputs(out: Path, record: dict) -> None:
    """--overwrite: delete the previous run's files (only those train.py writes), keep the rest."""
    out = Path(out)
    ours = [out / "checkpoints" / name for name in record.get("states", [])]
    ours += [out / "config.json", out / "metrics.jsonl", out / "export" / "state_dict.bin",
             out / "export" / "compression_state_dict.bin", out / "export" / "export_info.json"]
    ours += _card_files(out / "export") + tokenizer_files(out / "export")
    ours += [out / "adapter" / name for name in ADAPTER_FILES]
    ours += list((out / "tensorboard").glob("events.out.tfevents.*"))
    ours += [p for d in (out / "samples").glob("step_*") for p in d.glob("*.wav")]
    for path in ours:
        _unlink_own(path, out)  # never through a linked folder (globs above follow links)
    if (out / "export").is_dir() and not (out / "export").is_symlink():
        _drop_links(out / "export")
    if record.get("best_export"):  # export-best/ only when the run recorded writing one
        RunFolder(out, record).clean_partial_best()
        _remove_export(out / BEST_EXPORT)
    for folder in [*sorted((out / "samples").glob("step_*")), out / "samples", out / "tensorboard",
                   out / "checkpoints", out / "export" / SAMPLES_DIR, out / "export" / TOKENIZER_DIR, out / "export",
                   out / "adapter"]:
        try:
            folder.rmdir()  # only when empty: a user's file inside keeps its folder
        except OSError:
            pass
    (out / RUN_FILE).unlink(missing_ok=True)
