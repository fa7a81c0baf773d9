"""The Train tab's backend (no Gradio): fine-tune runs started, stopped and resumed from the page.

A run is ``train.py`` itself (``python -m musicgen_trainer.cli_train``) as a job of its run
folder ``checkpoints/<run name>`` (app/jobs.py): it outlives the page, one run per folder, its
log in the folder. Stop is Ctrl-C (train.py saves a resumable state at the last completed step
and exits 130); Resume builds the command again from the run's ``config.json``, validated as a
start is, with ``--resume`` (a command line stored in the folder is never run). What the page
shows is read from the run folder only: ``metrics.jsonl`` (the curve, tokens/s, ETA), ``config.json``
(total steps), ``samples/step_*`` and the job's status and log.

Every name from the page is confined (app/paths.py): the dataset to the data root, the run to
the checkpoints folder (a plain name, one folder deep); the base model must be one the page
lists. The memory estimate before starting is arithmetic on the architecture (planner.py's
``released_facts`` for released models; the tiny models are built, which takes a moment): it
never loads released weights.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import typing as tp
from pathlib import Path

from ..metrics_log import METRICS_FILE, read_metrics
from ..optimizers import OPTIMIZERS
from ..train_config import TrainConfig
from . import jobs
from .paths import OutsideRootError, confined, is_regular_file, list_folders, public, read_json_record

# The options the page sets (widgets, labels and help derive from these TrainConfig fields).
PAGE_OPTIONS = ("steps", "lr", "batch_size", "segment_seconds", "lora", "gpu_memory", "sample_every", "eval_every")
# ... and their page defaults where TrainConfig's are for a long run on a GPU (0 for the optional
# ones means "not set": full fine-tuning, no memory plan).
PAGE_DEFAULTS = {"steps": 1000, "lr": 1e-5, "batch_size": 4, "segment_seconds": 10.0, "lora": 0, "gpu_memory": 0,
                 "sample_every": 200, "eval_every": 200}
TINY_MODELS = ("tiny", "tiny-stereo", "tiny-melody")
MANIFEST_NAMES = ("manifest.jsonl", "data.jsonl")  # what makes a folder a prepared dataset (data.py)
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CLASSIFIER_PREFIX = "genre-"  # Tag's classifiers train into checkpoints/genre-<dataset>: not a run's name
# Options a memory plan (--gpu-memory) decides besides the page's: a resume passes them as the plan
# chose them (config.json records the planned values), not the GPU size again.
PLAN_OPTIONS = ("grad_accum", "optimizer", "activation_checkpointing")
DATASET_DEPTH = 3  # folders under the data root searched for prepared datasets
MAX_SAMPLES = 6    # sample clips shown (the newest step's)
ETA_WINDOW = 20    # logged steps the ETA's pace is measured over


def field_help(name: str) -> str:
    """A TrainConfig option's help text (what train.py --help says)."""
    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}[name]
    return (meta.get("cli") or {}).get("help", "").replace("%%", "%")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- what the page lists ---------------------------------------------------------------------

def base_model_choices(app) -> tp.List[tp.Tuple[str, str]]:
    """``(label, key)``: the page's models (fine-tunes under checkpoints, tiny, released names)
    and the other tiny variants."""
    choices = app.dropdown_choices()
    keys = {key for _, key in choices}
    extra = [(f"{name} (random weights, for testing)", name) for name in TINY_MODELS if name not in keys]
    return choices + extra


def model_value(app, key: str) -> str:
    """What train.py's --model gets for a listed key; ValueError (one line) for anything else."""
    if key in TINY_MODELS:
        return key
    value = app.value_of(key) if isinstance(key, str) else None
    if value is None:
        raise ValueError("choose a base model from the list")
    return value


def prepared_datasets(data_root) -> tp.List[str]:
    """Folders under the data root (relative names) that hold a prepared dataset (a manifest)."""
    if data_root is None:
        return []
    root = Path(data_root)
    return [rel for rel in list_folders(root, depth=DATASET_DEPTH)
            if any((confined(root, rel) / name).is_file() for name in MANIFEST_NAMES)]


def dataset_folder(app, relative: str) -> Path:
    if app.data_root is None:
        raise ValueError("the app has no data root (--data-root)")
    folder = confined(app.data_root, relative or "", must_exist=True)
    if not relative or not any((folder / name).is_file() for name in MANIFEST_NAMES):
        raise ValueError(f"{relative or '.'!r} is not a prepared dataset (no manifest.jsonl): prepare it first "
                         f"(Data tab)")
    return folder


def run_folder(app, name: str) -> Path:
    """``checkpoints/<name>`` for a plain run name (letters, digits, . _ -); ValueError otherwise."""
    name = (name or "").strip()
    if not RUN_NAME.match(name) or name in (".", ".."):
        raise OutsideRootError("a run name is one folder name: letters, digits, '.', '_' and '-' (at most 64)")
    if name.lower().startswith(CLASSIFIER_PREFIX):
        raise ValueError(f"run names starting with {CLASSIFIER_PREFIX!r} are the Tag tab's classifiers: choose another")
    if not app.checkpoints:
        raise ValueError("the app has no checkpoints folder (--checkpoints)")
    return confined(app.checkpoints, name)


def list_runs(app) -> tp.List[str]:
    """Run names under checkpoints: folders with a training run or a training job (newest first)."""
    if not app.checkpoints or not Path(app.checkpoints).is_dir():
        return []
    runs = []
    for name in list_folders(app.checkpoints):
        if name.lower().startswith(CLASSIFIER_PREFIX):
            continue  # a classifier the Tag tab trained
        folder = confined(app.checkpoints, name)
        if (folder / "run.json").is_file() or (folder / jobs.JOB_FILE).is_file():
            runs.append((_mtime(folder), name))
    return [name for _, name in sorted(runs, reverse=True)]


def running_run(app) -> tp.Optional[str]:
    """The run whose training job is running now (the newest such), for a page that reattaches."""
    for name in list_runs(app):
        info = jobs.job_status(confined(app.checkpoints, name))
        if info is not None and info.running and info.kind == "train":
            return name
    return None


# --- start, stop, resume ---------------------------------------------------------------------

def build_config(app, model_key: str, dataset: str, run_name: str, options: tp.Dict[str, tp.Any],
                 planned: tp.Optional[tp.Dict[str, tp.Any]] = None) -> TrainConfig:
    """The run's TrainConfig from the page's choices (validated: ValueError with one line);
    ``planned``: the PLAN_OPTIONS a memory plan chose (a resume of a --gpu-memory run)."""
    values = {}
    for name in PAGE_OPTIONS:
        value = options.get(name, PAGE_DEFAULTS[name])
        if name in ("lora", "gpu_memory") and (value is None or float(value) <= 0):
            value = None  # 0 on the page: not set
        elif name in ("steps", "batch_size", "lora", "sample_every", "eval_every"):
            value = int(value)
        else:
            value = float(value)
        values[name] = value
    # a point of the curve every step of a short run, at most every 10 steps of a long one
    log_every = max(1, min(10, values["steps"] // 100))
    values.update(_plan_values(planned or {}))
    return TrainConfig(data=str(dataset_folder(app, dataset)), model=model_value(app, model_key),
                       out=str(run_folder(app, run_name)), log_every=log_every,
                       eval_classifier=classifier_option(app, dataset),
                       sample_seconds=min(TrainConfig.sample_seconds, 2 * values["segment_seconds"]), **values)


def classifier_option(app, dataset: str) -> str:
    """``--eval-classifier`` of a run on ``dataset``: the Tag tab's classifier of it when there is
    one (named by ``--eval-classifier auto``'s own rule, but under the app's checkpoints folder, which
    the job's working folder need not hold), ``none`` when that folder holds another dataset's (of the
    same folder name), else ``auto``."""
    from .studio_tag import OtherDatasetsClassifier, classifier_folder
    try:
        folder = classifier_folder(app.checkpoints, dataset, root=app.data_root)
    except OtherDatasetsClassifier:
        return "none"
    except ValueError:
        return "auto"
    return str(folder) if is_regular_file(folder / "classifier.json") else "auto"


def _plan_values(planned: tp.Dict[str, tp.Any]) -> tp.Dict[str, tp.Any]:
    values = {}
    if "grad_accum" in planned:
        accum = planned["grad_accum"]
        if isinstance(accum, bool) or not isinstance(accum, int) or not 1 <= accum <= 4096:
            raise ValueError("grad_accum must be a whole number from 1")
        values["grad_accum"] = accum
    if "optimizer" in planned:
        if planned["optimizer"] not in OPTIMIZERS:
            raise ValueError("optimizer is not one train.py knows")
        values["optimizer"] = planned["optimizer"]
    if "activation_checkpointing" in planned:
        if not isinstance(planned["activation_checkpointing"], bool):
            raise ValueError("activation_checkpointing must be true or false")
        values["activation_checkpointing"] = planned["activation_checkpointing"]
    return values


def train_argv(config: TrainConfig) -> tp.List[str]:
    """train.py's command line for ``config`` (the page's options; train.py's defaults otherwise)."""
    argv = [sys.executable, "-m", "musicgen_trainer.cli_train", "--data", config.data, "--model", config.model,
            "--out", config.out]
    for name in PAGE_OPTIONS:
        value = getattr(config, name)
        if value is not None:
            argv += [flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
    defaults = TrainConfig(data="x")
    for name in PLAN_OPTIONS:  # set only by a resume of a planned run: a new run's are train.py's defaults
        value = getattr(config, name)
        if value != getattr(defaults, name):
            argv += [flag(name)] if value is True else [f"--no-{name.replace('_', '-')}"] if value is False \
                else [flag(name), str(value)]
    if config.eval_classifier != "auto":  # the Tag tab's classifier of the dataset (classifier_option)
        argv += ["--eval-classifier", config.eval_classifier]
    argv += ["--log-every", str(config.log_every)]
    if config.sample_every:  # short samples: the page shows them as they appear
        argv += ["--sample-seconds", f"{config.sample_seconds:g}"]
    return argv


def _cwd() -> str:
    """Where the job runs: the folder that holds this package (a source checkout or site-packages)."""
    return str(Path(__file__).resolve().parents[2])


def start_training(app, model_key: str, dataset: str, run_name: str, options: tp.Dict[str, tp.Any]) -> jobs.JobInfo:
    """Start a new run (JobBusyError when one runs in that folder already; ModelUnavailableError,
    one line, for a released model that is neither downloaded nor downloadable here)."""
    from ..models import ModelUnavailableError, unavailable_reason
    config = build_config(app, model_key, dataset, run_name, options)
    reason = unavailable_reason(config.model)  # a released model not downloaded: say so now, not in a log
    if reason:
        raise ModelUnavailableError(reason)
    out = Path(config.out)
    if (out / "run.json").is_file():
        _busy(out)
        raise ValueError(f"run {run_name!r} exists already: resume it, or choose another run name")
    return jobs.start_job("train", train_argv(config), out, cwd=_cwd())


def resume_training(app, run_name: str, steps: tp.Optional[int] = None) -> jobs.JobInfo:
    """Continue a stopped run with ``--resume`` (and ``--steps steps`` when given: a run can be
    continued past its first goal; its other options stay the same).

    The command is built again from the run's recorded options (``config.json``), validated as a
    start is: the dataset confined to the data root, the model one the page lists, ``--out`` this
    run's folder. A stored command line is never run (a copied run folder could hold any).
    """
    out = run_folder(app, run_name)
    info = jobs.job_status(out)
    if not is_regular_file(out / "run.json"):
        raise ValueError(f"run {run_name!r} has nothing to resume: start it first")
    _busy(out)
    if info is None or info.kind != "train":
        raise ValueError(f"run {run_name!r} was not started from this page: resume it with train.py --resume")
    config = resume_config(app, run_name, steps)
    return jobs.start_job("train", train_argv(config) + ["--resume"], out, cwd=_cwd())


def resume_config(app, run_name: str, steps: tp.Optional[int] = None) -> TrainConfig:
    """The TrainConfig a resume of ``run_name`` runs, from its ``config.json`` (ValueError, one
    line, when what it records is not something the page could have started)."""
    out = run_folder(app, run_name)
    record = read_json_record(out / "config.json")
    refuse = f"run {run_name!r} cannot be resumed from the page"
    if record is None:
        raise ValueError(f"{refuse}: its config.json is missing or unreadable")
    try:
        data, model = record.get("data"), record.get("model")
        if not isinstance(data, str) or not isinstance(model, str) or app.data_root is None:
            raise ValueError("its dataset or model is not recorded")
        try:
            relative = public(app.data_root, data)
        except ValueError:
            raise ValueError("its dataset is not under this app's data root") from None
        if model in TINY_MODELS:
            key = model
        elif model in app.by_value:
            key = app.key_of(model)
        else:
            raise ValueError("its base model is not one the page lists")
        options = {}
        for name in PAGE_OPTIONS:
            value = record.get(name)
            if value is None:
                value = 0 if name in ("lora", "gpu_memory") else PAGE_DEFAULTS[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"its {name} is not a number")
            options[name] = value
        planned = {}
        if options["gpu_memory"]:  # the plan's choices are recorded: pass them, not the GPU size again
            options["gpu_memory"] = 0
            planned = {name: record[name] for name in PLAN_OPTIONS if name in record}
        if steps is not None and int(steps) >= 1:
            options["steps"] = int(steps)
        return build_config(app, key, relative, run_name, options, planned)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{refuse}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _busy(out: Path) -> None:
    info = jobs.job_status(out)
    if info is not None and info.running:
        raise jobs.JobBusyError(f"{info.kind} is already running in this run: wait for it or stop it first")


STOP_ALREADY_ASKED = ("Stop was already asked: the run finishes its step, saves it and stops by itself "
                      "(Resume continues from there)")


def stop_training(app, run_name: str) -> str:
    """Ctrl-C to the run's job: it finishes its step, saves its state, and stops (exit 130).
    Returns what happened for the page: "stopping", "already" (a stop was asked before: not
    signalled again, since a second Ctrl-C abandons the step and its save) or "" (nothing runs)."""
    out = run_folder(app, run_name)
    info = jobs.job_status(out)
    if info is not None and info.running and info.stop_asked:
        return "already"
    return "stopping" if jobs.stop_job(out) else ""


# --- what the page shows -------------------------------------------------------------------

@dataclasses.dataclass
class RunView:
    state: str = ""                  # the job's: running, done, stopped, failed, lost ("" without a job)
    step: int = 0
    total: int = 0
    rows: tp.List[dict] = dataclasses.field(default_factory=list)  # metrics.jsonl
    tokens_per_s: tp.Optional[float] = None
    eta_s: tp.Optional[float] = None
    samples: tp.List[Path] = dataclasses.field(default_factory=list)
    sample_step: int = 0
    log: str = ""

    def summary(self) -> str:
        """One line: state, step of total, last losses, tokens/s, ETA."""
        if not self.state and not self.rows:
            return "No run yet: choose a base model, a prepared dataset and a run name, then Start."
        parts = [f"**{self.state or 'not started from the page'}**"]
        if self.total:
            parts.append(f"step {self.step} of {self.total}")
        last = self.rows[-1] if self.rows else {}
        if last.get("loss") is not None:
            parts.append(f"loss {last['loss']:.3f}")
        valid = [r["valid_loss"] for r in self.rows if r.get("valid_loss") is not None]
        if valid:
            parts.append(f"validation loss {valid[-1]:.3f}")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:,.0f} tokens/s")
        if self.eta_s is not None and self.state == "running":
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        if self.state == "stopped":
            parts.append("stopped: Resume continues from the saved step")
        errors = [line for line in self.log.splitlines() if line.startswith("error: ")]
        if self.state == "failed" and errors:
            parts.append(errors[-1])
        return " · ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def eta_seconds(rows: tp.Sequence[dict], total: int) -> tp.Optional[float]:
    """Seconds left at the recent pace (the last ``ETA_WINDOW`` logged steps); None when unknown."""
    timed = [r for r in rows if isinstance(r.get("elapsed"), (int, float))][-ETA_WINDOW:]
    if len(timed) < 2 or not total:
        return None
    steps = timed[-1]["step"] - timed[0]["step"]
    seconds = timed[-1]["elapsed"] - timed[0]["elapsed"]
    if steps <= 0 or seconds < 0:
        return None
    return max(0, total - timed[-1]["step"]) * seconds / steps


def view_run(app, run_name: str) -> RunView:
    """Everything the page shows of a run, read from its folder (cheap: polled every few seconds)."""
    out = run_folder(app, run_name)
    view = RunView()
    info = jobs.job_status(out)
    if info is not None:
        view.state = info.state
        if not (out / jobs.LOG_FILE).is_symlink():  # files the run wrote, not links to elsewhere
            view.log = public_log(app, jobs.read_log(out, max_bytes=8192), out, run_name)
    view.rows = read_metrics(out / METRICS_FILE) if not (out / METRICS_FILE).is_symlink() else []
    view.step = view.rows[-1]["step"] if view.rows else 0
    record = read_json_record(out / "config.json")  # bounded, no link, no FIFO or device
    total = (record or {}).get("total_steps")
    view.total = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else 0
    speeds = [r["tokens_per_s"] for r in view.rows[-ETA_WINDOW:] if r.get("tokens_per_s")]
    view.tokens_per_s = sum(speeds) / len(speeds) if speeds else None
    view.eta_s = eta_seconds(view.rows, view.total)
    view.samples, view.sample_step = newest_samples(out)
    return view


def newest_samples(out: Path) -> tp.Tuple[tp.List[Path], int]:
    """The clips of the newest ``samples/step_*`` folder with clips written, and its step: real
    folders inside the run and regular files only (a link anywhere on the way is left out)."""
    samples = out / "samples"
    if samples.is_symlink() or not samples.is_dir():
        return [], 0
    steps = sorted(p for p in samples.glob("step_*")
                   if not p.is_symlink() and p.is_dir() and re.fullmatch(r"step_\d{1,12}", p.name))
    for folder in reversed(steps):  # the newest step with its clips written
        wavs = sorted(p for p in folder.glob("*.wav") if is_regular_file(p))
        if wavs:
            return wavs[:MAX_SAMPLES], int(folder.name.split("_")[-1])
    return [], 0


def public_log(app, text: str, out: Path, run_name: str) -> str:
    """A job's log as the page may show it: the run folder, the roots and the interpreter named,
    not spelled out as server paths."""
    names = [(out, run_name), (Path(sys.executable), "python")]
    if app.data_root is not None:
        names.append((Path(app.data_root), Path(app.data_root).name or "datasets"))
    for path, name in names:
        for spelled in sorted({str(path), str(path.absolute()), str(path.resolve())}, key=len, reverse=True):
            if len(spelled) > 1:
                text = text.replace(spelled, name)
    return app.public_text(text)


def curve(rows: tp.Sequence[dict]) -> tp.List[dict]:
    """The plot's points: ``{"step", "loss", "series"}`` with series "training" and "validation"."""
    points = []
    for row in rows:
        if row.get("loss") is not None and math.isfinite(row["loss"]):
            points.append({"step": row["step"], "loss": row["loss"], "series": "training"})
        if row.get("valid_loss") is not None:
            points.append({"step": row["step"], "loss": row["valid_loss"], "series": "validation"})
    return points


# --- the memory estimate before starting -----------------------------------------------------

def memory_estimate(app, model_key: str, options: tp.Dict[str, tp.Any]) -> str:
    """The estimated peak GPU memory of one training step (and, with a GPU size, the planner's
    choice), from the architecture alone: no weights are loaded."""
    import torch

    from ..memory_estimate import CUDA_CONTEXT_GIB
    from ..planner import estimate_for, plan
    from ..step import resolve_precision
    value = model_value(app, model_key)
    gpu = options.get("gpu_memory") or 0
    lora = int(options.get("lora") or 0) or None
    config = TrainConfig(data="x", model=value, batch_size=int(options.get("batch_size", PAGE_DEFAULTS["batch_size"])),
                         segment_seconds=float(options.get("segment_seconds", PAGE_DEFAULTS["segment_seconds"])),
                         lora=lora, gpu_memory=float(gpu) if float(gpu) > 0 else None)
    facts = architecture_facts(value, config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(config.precision, device) if device.type == "cuda" else "bf16"
    where = "" if device.type == "cuda" else " on a GPU (this server has none: training here runs on the CPU)"
    if config.gpu_memory:
        chosen = plan(config, facts, precision, config.gpu_memory)
        changes = chosen.changes(config)
        what = ", ".join(f"{flag(k)}" + ("" if v is True else f" {v}") for k, v in changes.items()) or "your settings"
        return (f"Memory plan for {config.gpu_memory:g} GB: {what}; estimated peak {_gib(chosen.estimate_gib)} GiB + "
                f"{CUDA_CONTEXT_GIB:g} GiB CUDA context{where} ({'; '.join(chosen.reasons[1:]) or 'fits as it is'}).")
    gib = estimate_for(facts, config, precision, config.batch_size, False, config.optimizer, lora, 1)
    return (f"Estimated peak memory: {_gib(gib)} GiB + {CUDA_CONTEXT_GIB:g} GiB CUDA context{where} ({precision}, batch "
            f"{config.batch_size}, {config.segment_seconds:g} s clips" + (f", LoRA rank {lora}" if lora else "")
            + "); an estimate from the architecture, not a measurement.")


def _gib(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def architecture_facts(value: str, config: TrainConfig):
    """planner.ModelFacts without released weights: the released sizes' figures for hub names
    (and for a fine-tune of one, from its export record), the tiny models built (small, quick)."""
    from ..planner import facts_from_model, released_facts
    base = value
    if Path(value).is_dir():  # a fine-tune: its record says which released model it came from
        from ..exports import export_info
        base = export_info(value).base_model or "tiny"
    size = next((s for s in ("small", "medium", "large") if s in base), None)
    if "musicgen" in base and size is None and "melody" in base:
        size = "medium"  # facebook/musicgen-melody is medium-sized
    if size is not None:
        facts = released_facts(size)
        frames = int(round(min(config.segment_seconds, 30.0) * 50))
        return dataclasses.replace(facts, frames=frames, codebooks=8 if "stereo" in base else 4,
                                   prefix=235 if "melody" in base else 0)
    tiny = base if base in TINY_MODELS else "tiny"
    return facts_from_model(_tiny_model(tiny), config)


@functools.lru_cache(maxsize=len(TINY_MODELS))
def _tiny_model(name: str):
    """A tiny model, built once (the estimate is asked again at every change of an option)."""
    from ..models import load_model
    return load_model(name, device="cpu")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
