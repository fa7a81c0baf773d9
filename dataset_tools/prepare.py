"""``prepare(src, out, options) -> PrepareReport``: a music folder in, a training set out.

Steps:
1. check SRC and OUT (OUT inside SRC or SRC missing: ``ValueError``) and lock OUT against
   a second concurrent run;
2. scan SRC (``files.scan_source``) and give every source an output stem;
3. skip sources whose state record says they are up to date (``state.py``);
4. stop (``ForeignFileError``) if a file this run would write is in OUT and prepare did not
   write it; else delete temporary files a killed run left behind and claim the outputs
   to write in the state;
5. convert the rest in worker processes (``convert``'s two stages via ``parallel``),
   recording each result and saving the state every few seconds; a full or read-only disk
   stops the run (``RunFailedError``);
6. remove outputs of sources that vanished or now produce fewer segments;
7. with ``--tagger clap`` or ``musicnn``, tag every track whose tags are not current
   (``tagging.py``: one CLAP embedding or musicnn tag vector per track, cached; captions and
   .json rewritten with the tags); without it, remove the tags of a former tagged run;
8. split by track and write the manifests (``manifest.py``) and ``prepare_report.json`` (also
   when the tag pass failed; ``RunFailedError`` after them).

SRC is only ever read, and in OUT only prepare's own files are ever replaced or deleted.
Interrupting (Ctrl-C or a kill) at any point is safe: outputs are written atomically and
the next run finishes the job.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath

from . import manifest as mf
from .convert import ConvertResult, ConvertTask, caption_stage, convert_source, decode_stage
from .files import (RunFailedError, assign_output_stems, blocking_file, check_paths,
                    entry_exists, refuse_foreign, remove_partial_files, scan_source)
from .midi_render import find_soundfont
from .options import PrepareOptions
from .parallel import Stage, default_workers, run_stages
from .report import REPORT_FILE, PrepareReport, build_report
from .state import PrepareState, options_hash, output_names, record_files, remove_outputs

LOCK_FILE = ".prepare.lock"
SAVE_EVERY_SECONDS = 3.0
# Files prepare writes at OUT's top level (besides its state and lock).
TOP_LEVEL_FILES = (mf.MANIFEST, mf.TRAIN, mf.VALID, mf.UNLABELLED, REPORT_FILE)


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
                text = lock.read_text().strip()
            except OSError:
                text = ""
            if text and not text.isdigit():  # not a pid: not our lock, not ours to delete
                refuse_foreign([lock], "prepare")
            try:
                pid = int(text or 0)  # empty: killed between creating and writing it
                if pid <= 0:
                    raise ProcessLookupError
                os.kill(pid, 0)
            except OSError:
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
            missing Python package; with ``--tagger clap``/``musicnn``, the tagger's weights not
            on this machine (``ClapUnavailableError``) or a bad vocabulary; ``ForeignFileError`` for a
            file in OUT where this run would write that prepare did not write (all raised
            before any work).
        OutputLockedError: another run is using OUT.
        RunFailedError: the disk is full or read-only (after saving progress), or the tag pass
            failed (after writing the manifests and the report).
        KeyboardInterrupt: after saving progress, when interrupted.
    """
    options = options or PrepareOptions()
    started = time.perf_counter()
    src, out = check_paths(src, out)
    check_packages(options)
    soundfont = find_soundfont(options.soundfont)  # ValueError if an explicit one is missing
    if options.remove_vocals:  # one clear error (or one download) before any worker starts
        from .separation import check_model
        check_model(options.separation_model)
    tagger = None
    if options.tagger != "none":  # one line saying how to provide the tagger's weights, before any work
        from .tagging import check_tagger
        tagger = check_tagger(options)
    out.mkdir(parents=True, exist_ok=True)
    lock = _acquire_lock(out)
    try:
        return _prepare_locked(src, out, options, soundfont, started, tagger)
    finally:
        lock.unlink(missing_ok=True)


def _prepare_locked(src: Path, out: Path, options: PrepareOptions, soundfont, started: float,
                    tagger=None) -> PrepareReport:
    scan = scan_source(src, exclude=out)
    stems = assign_output_stems(scan.sources)
    state = PrepareState(out)
    sf_id = None
    if soundfont is not None:
        st = soundfont.stat()
        sf_id = f"{soundfont}:{st.st_size}:{st.st_mtime_ns}"
    base_hash = options_hash(options.output_fields())
    midi_hash = options_hash({**options.output_fields(), "soundfont_file": sf_id})
    # What the audio depends on (not the caption options): the tag pass's embedding cache key.
    audio_hash = options_hash(options.audio_fields())
    midi_audio_hash = options_hash({**options.audio_fields(), "soundfont_file": sf_id})

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

    # Before any work: a file of someone else's where this run writes stops it untouched.
    # Then the outputs to write are claimed on disk, so that what a killed run leaves
    # behind is known to be ours (see state.py).
    refuse_foreign(foreign_files(out, state, [t[2].stem for t in tasks]), "prepare")
    remove_partial_files(out)
    state.claim([t[2].stem for t in tasks], TOP_LEVEL_FILES)
    state.save()

    # Vanished sources: their outputs go, so the dataset mirrors SRC. (A stem an up-to-date
    # source owns is left alone; a stem a source to convert now owns is cleaned by it.)
    current = {s.rel for s in scan.sources}
    kept_stems = {stems[rel] for rel in up_to_date}
    removed = 0
    for rel in [r for r in state.records if r not in current]:
        old = state.drop(rel)
        if old and old.get("stem") and old["stem"] not in kept_stems:
            removed += remove_outputs(out, state.owned_outputs(out, old["stem"], old))
    # A claim of a stem not converted now is stale (its source is up to date or gone): once
    # dropped, files named like its outputs that no record lists are never taken for ours.
    state.pending &= {t[2].stem for t in tasks}

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
    fatal: ConvertResult | None = None
    runner = run_stages(stages, [t[2] for t in tasks], on_crash=_crashed,
                        workers=min(workers, max(1, len(tasks))))
    try:
        for task, result in runner:
            source, opts_hash, _ = by_rel[task.rel]
            _record(state, out, source, opts_hash, task.stem, result, current_stems)
            results.append(result)
            if result.fatal:
                fatal = result
                break  # a full or read-only disk fails every further file too
            if bar is not None:
                bar.update(1)
                if result.status != "converted":
                    bar.write(f"{result.status} {result.rel}: {result.reason}")
            if time.monotonic() - last_save > SAVE_EVERY_SECONDS:
                state.save()
                last_save = time.monotonic()
    finally:
        runner.close()  # stops the workers now, not when garbage collected
        if bar is not None:
            bar.close()
        _save_state(state, quiet=fatal is not None)  # also on Ctrl-C: the next run resumes from here
    tagging, tag_error = None, ""
    if fatal is None and (tagger is not None or any(rec.get("tag_key") for rec in state.records.values())):
        from .tagging import tag_tracks
        audio = {s.rel: midi_audio_hash if s.kind == "midi" else audio_hash for s in scan.sources}
        try:
            tagging = tag_tracks(out, state, tagger, options.caption_template, audio,
                                 progress=options.progress).as_dict()
        except Exception as exc:  # e.g. out of GPU memory: the converted dataset still gets its manifests
            tag_error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            tagging = {"model": tagger.model_id if tagger else "", "error": tag_error}

    records = {rel: state.records[rel] for rel in sorted(current) if rel in state.records}
    tracks = {rel: rec["track"]["genre"] for rel, rec in records.items() if rec.get("status") == "converted"}
    valid = mf.split_tracks(tracks, options.valid_fraction, options.seed)
    facts = dict(src=src, out=out, options=options, workers=workers, scan=scan, records=records,
                 results=results, up_to_date=up_to_date, valid=valid, removed_outputs=removed,
                 tagging=tagging)
    if fatal is not None:
        _stop(fatal, facts, started)
    rows = mf.manifest_rows(records, valid, out, options.absolute_paths)
    unlabelled = {s.rel for s in scan.sources if s.unlabelled}
    counts = mf.write_manifests(out, rows, unlabelled)
    report = build_report(**facts, manifest_counts=counts, elapsed=time.perf_counter() - started)
    report.save(out)
    if tag_error:
        raise RunFailedError(f"the tag pass failed ({tag_error}); the converted segments, the manifests and "
                             f"{REPORT_FILE} are written: run the same command again to tag the rest")
    return report


def foreign_files(out: Path, state: PrepareState, stems: list[str]) -> list[Path]:
    """Entries in OUT where this run would write that prepare did not write: a state file
    or top-level file it did not write, a file where a folder goes, and anything named
    like the outputs of ``stems`` (the tracks to convert) that no record lists. Names are
    compared ignoring case: on macOS and Windows ``A.wav`` is the file ``a.wav``."""
    foreign = [state.path] if state.foreign else []
    foreign += [out / name for name in TOP_LEVEL_FILES if entry_exists(out / name) and not state.owns_top_file(name)]
    owned = state.files_by_stem()
    listings: dict[PurePosixPath, dict[str, list[str]]] = {}  # one scan per folder
    for stem in sorted(stems):
        if stem in state.pending:
            continue  # claimed by an earlier run after this same check: all its own
        folder = PurePosixPath(stem).parent
        blocker = blocking_file(out, out / folder)
        if blocker is not None:
            foreign.append(blocker)
            continue
        if folder not in listings:
            listings[folder] = output_names(out / folder)
        for name in sorted(listings[folder].get(PurePosixPath(stem).name.casefold(), ())):
            rel = (folder / name).as_posix()
            if rel not in owned.get(stem, ()):
                foreign.append(out / rel)
    return list(dict.fromkeys(foreign))


def _save_state(state: PrepareState, quiet: bool) -> None:
    """Save the state; with ``quiet``, a disk that already failed the run may refuse it
    (the next run then redoes a little more)."""
    try:
        state.save()
    except OSError:
        if not quiet:
            raise


def _stop(fatal: ConvertResult, facts: dict, started: float) -> None:
    """End a run the disk failed: save the report if the disk still takes it (the failure
    is under ``failed``), then raise ``RunFailedError``. The manifests keep their last
    complete version."""
    report = build_report(**facts, manifest_counts={}, elapsed=time.perf_counter() - started)
    try:
        report.save(facts["out"])
    except OSError:
        pass
    raise RunFailedError(f"{fatal.reason} while converting {fatal.rel}; stopped, as every further file "
                         "would fail too: free some space (or make OUT writable) and run the same command "
                         "again, finished tracks are kept")


def _record(state: PrepareState, out: Path, source, opts_hash: str, stem: str,
            result: ConvertResult, current_stems: set[str]) -> None:
    """Store a result in the state and delete outputs of this track it no longer has
    (fewer segments than before, or files a killed run wrote but never recorded). The
    stem is claimed, so every file named like its outputs is ours; files of a former stem
    are deleted only as far as the former record lists them."""
    keep = record_files({"segments": result.segments})
    old = state.records.get(source.rel)
    remove_outputs(out, state.owned_outputs(out, stem, old), keep)
    if old and old.get("stem") and old["stem"] != stem and old["stem"] not in current_stems:
        remove_outputs(out, state.owned_outputs(out, old["stem"], old))  # the output name changed
    state.put(source.rel, {
        "size": source.size, "mtime_ns": source.mtime_ns, "options": opts_hash, "stem": stem,
        "status": result.status, "reason": result.reason, "kind": source.kind,
        "track": result.track, "segments": result.segments, "seconds": round(result.seconds, 4),
    })
    state.release(stem)
