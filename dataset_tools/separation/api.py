"""Music source separation with demucs: vocal removal and stems, in bounded memory.

Two ways in:

* ``separate(inputs, out_dir, options)``: files (or folders of them) to
  ``OUT/<song>/<stem>.wav``, each WAV at the input's sample rate and exact length (mono
  input gives mono stems, anything else stereo). Songs are streamed (decoded, separated
  and written block by block, see ``stream``), so memory does not grow with their length.
  A bad file becomes a skipped entry with a one-line reason; the batch goes on. Re-running
  skips songs already separated with the same settings. Inputs are checked before the
  model loads; in OUT only files ``separate`` wrote are ever replaced (anything else in
  the way stops the run before any work), and a full disk stops the batch.
* ``instrumental(audio, rate, separator)`` / ``separate_audio(...)``: in-memory arrays, for
  ``prepare --remove-vocals`` (one ``load_separator`` per process, cached).

``instrumental`` is ``mix - vocals`` by default (see ``stems``). Importing this does not
import torch; the command line is ``python -m dataset_tools separate`` (arguments: ``cli``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import RunFailedError, refuse_foreign
from .files import expand_inputs, foreign_outputs, output_folders, separate_file, settings_of
from .model import load_separator
from .options import SEPARATION_BLOCK_FRAMES, SEPARATION_OVERLAP, SeparateOptions
from .reader import array_input, measure, output_channels
from .report import SeparateReport
from .stems import INSTRUMENTAL, stem_picker
from .stream import StemStream

if TYPE_CHECKING:
    from .model import Separator


# --- in memory (prepare --remove-vocals) ------------------------------------------------------

def separate_audio(audio: np.ndarray, sample_rate: int, separator: Separator, stems=("vocals",), *,
                   instrumental_mode: str = "difference", segment: float | None = None,
                   overlap: float = SEPARATION_OVERLAP, shifts: int = 0, seed: int = 0) -> dict:
    """Separate an in-memory track.

    Args:
        audio: ``[n]`` (mono) or ``[channels, n]`` float samples at ``sample_rate`` (any rate).
    Returns:
        ``{stem: array}``, each the shape of ``audio`` (``[2, n]`` for more than 2 channels).
        Memory beyond input and outputs stays bounded (windowed, as for files).
    """
    inp = array_input(audio, sample_rate)
    if inp.frames == 0:
        raise ValueError("cannot separate empty audio")
    stems = list(stems)
    pick = stem_picker(separator.sources, stems, instrumental_mode)
    channels = output_channels(inp.channels)
    out = {s: np.empty((channels, inp.frames), np.float32) for s in stems}
    stream = StemStream(separator, sample_rate, inp.channels, measure(inp, separator.audio_channels),
                        segment, overlap, shifts, seed)
    pos = 0
    for mix, est in stream.run(inp.blocks(SEPARATION_BLOCK_FRAMES)):
        n = mix.shape[-1]
        for stem, values in pick(mix, est).items():
            out[stem][:, pos:pos + n] = values
        pos += n
    assert pos == inp.frames, (pos, inp.frames)
    return {s: (a[0] if np.ndim(audio) == 1 else a) for s, a in out.items()}


def instrumental(audio: np.ndarray, sample_rate: int, separator: Separator, **kwargs) -> np.ndarray:
    """``audio`` without its vocals (``mix - vocals``), same shape and rate: ``[n]`` or
    ``[channels, n]`` (1 or 2 channels). ``kwargs``: see ``separate_audio``."""
    return separate_audio(audio, sample_rate, separator, (INSTRUMENTAL,), **kwargs)[INSTRUMENTAL]


# --- files ------------------------------------------------------------------------------------------

def separate(inputs, out_dir, options: SeparateOptions | None = None,
             separator: Separator | None = None) -> SeparateReport:
    """Write the requested stems of every input to ``out_dir/<song>/<stem>.wav``.

    Args:
        inputs: audio files and/or folders (searched recursively for audio files).
        separator: an already loaded model; default ``load_separator(options.model, options.device)``.
    Returns:
        the report (also saved as ``out_dir/separate_report.json``).
    Raises:
        ValueError (``SeparatorLoadError``): no input has audio (checked before the model
        loads), the model cannot be loaded or lacks a requested stem, or ``out_dir`` is a
        file; ``ForeignFileError`` for a file in the way that separate did not write
        (before any work). Problems with single inputs never raise.
        RunFailedError: the disk is full or read-only (the songs done so far are kept).
    """
    options = options or SeparateOptions()
    start = time.perf_counter()
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder is a file: {out}")
    # Inputs and OUT first: a typo or a file in the way must not wait for (or download) a model.
    files, skipped = expand_inputs(inputs, out)
    if not files:
        raise ValueError(_nothing_to_separate(skipped))
    folders = output_folders(files)
    refuse_foreign(foreign_outputs(out, folders, [s for s in options.stems if s != "all"]),
                   "separate", "--out folder")
    if options.progress:
        for item in skipped:
            print(item.line(), file=sys.stderr)
    if separator is None:
        if options.progress:
            print(f"loading model {options.model}...", file=sys.stderr, flush=True)
        separator = load_separator(options.model, options.device, options.trust_model_file)
    stems = options.stems_for(separator)
    if options.segment is not None and int(options.segment * separator.samplerate) > separator.max_window:
        raise ValueError(f"--segment {options.segment:g} is longer than model {options.model} accepts "
                         f"({separator.max_window / separator.samplerate:.2f} s)")
    refuse_foreign(foreign_outputs(out, folders, stems), "separate", "--out folder")  # 'all' now known
    out.mkdir(parents=True, exist_ok=True)
    report = SeparateReport(out=str(out), model=separator.name, device=str(separator.device), stems=stems,
                            options=asdict(options), files=list(skipped))
    settings = settings_of(options, separator, stems)
    fatal = None
    for index, (path, folder) in enumerate(zip(files, folders), 1):
        label = f"[{index}/{len(files)}] {path.name}"
        result = separate_file(path, out / folder, stems, options, separator, settings, label)
        result.source = str(path)
        report.files.append(result)
        if options.progress:
            from tqdm import tqdm
            tqdm.write(result.line(), file=sys.stderr)
        if result.fatal:
            fatal = result
            break  # a full or read-only disk fails every further song too
    report.elapsed_seconds = round(time.perf_counter() - start, 3)
    if fatal is not None:
        _stop(report, fatal)
    report.save()
    return report


def _nothing_to_separate(skipped: list) -> str:
    if not skipped:
        return "nothing to separate: no input given"
    more = f" (and {len(skipped) - 1} more input(s) without audio)" if len(skipped) > 1 else ""
    return f"{skipped[0].source}: {skipped[0].reason}{more}"


def _stop(report: SeparateReport, fatal) -> None:
    """End a batch the disk failed: save the report if the disk still takes it, then raise."""
    try:
        report.save()
    except OSError:
        pass
    raise RunFailedError(f"{fatal.reason} while separating {fatal.source}; stopped, as every further song "
                         "would fail too: free some space (or make the --out folder writable) and run the "
                         "same command again, finished songs are kept")
