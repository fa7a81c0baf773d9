"""``prepare(src, out, options) -> PrepareReport``: a music folder in, a training set out.

Steps:
1. check SRC and OUT (OUT inside SRC or SRC missing: ``ValueError``), lock OUT against a
   second concurrent run, and delete temporary files a killed run left behind;
2. scan SRC (``files.scan_source``) and give every source an output stem;
3. skip sources whose state record says they are up to date (``state.py``);
4. convert the rest in worker processes (``convert``'s two stages via ``parallel``),
   recording each result and saving the state every few seconds;
5. remove outputs of sources that vanished or now produce fewer segments;
6. split by track and write the manifests (``manifest.py``) and ``prepare_report.json``.

SRC is only ever read. Interrupting (Ctrl-C or a kill) at any point is safe: outputs are
written atomically and the next run finishes the job.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from . import manifest as mf
from .convert import ConvertResult, ConvertTask, caption_stage, convert_source, decode_stage
from .files import assign_output_stems, check_paths, remove_partial_files, scan_source
from .midi_render import find_soundfont
from .options import PrepareOptions
from .parallel import Stage, default_workers, run_stages
from .report import PrepareReport, build_report
from .state import PrepareState, options_hash, remove_outputs

LOCK_FILE = ".prepare.lock"
SAVE_EVERY_SECONDS = 3.0


class OutputLockedError(RuntimeError):
    """Another ``prepare`` is writing to the same OUT folder."""


def _acquire_lock(out: Path) -> Path:
    """Create OUT/.prepare.lock holding our pid; a stale lock (dead pid) is taken over."""
    lock = out / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return lock
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, OSError):
                lock.unlink(missing_ok=True)  # its owner is gone: a killed run
                continue
            raise OutputLockedError(f"another prepare (pid {pid}) is writing to {out}; "
                                    f"wait for it, or delete {lock} if it is not running") from None
    raise OutputLockedError(f"cannot lock {out} (remove {lock})")


def check_packages(options: PrepareOptions) -> None:
    """Raise ValueError naming every Python package the workers would need and cannot
    import (imported lazily there, so a wrong interpreter would otherwise fail every file
    with the same import error)."""
    import importlib.util
    needed = ["soundfile", "soxr"]
    needed += ["librosa"] if options.analyze else []
    needed += ["pyloudnorm"] if options.loudness_lufs is not None else []
    needed += ["mido", "pretty_midi"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"missing Python package(s): {', '.join(missing)} (is this the right Python "
                         f"environment? `make setup` installs everything)")


def _crashed(task: ConvertTask) -> ConvertResult:
    return ConvertResult(task.rel, "skipped", "the decoder crashed on this file (worker process died)")


def prepare(src, out, options: PrepareOptions | None = None) -> PrepareReport:
    """Build (or bring up to date) the dataset in ``out`` from the music in ``src``.

    Returns the report (also written to ``OUT/prepare_report.json``).
    Raises:
        ValueError: bad SRC/OUT (missing, OUT inside SRC...), a missing ``--soundfont`` or a
            missing Python package.
        OutputLockedError: another run is using OUT.
        KeyboardInterrupt: after saving progress, when interrupted.
    """
    options = options or PrepareOptions()
    started = time.perf_counter()
    src, out = check_paths(src, out)
    check_packages(options)
    soundfont = find_soundfont(options.soundfont)  # ValueError if an explicit one is missing
    if options.remove_vocals:  # one clear error (or one download) before any worker starts
        from .separation_model import check_model
        check_model(options.separation_model)
    out.mkdir(parents=True, exist_ok=True)
    lock = _acquire_lock(out)
    try:
        return _prepare_locked(src, out, options, soundfont, started)
    finally:
        lock.unlink(missing_ok=True)


def _prepare_locked(src: Path, out: Path, options: PrepareOptions, soundfont, started: float) -> PrepareReport:
    remove_partial_files(out)
    scan = scan_source(src, exclude=out)
    stems = assign_output_stems(scan.sources)
    state = PrepareState(out)
    sf_id = None
    if soundfont is not None:
        st = soundfont.stat()
        sf_id = f"{soundfont}:{st.st_size}:{st.st_mtime_ns}"
    base_hash = options_hash(options.output_fields())
    midi_hash = options_hash({**options.output_fields(), "soundfont_file": sf_id})

    tasks, up_to_date = [], []
    for source in scan.sources:
        opts_hash = midi_hash if source.kind == "midi" else base_hash
        stem = stems[source.rel]
        if state.is_up_to_date(source.rel, source.size, source.mtime_ns, opts_hash, stem, out):
            up_to_date.append(source.rel)
            continue
        tasks.append((source, opts_hash, ConvertTask(
            path=str(source.path), rel=source.rel, kind=source.kind, genre_dir=source.genre_dir,
            unlabelled=source.unlabelled, stem=stem, out=str(out),
            options=replace(options, progress=False),
            soundfont=str(soundfont) if soundfont else None)))

    # Vanished sources: their outputs go, so the dataset mirrors SRC. (A stem an up-to-date
    # source owns is left alone; a stem a source to convert now owns is cleaned by it.)
    current = {s.rel for s in scan.sources}
    kept_stems = {stems[rel] for rel in up_to_date}
    removed = 0
    for rel in [r for r in state.records if r not in current]:
        old = state.drop(rel)
        if old and old.get("stem") and old["stem"] not in kept_stems:
            removed += remove_outputs(out, old["stem"])

    # Slowest first, so the pool ends evenly loaded: MIDI files (tiny, but rendering one
    # takes as long as decoding minutes of audio), then the biggest files.
    tasks.sort(key=lambda t: (t[0].kind != "midi", -t[0].size))
    by_rel = {t[2].rel: t for t in tasks}
    workers = options.workers or default_workers()
    results: list[ConvertResult] = []
    bar = None
    if options.progress and tasks:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), unit="file", desc="prepare", dynamic_ncols=True)
    last_save = 0.0  # save after the first result, then every few seconds
    current_stems = set(stems.values())
    # With analysis on, decoding starts at once in fresh processes while the analysis
    # stage's fork server imports librosa (seconds) once for all its workers.
    if options.analyze:
        stages = [Stage(decode_stage, fresh=True), Stage(caption_stage, preload=("dataset_tools._warm",))]
    else:
        stages = [Stage(convert_source, preload=("dataset_tools.convert",))]
    try:
        for task, result in run_stages(stages, [t[2] for t in tasks], on_crash=_crashed,
                                       workers=min(workers, max(1, len(tasks)))):
            source, opts_hash, _ = by_rel[task.rel]
            _record(state, out, source, opts_hash, task.stem, result, current_stems)
            results.append(result)
            if bar is not None:
                bar.update(1)
                if result.status != "converted":
                    bar.write(f"skipped {result.rel}: {result.reason}")
            if time.monotonic() - last_save > SAVE_EVERY_SECONDS:
                state.save()
                last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        state.save()  # also on Ctrl-C: the next run resumes from here

    records = {rel: state.records[rel] for rel in sorted(current) if rel in state.records}
    tracks = {rel: rec["track"]["genre"] for rel, rec in records.items() if rec.get("status") == "converted"}
    valid = mf.split_tracks(tracks, options.valid_fraction, options.seed)
    rows = mf.manifest_rows(records, valid, out, options.absolute_paths)
    unlabelled = {s.rel for s in scan.sources if s.unlabelled}
    counts = mf.write_manifests(out, rows, unlabelled)
    report = build_report(src=src, out=out, options=options, workers=workers, scan=scan,
                          records=records, results=results, up_to_date=up_to_date, valid=valid,
                          removed_outputs=removed, manifest_counts=counts,
                          elapsed=time.perf_counter() - started)
    report.save(out)
    return report


def _record(state: PrepareState, out: Path, source, opts_hash: str, stem: str,
            result: ConvertResult, current_stems: set[str]) -> None:
    """Store a result in the state and delete outputs of this track it no longer has
    (fewer segments than before, or files a killed run wrote but never recorded)."""
    keep = {seg["path"][:-len(".wav")] + ext for seg in result.segments for ext in (".wav", ".txt", ".json")}
    remove_outputs(out, stem, keep)
    old = state.records.get(source.rel)
    if old and old.get("stem") and old["stem"] != stem and old["stem"] not in current_stems:
        remove_outputs(out, old["stem"])  # the track's output name changed
    state.put(source.rel, {
        "size": source.size, "mtime_ns": source.mtime_ns, "options": opts_hash, "stem": stem,
        "status": result.status, "reason": result.reason, "kind": source.kind,
        "track": result.track, "segments": result.segments, "seconds": round(result.seconds, 4),
    })
