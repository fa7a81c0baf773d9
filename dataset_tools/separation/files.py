"""Separate audio files into stem WAVs: inputs, output names, one file at a time.

``separate_file`` streams one song through ``StemStream`` into ``<folder>/<stem>.wav``
(temporary names, renamed once every stem is complete) and records what made them in
``<folder>/separation.json``, so a re-run with the same settings skips the song. It never
raises for a bad input: the result says ``skipped`` or ``failed`` with a one-line reason.

``separation.json`` is also the ledger of the files ``separate`` wrote in the folder
(``written``, kept across runs and saved before a stem is renamed into place): only those
are ever replaced. ``foreign_outputs`` finds anything else in the way, before any work.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import PART_SUFFIX, write_json_atomic
from ..audio_io import DISK_ERRNOS, AudioDecodeError, as_os_error
from ..dataset_format import AUDIO_EXTENSIONS
from ..files import ForeignFileError, entry_exists, refuse_foreign, safe_name
from .options import SEPARATION_BLOCK_FRAMES
from .reader import measure, open_input, output_channels
from .report import MARKER_FILE, REPORT_FILE, SeparatedFile, is_report
from .stems import stem_picker
from .stream import StemStream

if TYPE_CHECKING:
    from .model import Separator
    from .options import SeparateOptions

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def expand_inputs(inputs, out_dir: Path | None = None) -> tuple[list[Path], list[SeparatedFile]]:
    """Files to separate: each file as given, and the audio files under each folder
    (recursively, sorted; never inside ``out_dir``). Missing paths come back as skipped."""
    files: list[Path] = []
    skipped: list[SeparatedFile] = []
    out_real = Path(out_dir).resolve() if out_dir is not None else None
    seen: set = set()
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
                           and not p.name.startswith(".")
                           and not (out_real and out_real in p.resolve().parents))
            if not found:
                skipped.append(SeparatedFile(str(item), "skipped", "folder has no audio files"))
            new = [p for p in found if p.resolve() not in seen]
        elif item.exists() or item.is_symlink():
            new = [item] if item.resolve() not in seen else []
        else:
            skipped.append(SeparatedFile(str(item), "skipped", "file not found"))
            continue
        seen.update(p.resolve() for p in new)
        files.extend(new)
    return files, skipped


def output_folders(files: list[Path]) -> list[str]:
    """A distinct, filesystem-safe folder name per file: its name without extension; a
    clash (``Song.mp3`` + ``Song.flac``) appends the extension, then a path hash."""
    names, taken = [], set()
    for path in files:
        base = safe_name(path.stem)
        for name in (base, f"{base}-{path.suffix.lstrip('.').lower()}",
                     f"{base}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"):
            if name.casefold() not in taken:
                break
        taken.add(name.casefold())
        names.append(name)
    return names


def _read_marker(path: Path) -> dict | None:
    """A song folder's ``separation.json`` if separate wrote it, else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "source" in data and "settings" in data else None


def written_files(folder: Path) -> set[str] | None:
    """Names of the files separate wrote in a song's folder (its marker's ledger); None
    when a file named like the marker is there and separate did not write it."""
    marker = folder / MARKER_FILE
    if not entry_exists(marker):
        return set()
    data = _read_marker(marker)
    if data is None:
        return None
    # Markers written before the ledger list only their own run's stems.
    return set(data.get("written") or ()) | {Path(p).name for p in (data.get("outputs") or {}).values()}


def _foreign_in_folder(folder: Path, stems) -> list[Path]:
    """``foreign_outputs`` of one song's folder."""
    if entry_exists(folder) and not folder.is_dir():
        return [folder]
    written = written_files(folder)
    foreign = [folder / MARKER_FILE] if written is None else []
    return foreign + [folder / f"{s}.wav" for s in stems
                      if entry_exists(folder / f"{s}.wav") and f"{s}.wav" not in (written or ())]


def foreign_outputs(out: Path, folders: list[str], stems) -> list[Path]:
    """Entries where ``separate`` would write that it did not write: the report, a file
    where a song's folder goes, a marker that is not ours, stem WAVs no marker lists."""
    report = out / REPORT_FILE
    foreign = [report] if entry_exists(report) and not is_report(report) else []
    for name in folders:
        foreign += _foreign_in_folder(out / name, stems)
    return foreign


def settings_of(options: SeparateOptions, separator: Separator, stems: list[str]) -> dict:
    """Everything that changes the stems' samples (recorded next to them; re-runs compare)."""
    model = separator.name  # the pretrained name, or the model file and its version
    if Path(separator.name).is_file():
        stat = Path(separator.name).stat()
        model = f"{separator.name} ({stat.st_size} bytes, mtime {stat.st_mtime_ns})"
    return {"model": model, "stems": stems, "instrumental_mode": options.instrumental_mode,
            "segment": options.segment, "overlap": options.overlap, "shifts": options.shifts,
            "seed": options.seed, "subtype": options.subtype}


def _up_to_date(path: Path, folder: Path, settings: dict) -> dict | None:
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
        stat = path.stat()
    except (OSError, ValueError):
        return None
    same = (marker.get("source") == str(path.resolve()) and marker.get("size") == stat.st_size
            and marker.get("mtime_ns") == stat.st_mtime_ns and marker.get("settings") == settings)
    outputs = {s: str(folder / f"{s}.wav") for s in settings["stems"]}
    return marker if same and all(Path(p).is_file() for p in outputs.values()) else None


def separate_file(path: Path, folder: Path, stems: list[str], options: SeparateOptions, separator: Separator,
                  settings: dict | None = None, label: str = "") -> SeparatedFile:
    """Separate one file into ``folder/<stem>.wav``. Never raises (except Ctrl-C): problems
    become a ``skipped`` or ``failed`` result with a one-line reason."""
    settings = settings or settings_of(options, separator, stems)
    start = time.perf_counter()
    if not options.force:
        marker = _up_to_date(path, folder, settings)
        if marker is not None:
            return SeparatedFile(str(path), "up_to_date", outputs=marker.get("outputs", {}),
                                 seconds=marker.get("seconds", 0.0), sample_rate=marker.get("sample_rate", 0))
    try:
        result = _separate_file(path, folder, stems, options, separator, settings, label)
    except ForeignFileError as exc:  # separate() checks first; a direct caller may not have
        result = SeparatedFile(str(path), "skipped", str(exc))
    except AudioDecodeError as exc:
        result = SeparatedFile(str(path), "skipped", _first_line(exc) or "cannot decode")
    except MemoryError:
        result = SeparatedFile(str(path), "skipped", "not enough memory")
    except Exception as exc:
        result = _failed(path, folder, exc)
    result.elapsed = round(time.perf_counter() - start, 3)
    return result


def _failed(path: Path, folder: Path, exc: Exception) -> SeparatedFile:
    """A failure of ours or of the machine, as a one-line reason."""
    error = as_os_error(exc, folder)
    if error is not None:  # OUT not writable, disk full (libsndfile's write errors included)
        return SeparatedFile(str(path), "failed", f"cannot write outputs ({error.strerror or error})",
                             fatal=error.errno in DISK_ERRNOS)
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return SeparatedFile(str(path), "failed",
                             "GPU out of memory: use --device cpu (or, with mdx models, a shorter --segment)")
    return SeparatedFile(str(path), "failed", f"unexpected error: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def _separate_file(path, folder, stems, options, separator, settings, label) -> SeparatedFile:
    import soundfile as sf
    from tqdm import tqdm
    refuse_foreign(_foreign_in_folder(folder, stems), "separate", "--out folder")
    inp = open_input(path)
    stats = measure(inp, separator.audio_channels)  # first pass: length, mean and std
    channels = output_channels(inp.channels)
    stream = StemStream(separator, inp.rate, inp.channels, stats, options.segment, options.overlap,
                        options.shifts, options.seed)
    pick = stem_picker(separator.sources, stems, options.instrumental_mode)
    folder.mkdir(parents=True, exist_ok=True)
    temps, writers = {}, {}
    clipped = {s: 0 for s in stems} if options.subtype != "FLOAT" else {}
    # Counts input frames, shown as seconds of audio.
    bar = tqdm(total=stats.frames, unit="s", unit_scale=1.0 / inp.rate, desc=label or path.name,
               leave=False, disable=not options.progress, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]")
    try:
        # Not atomic_path (one file, renamed alone): the stems are renamed together, after the
        # ledger is saved. ".<stem>.<8 random>.wav.part" is a name files.py cleans up.
        for stem in stems:
            fd, temps[stem] = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".wav{PART_SUFFIX}", dir=folder)
            os.close(fd)
            writers[stem] = sf.SoundFile(temps[stem], "w", samplerate=inp.rate, channels=channels,
                                         subtype=options.subtype, format="WAV")
        frames = 0
        for mix, est in stream.run(inp.blocks(SEPARATION_BLOCK_FRAMES),
                                   on_block=bar.update):
            for stem, values in pick(mix, est).items():
                if clipped is not None and stem in clipped:
                    over = np.abs(values) > 1.0
                    if over.any():  # libsndfile would wrap around, not clip
                        clipped[stem] += int(over.sum())
                        values = np.clip(values, -1.0, 1.0)
                writers[stem].write(np.ascontiguousarray(values.T))
            frames += mix.shape[-1]
        for stem in stems:
            writers.pop(stem).close()
            os.chmod(temps[stem], 0o666 & ~_UMASK)  # mkstemp makes owner-only files
        # The ledger first: a kill while renaming leaves stems known to be ours, and a
        # marker without settings, which no re-run takes as up to date.
        written = sorted((written_files(folder) or set()) | {f"{s}.wav" for s in stems})
        _write_marker(folder, {"source": str(path.resolve()), "settings": None, "outputs": {},
                               "written": written})
        outputs = {}
        for stem in stems:  # all stems complete: only now replace the previous ones
            target = folder / f"{stem}.wav"
            os.replace(temps.pop(stem), target)
            outputs[stem] = str(target)
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    stat = path.stat()
    seconds = round(frames / inp.rate, 6)
    _write_marker(folder, {
        "source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "settings": settings, "outputs": outputs, "seconds": seconds, "sample_rate": inp.rate,
        "channels": channels, "written": written})
    return SeparatedFile(str(path), "separated", outputs=outputs, seconds=seconds, sample_rate=inp.rate,
                         channels=channels, clipped=clipped)


def _write_marker(folder: Path, data: dict) -> None:
    write_json_atomic(folder / MARKER_FILE, data)
