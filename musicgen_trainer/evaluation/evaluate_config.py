"""The ``evaluate`` command's options (``EvaluateConfig``: each field one flag) and what they
resolve to before any model is loaded: the fine-tune's export and run folder, its base model,
the held-out split, the genre classifier, and the report folder (``claim_report_folder``:
a new or empty folder, or a previous report of ours replaced with ``--overwrite``, which deletes
only the files that report wrote).
"""
from __future__ import annotations

import json
import os
import time
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from dataset_tools.atomic import write_text_atomic
from dataset_tools.cli import option

DEFAULT_CLAP = "laion/larger_clap_music"
NONE = "none"                              # --classifier none / --clap none: skip that measure
RECORD_FILE = "report_files.json"          # the report folder's record: what evaluate wrote there
RECORD_FORMAT = "musicgen_trainer.evaluation_report"


@dataclass
class EvaluateConfig:
    """Every option of ``python -m musicgen_trainer evaluate``: each field one flag."""
    model: str = option(help="the fine-tune: a train.py run folder (its export/; a --lora run's export holds the "
                        "merged weights), or an export folder", metavar="RUN_OR_EXPORT")
    out: str = option(help="report folder: new or empty, or a previous report with --overwrite", metavar="REPORT_DIR")
    data: tp.Optional[str] = option(None, "the prepared dataset (its validation split is the held-out music) "
                                    "(default: the --data the run trained on, from its config.json)",
                                    metavar="PREPARED")
    base: tp.Optional[str] = option(None, "the model to compare with (default: the base recorded in the export "
                                    "or the run's config.json)", metavar="MODEL")
    classifier: tp.Optional[str] = option(None, "genre classifier folder (python -m genre_classifier train) (default: "
                                          "the dataset's own, checkpoints/genre-<DATA name> beside it or in the current "
                                          "folder, else DATA/../genre-classifier when it was trained on DATA; without "
                                          "one the genre figures are skipped with a note)", metavar="DIR",
                                          const_flags={"--no-classifier": (NONE, "skip the genre figures")})
    clips_per_genre: int = option(8, "generated clips per genre and model", metavar="N")
    duration: float = option(10.0, "seconds per generated clip (the real held-out clips are cut to it)", metavar="S")
    generic_prompt: str = option("music", "prompt of the unconditional-ish clips, without genre words ('' for no "
                                 "text at all)", metavar="TEXT")
    generic_clips: int = option(2, "clips per model from --generic-prompt (0: none)", metavar="N")
    seed: int = option(0, "seed of the generation (clip i gets seed + i, the same for both models) and of the "
                       "bootstrap and blind order")
    clap: str = option(DEFAULT_CLAP, "CLAP model for text-audio scores and CLAP FAD: a local folder or a hub name "
                       "already in the Hugging Face cache (never downloaded; absent: a note), 'none' to skip, "
                       "'tiny' for a random test model", metavar="NAME")
    valid_fraction: tp.Optional[float] = option(None, "held-out share of tracks for datasets without a split of "
                                                "their own (default: the run's --valid-fraction, else 0.1)")
    split_seed: tp.Optional[int] = option(None, "seed of that split (default: the run's --seed, else 0)")
    cache_dir: tp.Optional[str] = option(None, "code cache (default: the run's --cache-dir, else "
                                         "~/.cache/musicgen-finetune/codes)", metavar="DIR")
    batch_size: int = option(8, "clips generated per batch", metavar="N")
    device: tp.Optional[str] = option(None, "cpu or cuda (default: cuda when available)")
    overwrite: bool = option(False, "replace the previous report in --out (deletes only the files it wrote)")
    progress: bool = option(True, "progress bars")

    def __post_init__(self):
        checks = [(self.clips_per_genre >= 1, f"--clips-per-genre must be at least 1, got {self.clips_per_genre}"),
                  (0 < self.duration <= 30, f"--duration must be more than 0 and at most 30 s, got {self.duration:g}"),
                  (self.generic_clips >= 0, f"--generic-clips must be 0 or more, got {self.generic_clips}"),
                  (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
                  (0 <= self.seed < 2 ** 63, f"--seed must be between 0 and 2**63 - 1, got {self.seed}"),
                  (self.valid_fraction is None or 0 < self.valid_fraction < 1,
                   f"--valid-fraction must be between 0 and 1, got {self.valid_fraction}"),
                  (bool(str(self.model).strip()), "--model is required: a run folder or an export folder"),
                  (bool(str(self.out).strip()), "--out is required: the report folder")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# --- what the options resolve to -------------------------------------------------------------

@dataclass
class Inputs:
    """The fine-tune, its base and the held-out split, resolved from an ``EvaluateConfig``."""
    export: Path                      # the fine-tune's export folder
    run: tp.Optional[Path]            # its run folder, when it is inside one
    run_config: dict                  # the run's config.json (empty when not found)
    base: str                         # what load_model loads as the base
    base_source: str                  # how it was chosen
    data: Path
    valid_fraction: float
    split_seed: int
    split_source: str                 # where those two came from
    cache_dir: tp.Optional[str]
    window_seconds: float             # the training window (held-out CE's crop)
    precision: str                    # the run's precision (autocast of the held-out CE on GPU)
    batch_size: int = 4               # the run's micro-batch: validation batched as training did (T5 pads per batch)
    trained_on: tp.Optional[Path] = None  # the dataset the run read, found from here (None: not recorded or gone)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _manifest_split(data: Path) -> bool:
    """True when the dataset's manifest gives each clip its split (dataset_tools prepare writes
    one): training then used it, whatever its --valid-fraction and --seed."""
    from ..data import MANIFEST_NAMES
    manifest = data if data.is_file() else next((data / n for n in MANIFEST_NAMES if (data / n).is_file()), None)
    try:
        with open(manifest, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (TypeError, OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("split") in ("train", "valid")


def resolve_model(model: str) -> tp.Tuple[Path, tp.Optional[Path]]:
    """(export folder, run folder or None) for ``--model``: a run folder (its ``export/``), an
    export folder (``RUN/export`` or ``RUN/export-best``: its run is the parent when the parent holds a
    ``config.json``), or a LoRA adapter folder (its run's merged export). ValueError (one line) otherwise."""
    from ..exports import is_export

    path = Path(model).expanduser()
    if not path.is_dir():
        raise ValueError(f"--model {model}: no such folder (give a train.py run folder or an export folder)")
    from ..run_folder import BEST_EXPORT

    def run_of(export: Path) -> tp.Optional[Path]:  # RUN/export and RUN/export-best belong to RUN
        parent = export.parent
        return parent if export.name in ("export", BEST_EXPORT) and (parent / "config.json").is_file() else None

    if is_export(path):
        return path, run_of(path)
    if is_export(path / "export"):
        return path / "export", path
    if (path / "musicgen_lora.json").is_file():  # RUN/adapter -> RUN/export; RUN/export-best/adapter -> export-best
        for export in (path.parent, path.parent / "export"):
            if is_export(export):
                return export, run_of(export)
    raise ValueError(f"--model {model} is neither a run folder with an export/ nor an export folder "
                     f"(state_dict.bin + compression_state_dict.bin); has the run finished?")


# --- paths a run records: relative to the folder train.py ran in, wherever evaluate runs ---------

WORKING_FOLDER = "working_folder"  # config.json: the folder train.py ran in (finetune.py records it)


def training_folders(run: tp.Optional[Path], run_config: dict) -> tp.List[Path]:
    """The folders a relative path in the run's ``config.json`` (``--model``, ``--data``,
    ``--cache-dir``, as typed) may be relative to, in order: the folder train.py recorded
    (``working_folder``: with it the path is the very one train.py read), then the folder train.py
    ran in as the run folder's place tells it (the run folder is that folder + the recorded relative
    ``--out``: right after the whole project moved, when the recorded folder is gone). Recorded first
    because a run copied into another project would otherwise take that project's same-named dataset
    or base. A run that records none (trained before it was recorded) adds the current folder last."""
    folders: tp.List[Path] = []
    working = run_config.get(WORKING_FOLDER)
    recorded_working = isinstance(working, str) and Path(working).is_absolute()
    if recorded_working:
        folders.append(Path(working))
    out = run_config.get("out")
    if run is not None and isinstance(out, str) and out.strip():
        recorded = Path(out).expanduser()
        parts = [p for p in recorded.parts if p != "."]
        if parts and not recorded.is_absolute() and ".." not in parts:
            for here in (Path(os.path.abspath(run)), Path(os.path.realpath(run))):
                if len(here.parts) > len(parts) and list(here.parts[-len(parts):]) == parts:
                    folders.append(here.parents[len(parts) - 1])
    if run is not None and not recorded_working:
        folders.append(Path.cwd())
    return list(dict.fromkeys(folders))


def recorded_path(value: str, run: tp.Optional[Path], run_config: dict
                  ) -> tp.Tuple[tp.Optional[Path], tp.List[Path]]:
    """(the existing path a run's recorded ``value`` names, or None; every place looked at)."""
    path = Path(value).expanduser()
    tried = [path] if path.is_absolute() else [folder / path for folder in training_folders(run, run_config)]
    return next((p for p in tried if p.exists()), None), tried


def _not_found(what: str, value: str, tried: tp.Sequence[Path], flag: str) -> ValueError:
    where = " or ".join(str(p) for p in tried[:3]) or "nowhere: the run does not say where train.py ran"
    relative = "" if Path(value).expanduser().is_absolute() else ", relative to the folder train.py ran in"
    return ValueError(f"{what}, {value} (the run's config.json{relative}), is not found at {where}: give {flag}")


def recorded_base(value: str, export_base: str, run: tp.Optional[Path], run_config: dict) -> str:
    """The run's ``--model`` as ``load_model`` should get it from here: a local folder as the
    absolute path train.py read (``recorded_path``), a hub or built-in name as it is. A folder
    that is gone is ValueError (one line) rather than a guess (a same-named folder of the current
    folder, or a hub download): so is a name found nowhere that is neither built in nor a hub id
    (``--model mybase`` was a folder where train.py ran). ``export_base``: the export's record (a
    local base by its last name: the sign that it was a folder when train.py read it)."""
    from ..models import is_builtin_name, is_hub_name

    if is_builtin_name(value):
        return value  # tiny, tiny:SEED, tiny-melody, tiny-stereo, random:SIZE: load_model builds them, never folders
    found, tried = recorded_path(value, run, run_config)
    if found is not None:
        return str(found)
    local = (Path(value).expanduser().is_absolute() or value.startswith((".", "~"))
             or bool(export_base) and export_base == Path(value).name != value)
    if not local and is_hub_name(value):
        return value  # a hub name (or a released short one: small, melody...)
    raise _not_found("the base model the run trained from", value, tried, "--base")


def resolve_inputs(config: EvaluateConfig) -> Inputs:
    """Everything the options point to, checked before any model is loaded (ValueError, one line).

    Paths given to evaluate are the user's (relative to the current folder); those read from the
    run's ``config.json`` are found from the run folder (``training_folders``), whatever the
    current folder."""
    from dataset_tools.dataset_format import SEGMENT_SECONDS

    from ..exports import export_info

    export, run = resolve_model(config.model)
    run_config = _read_json(run / "config.json") if run else {}
    recorded_model = run_config.get("model") if isinstance(run_config.get("model"), str) else None
    export_base = export_info(export).base_model
    if config.base:
        base, source = str(config.base), "--base"
    elif recorded_model and export_base and export_base in (recorded_model, Path(recorded_model).name):
        # the export names a local base folder by its last name only (exports get pushed); its run has the path
        base, source = recorded_base(recorded_model, export_base, run, run_config), "recorded in the run's config.json"
    elif export_base:
        base, source = export_base, "recorded in the export"
    elif recorded_model:
        base, source = recorded_base(recorded_model, export_base, run, run_config), "recorded in the run's config.json"
    else:
        raise ValueError(f"{export} records no base model (no export_info.json base_model, no run config.json): "
                         f"give --base, e.g. --base facebook/musicgen-small")
    resolved, missing = {}, {}  # run_config stays as train.py wrote it; what its paths name from here:
    for name in ("data", "cache_dir"):  # what evaluate reads from the record: found from the run folder
        if isinstance(run_config.get(name), str) and run_config[name]:
            found, tried = recorded_path(run_config[name], run, run_config)
            if found is None:
                missing[name] = tried
                # a cache not made yet: where train.py made it, in a folder that is still there
                value = Path(run_config[name]).expanduser()
                here = [f / value for f in training_folders(run, run_config) if f.is_dir()]
                found = value if value.is_absolute() else next(iter(here + tried), None)
            if found is not None:
                resolved[name] = found
    trained_on = None if "data" in missing else resolved.get("data")
    if config.data:
        data = Path(config.data).expanduser()
    elif "data" in missing:
        raise _not_found("the dataset the run trained on", run_config["data"], missing["data"], "--data")
    elif trained_on is not None:
        data = trained_on
    else:
        raise ValueError("--data is required: the prepared dataset (the run's config.json, which would name it, "
                         "was not found)")
    if not data.exists():
        raise ValueError(f"--data {data}: not found")
    valid_fraction = config.valid_fraction if config.valid_fraction is not None else \
        float(run_config.get("valid_fraction", 0.1))
    split_seed = config.split_seed if config.split_seed is not None else int(run_config.get("seed", 0))
    if _manifest_split(data):
        split_source = "the split recorded in its manifest (dataset_tools prepare), as training read it"
    elif config.valid_fraction is not None or config.split_seed is not None:
        split_source = "the --valid-fraction/--split-seed given"
    elif run_config:
        split_source = "the run's own --valid-fraction and --seed"
    else:
        split_source = "the defaults (the run's config.json was not found)"
    if not _manifest_split(data) and not 0 < valid_fraction < 1:  # a manifest's split is used as it is
        raise ValueError(f"the run trained with --valid-fraction {valid_fraction:g}: it held no music out, so "
                         f"there is nothing it was not trained on to compare with; give --valid-fraction "
                         f"(and --data) for a dataset it never saw")
    return Inputs(export=export, run=run, run_config=run_config, base=base, base_source=source, data=data,
                  valid_fraction=valid_fraction, split_seed=split_seed, split_source=split_source,
                  cache_dir=config.cache_dir or (str(resolved["cache_dir"]) if "cache_dir" in resolved else None),
                  trained_on=trained_on,
                  window_seconds=float(run_config.get("segment_seconds") or SEGMENT_SECONDS),
                  batch_size=int(run_config.get("batch_size") or 4),
                  precision=str(run_config.get("precision_used") or "fp32"))


def find_classifier(config: EvaluateConfig, data: Path) -> tp.Tuple[tp.Optional[Path], str]:
    """(classifier folder or None, a note saying where it came from or why there is none)."""
    from genre_classifier.model_folder import INFO_FILE, classifier_for_dataset

    if config.classifier == NONE:
        return None, "Genre figures skipped (--no-classifier)."
    if config.classifier:
        folder = Path(config.classifier).expanduser()
        if not (folder / INFO_FILE).is_file():
            raise ValueError(f"--classifier {folder}: not a genre classifier folder (no {INFO_FILE})")
        return folder, f"Genre classifier: {folder} (--classifier)."
    folder = classifier_for_dataset(data)
    if folder is not None:
        return folder, f"Genre classifier: {folder} (found beside the dataset)."
    name = data.resolve().name
    parent = data.parent if data.name else data.resolve().parent  # "dataset" -> ".", shown as typed
    return None, ("No genre classifier was given or found beside the dataset (checkpoints/genre-"
                  f"{name}, or a genre-classifier/ next to it trained on it): genre figures skipped; train one with "
                  f"python -m genre_classifier train {data} --out {parent / 'checkpoints' / f'genre-{name}'}.")


def classifier_overlap_note(classifier_dir: Path, data: Path, real_clips) -> tp.Optional[str]:
    """A note when real held-out clips were among the genre classifier's training files (its
    split.json names them relative to the dataset it trained on): its ceiling is then optimistic."""
    from genre_classifier.model_folder import SPLIT_FILE
    try:
        split = json.loads((Path(classifier_dir) / SPLIT_FILE).read_text(encoding="utf-8"))
        trained = {f["path"] for t in split.get("train") or [] for f in t.get("files") or []}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    root = Path(data).resolve()
    seen = [c for c in real_clips if c.path.resolve().is_relative_to(root)
            and c.path.resolve().relative_to(root).as_posix() in trained]
    if not seen:
        return None
    return (f"{len(seen)} of the {len(real_clips)} real held-out clips were among the genre classifier's own "
            f"training files: its accuracy on them (the ceiling) is optimistic.")


# --- the report folder: tools touch only what they wrote -------------------------------------

def _record(folder: Path) -> tp.Optional[dict]:
    record = _read_json(folder / RECORD_FILE)
    return record if record.get("format") == RECORD_FORMAT else None


def _own_files(folder: Path, record: dict) -> tp.List[Path]:
    """The files a previous report recorded, inside ``folder`` only (a crafted record naming
    ``../x`` or ``/home/you/x`` deletes nothing)."""
    root = os.path.realpath(folder)
    out = []
    for name in record.get("files") or []:
        if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts:
            continue
        path = folder / name
        if not path.is_symlink() and os.path.commonpath([root, os.path.realpath(path)]) == root:
            out.append(path)
    return out


def claim_report_folder(out: tp.Union[str, Path], overwrite: bool) -> Path:
    """``out`` made ready for a report, before any work: created if new; an empty folder is used;
    a previous report of ours is refused unless ``overwrite``, which deletes only the files that
    report recorded (and then empty sub-folders); anything else non-empty is refused."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file: give a folder for the report")
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    record = _record(folder) if entries else None
    if entries and record is None:
        raise ValueError(f"--out {folder} is not empty and holds no evaluation report ({entries[0]}, ...): "
                         f"choose a new or empty folder")
    if record is not None:
        if not overwrite:
            raise ValueError(f"--out {folder} holds a report from {record.get('created', '?')}: pass --overwrite to "
                             f"replace it (deletes only its files) or choose another folder")
        for path in _own_files(folder, record):
            if path.is_file():
                path.unlink()
        for sub in sorted({p.parent for p in _own_files(folder, record)}, key=lambda p: -len(p.parts)):
            while sub != folder and sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
                sub = sub.parent
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder, [])
    return folder


def write_record(folder: Path, files: tp.Sequence[tp.Union[str, Path]]) -> None:
    """Record the files the report wrote (relative to ``folder``), the record itself included."""
    names = sorted({Path(os.path.relpath(Path(f), folder)).as_posix() if Path(f).is_absolute() else
                    Path(f).as_posix() for f in files} | {RECORD_FILE})
    write_text_atomic(folder / RECORD_FILE, json.dumps(
        {"format": RECORD_FORMAT, "version": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "files": names},
        indent=2) + "\n")
