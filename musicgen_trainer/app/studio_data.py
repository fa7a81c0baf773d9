"""The Data tab's work, without Gradio: pick a library under the data root, run ``dataset_tools
prepare`` on it as a background job, then read back its report and the dataset's statistics.

Every place is named relative to the data root (``mine``, ``mine-prepared``) and becomes a server
path only through :func:`paths.confined`. The job is exactly the command line (``python -m
dataset_tools prepare SRC OUT --flags``), run by :mod:`jobs` in OUT (its log, lock and record sit
there), so the page never blocks, a reload finds the running job again (:func:`running_prepare`),
and the result is the CLI's. The options shown are :class:`PrepareOptions` fields (label and help
from the field, checked by the dataclass before anything starts).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import typing as tp
from pathlib import Path

from dataset_tools.manifest import MANIFEST
from dataset_tools.options import PrepareOptions
from dataset_tools.report import REPORT_FILE
from dataset_tools.state import STATE_FILE

from . import jobs
from .paths import confined, is_regular_file, list_folders, read_json_record

_CHART_LOCK = threading.Lock()
_CHARTS: tp.Dict[str, tp.Any] = {}  # dataset folder -> the prepare (job id, end, report time) its chart shows

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where `python -m dataset_tools` is importable
PREPARED_SUFFIX = "-prepared"
# The PrepareOptions fields the tab offers (the rest keep their defaults; file-valued ones such as
# soundfont, separation_model, tagger_model and tag_vocabulary would name server paths, so they are
# never taken from the page: a tagger uses its default weights, e.g. those `fetch-tagger musicnn` wrote).
MAIN_PREPARE_OPTIONS = ("segment_seconds", "overlap_seconds", "channels", "trim_db", "loudness_lufs",
                        "analyze", "caption_template", "valid_fraction", "seed", "remove_vocals", "tagger")
MAX_LISTED_PROBLEMS = 100  # skipped/failed sources shown in the page (the report file has them all)
MAX_TEXT_OPTION_CHARS = 300


def require_root(root: tp.Optional[tp.Union[str, os.PathLike]]) -> Path:
    """The data root as a Path; ValueError (one line) when the app has none."""
    if root is None or str(root) == "":
        raise ValueError("the app has no data root (start it with --data-root FOLDER)")
    return Path(root)


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` is a dataset ``prepare`` wrote (its state file or manifest is there)."""
    return (folder / STATE_FILE).is_file() or (folder / MANIFEST).is_file()


def library_choices(root) -> tp.List[str]:
    """Top-level folders of the data root that are music libraries (not prepared datasets)."""
    root = require_root(root)
    return [name for name in list_folders(root) if not is_prepared(confined(root, name))]


def dataset_choices(root) -> tp.List[str]:
    """Top-level folders of the data root that hold a prepared dataset (a ``manifest.jsonl``)."""
    root = require_root(root)
    return [name for name in list_folders(root) if (confined(root, name) / MANIFEST).is_file()]


def default_output(library: str) -> str:
    """Where a library's dataset goes by default: ``<library>-prepared`` beside it."""
    return f"{(library or '').strip().rstrip('/')}{PREPARED_SUFFIX}" if library else ""


def field_help(cls, name: str) -> str:
    """A dataclass option's help text (its ``option(...)`` metadata), ``%(default)s`` filled in."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    text = (f.metadata.get("cli") or {}).get("help", "")
    return text.replace("%(default)s", str(f.default)).replace("%%", "%")


def field_label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def cli_flags(cls, values: tp.Mapping[str, tp.Any]) -> tp.List[str]:
    """The command-line flags that give ``values`` (field name -> value) to a ``cls`` command line
    built by ``dataset_tools.cli.add_dataclass_options``; fields at their default are left out."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    argv: tp.List[str] = []
    for name, value in values.items():
        f = fields[name]
        if value == f.default:
            continue
        flag = "--" + name.replace("_", "-")
        meta = f.metadata.get("cli") or {}
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is None:
            const = [k for k, v in (meta.get("const_flags") or {}).items()
                     if (v[0] if isinstance(v, tuple) else v) is None]
            if not const:
                raise ValueError(f"{field_label(name)} cannot be left empty")
            argv.append(const[0])
        else:
            argv.append(f"{flag}={value}")  # a value starting with "-" stays the flag's value
    return argv


def coerce(cls, name: str, value: tp.Any) -> tp.Any:
    """The page's ``value`` for option ``name`` of ``cls`` as the field's type: a number field may
    come as text (an optional one, e.g. ``loudness_lufs``, is a text box: empty means None);
    a whole-number field must be whole. ValueError (one line) otherwise."""
    import typing
    kind = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = type(None) in typing.get_args(kind)
    plain = args[0] if args else kind
    if plain not in (int, float) or isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = value.strip()
        if value == "" or value.lower() in ("none", "off"):
            if optional:
                return None
            raise ValueError(f"{field_label(name)} needs a value")
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{field_label(name)} must be a number, got {value[:40]!r}") from None
    if value is None:
        if optional:
            return None
        raise ValueError(f"{field_label(name)} needs a value")
    if plain is int:
        if float(value) != int(float(value)):
            raise ValueError(f"{field_label(name)} must be a whole number, got {value}")
        return int(float(value))
    return float(value)


def prepare_options(values: tp.Mapping[str, tp.Any]) -> PrepareOptions:
    """``PrepareOptions`` from the page's values (only :data:`MAIN_PREPARE_OPTIONS`), checked by
    the dataclass itself (ValueError, one line)."""
    unknown = set(values) - set(MAIN_PREPARE_OPTIONS)
    if unknown:
        raise ValueError(f"not an option of the page: {', '.join(sorted(unknown))}")
    clean: tp.Dict[str, tp.Any] = {}
    for name, value in values.items():
        if isinstance(value, str):
            if len(value) > MAX_TEXT_OPTION_CHARS or any(ord(ch) < 32 for ch in value):
                raise ValueError(f"{field_label(name)} must be one line of at most {MAX_TEXT_OPTION_CHARS} characters")
        clean[name] = coerce(PrepareOptions, name, value)
    return PrepareOptions(**clean)


@dataclasses.dataclass
class PrepareCommand:
    argv: tp.List[str]
    src: Path
    out: Path


def prepare_command(root, library: str, output: str, values: tp.Mapping[str, tp.Any]) -> PrepareCommand:
    """The ``dataset_tools prepare`` command line for ``library`` -> ``output`` (both relative to
    the data root). Raises ``OutsideRootError`` / ``ValueError`` (one line) for a path outside the
    root, a missing library, an output inside the library (or the other way round), bad options."""
    root = require_root(root)
    if not (library or "").strip() or library.strip() in (".", "/"):
        raise ValueError("choose a library folder")
    if not (output or "").strip() or output.strip() == ".":
        raise ValueError("give the dataset a folder name")
    src = confined(root, library, must_exist=True)
    out = confined(root, output)
    if not src.is_dir():
        raise ValueError(f"{library!r} is not a folder")
    if out == src or src in out.parents:
        raise ValueError("the dataset cannot go inside the library: choose another name")
    if out in src.parents:
        raise ValueError("the dataset folder cannot contain the library")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{output!r} is a file")
    if out.is_dir() and any(out.iterdir()) and not is_prepared(out) and jobs.job_status(out) is None:
        raise ValueError(f"{output!r} already holds files that prepare did not write: choose another name")
    options = prepare_options(values)
    flags = cli_flags(PrepareOptions, {k: getattr(options, k) for k in values})
    argv = [sys.executable, "-m", "dataset_tools", "prepare", str(src), str(out), *flags, "--progress"]
    return PrepareCommand(argv, src, out)


def start_prepare(root, library: str, output: str, values: tp.Mapping[str, tp.Any]) -> jobs.JobInfo:
    """Start prepare as ``output``'s job (returns at once). ``JobBusyError`` when one runs there."""
    command = prepare_command(root, library, output, values)
    return jobs.start_job("prepare", command.argv, command.out, cwd=str(PROJECT_ROOT))


def stop_prepare(root, output: str) -> bool:
    """Ctrl-C for the prepare running in ``output`` (it saves its progress; the next run resumes)."""
    return jobs.stop_job(confined(require_root(root), output, must_exist=True))


def running_prepare(root) -> tp.Optional[str]:
    """The dataset folder (relative to the root) of a prepare that is running now, if any: what a
    reloaded page attaches to."""
    try:
        root = require_root(root)
    except ValueError:
        return None
    for name in list_folders(root):
        info = jobs.job_status(confined(root, name))
        if info is not None and info.kind == "prepare" and info.running:
            return name
    return None


def _spellings(path) -> tp.Set[str]:
    path = Path(path)
    return {s for s in (str(path), str(path.absolute()), os.path.realpath(path)) if len(s) > 1}  # never "/" alone


def hide_roots(text: str, *roots) -> str:
    """``text`` (a job's log, an error) as the page may show it: each root's server path replaced by
    its folder name, the interpreter by ``python`` and its installation (site-packages in a
    traceback) by ``<python>``: never a server path in the page. The one function for every tab's log."""
    names: tp.List[tp.Tuple[str, str, bool]] = []
    for root in roots:
        if root:
            names += [(spelled, Path(root).name or ".", True) for spelled in _spellings(root)]
    names += [(spelled, "python", False) for spelled in _spellings(sys.executable)]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        names += [(spelled, "<python>", False) for spelled in _spellings(prefix)]
    for spelled, name, strip_sep in sorted(names, key=lambda n: len(n[0]), reverse=True):
        if strip_sep:
            text = text.replace(spelled + os.sep, "")
        text = text.replace(spelled, name)
    return text


public_log = hide_roots  # the name the Train tab's log helper shares


@dataclasses.dataclass
class JobView:
    """What the page shows of a folder's job: ``state`` (``none`` when it never had one)."""
    state: str
    kind: str = ""
    done: int = 0
    total: int = 0
    what: str = ""
    log: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    def line(self) -> str:
        if self.state == "none":
            return ""
        bar = f" {self.done}/{self.total} {self.what}".rstrip() if self.total else ""
        return f"{self.kind}: {self.state}{bar}"


def job_view(folder: Path, *roots, log_lines: int = 30) -> JobView:
    """``folder``'s job as the page shows it: state, progress from its bar, the end of its log
    (server paths of ``roots`` hidden)."""
    info = jobs.job_status(folder)
    if info is None:
        return JobView("none")
    log = jobs.read_log(folder)
    progress = jobs.progress_of(log) or (0, 0, "")
    tail = "\n".join(line for line in log.splitlines() if line.strip())
    tail = "\n".join(tail.splitlines()[-log_lines:])
    return JobView(info.state, info.kind, progress[0], progress[1], progress[2], hide_roots(tail, *roots))


def prepare_view(root, output: str) -> JobView:
    """The prepare job of ``output`` (relative to the data root)."""
    root = require_root(root)
    if not (output or "").strip():
        return JobView("none")
    return job_view(confined(root, output), root)


@dataclasses.dataclass
class PrepareResults:
    summary: str                      # markdown: counts, the split, skipped and failed with reasons
    genres: tp.List[tp.List[tp.Any]]  # [genre, tracks, segments, train, valid, minutes]
    chart: tp.Optional[Path]          # hours per genre (PNG in the dataset folder)


GENRE_COLUMNS = ["genre", "tracks", "segments", "train", "valid", "minutes"]


def prepare_results(root, output: str) -> PrepareResults:
    """The report of the last prepare of ``output`` and the dataset's statistics (the chart is drawn
    into the dataset, as ``dataset_tools stats`` does). ValueError when there is no dataset yet."""
    from dataset_tools.stats import CHART_FILE, StatsOptions, dataset_stats
    root = require_root(root)
    out = confined(root, output, must_exist=True)
    report = read_json_record(out / REPORT_FILE)  # bounded; never a link, FIFO or device
    if report is None:
        raise ValueError(f"{output!r} has no prepare report yet: run prepare first")
    # The page polls this (unqueued): draw the chart once per finished prepare, one thread at a
    # time (pyplot is not thread-safe), and only into a new file renamed into place.
    info = jobs.job_status(out)
    try:
        key = (info.id if info else "", info.finished if info else None, os.stat(out / REPORT_FILE).st_mtime_ns)
    except OSError:
        key = None
    chart_path = out / CHART_FILE
    with _CHART_LOCK:
        cached = key is not None and _CHARTS.get(str(out)) == key and is_regular_file(chart_path)
        stats = dataset_stats(out, StatsOptions(examples=0, chart="" if cached else None))
        _CHARTS[str(out)] = key
    chart = chart_path if is_regular_file(chart_path) else None
    lines = [f"**{report.get('tracks', 0)} tracks -> {report.get('segments', 0)} segments "
             f"({report.get('seconds', 0.0) / 3600:.2f} h)** from {report.get('files_found', 0)} audio/MIDI files.",
             f"This run: {report.get('converted_this_run', 0)} converted, {report.get('up_to_date', 0)} already "
             f"up to date, {report.get('elapsed_seconds', 0.0):.1f} s."]
    split = report.get("split") or {}
    if split:
        lines.append(f"Split by track: {split.get('train_tracks', 0)} train / {split.get('valid_tracks', 0)} valid; "
                     f"{len(report.get('unlabelled') or [])} unlabelled track(s) for the genre classifier.")
    for title, key in (("Skipped", "skipped"), ("Failed (retried next run)", "failed")):
        items = report.get(key) or []
        if items:
            lines.append(f"\n**{title}: {len(items)}**\n")
            lines += [f"- `{item.get('source', '?')}`: {item.get('reason', '')}" for item in items[:MAX_LISTED_PROBLEMS]]
            if len(items) > MAX_LISTED_PROBLEMS:
                lines.append(f"- ... and {len(items) - MAX_LISTED_PROBLEMS} more (see {REPORT_FILE})")
    genres = [[genre, g["tracks"], g["segments"], g.get("train", 0), g.get("valid", 0), round(g["seconds"] / 60, 1)]
              for genre, g in stats.genres.items()]
    return PrepareResults(hide_roots("\n".join(lines), root), genres, chart)


def choices_or_none(list_folders_fn, root) -> tp.List[str]:
    """``list_folders_fn(root)`` (``library_choices`` or ``dataset_choices``) for a dropdown: an
    empty list when the root is missing or unusable (the page then offers nothing, it does not fail)."""
    try:
        return list_folders_fn(root)
    except ValueError:
        return []
