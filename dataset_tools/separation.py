"""Music source separation with demucs: vocal removal and stems, in bounded memory.

Two ways in:

* ``separate(inputs, out_dir, options)``: files (or folders of them) to
  ``OUT/<song>/<stem>.wav``, each WAV at the input's sample rate and exact length (mono
  input gives mono stems, anything else stereo). Songs are streamed (decoded, separated
  and written block by block, see ``separation_stream``), so memory does not grow with
  their length. A bad file becomes a skipped entry with a one-line reason; the batch goes
  on. Re-running skips songs already separated with the same settings. Inputs are checked
  before the model loads; in OUT only files ``separate`` wrote are ever replaced (anything
  else in the way stops the run before any work), and a full disk stops the batch.
* ``instrumental(audio, rate, separator)`` / ``separate_audio(...)``: in-memory arrays, for
  ``prepare --remove-vocals`` (one ``load_separator`` per process, cached).

``instrumental`` is ``mix - vocals`` by default: the exact complement of the vocals
(``instrumental + vocals == mix``), so nothing the model failed to attribute is lost;
``instrumental_mode="sum"`` writes drums + bass + other (+ guitar, piano...) instead,
which is what ``demucs --two-stems vocals`` writes.

Modules: ``separation_model`` (loading demucs models), ``separation_input`` (block
decoding), ``separation_stream`` (overlap-add engine), ``separation_files`` (one file to
stem WAVs), ``separation_report`` (results). Importing this one does not import torch.

Command line (before it is wired into ``python -m dataset_tools separate``)::

    python -m dataset_tools.separation song.mp3 album/ --out stems [--stems drums,bass,other,vocals]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from musicgen_trainer.constants import (SEPARATION_BLOCK_FRAMES, SEPARATION_MODEL, SEPARATION_OVERLAP,
                                        SEPARATION_STEMS)

from .files import RunFailedError, refuse_foreign
from .separation_files import expand_inputs, foreign_outputs, output_folders, separate_file, settings_of
from .separation_input import array_input, measure, output_channels
from .separation_report import SeparateReport
from .separation_stream import INSTRUMENTAL, INSTRUMENTAL_MODES, StemStream, stem_picker

if TYPE_CHECKING:  # torch is imported only when a model is loaded: --help stays fast
    from .separation_model import Separator

WAV_FORMATS = ("PCM_16", "PCM_24", "FLOAT")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_STEM = re.compile(r"^[a-z0-9_]+$")


@dataclass
class SeparateOptions:
    """Settings of ``separate`` (defaults: htdemucs, instrumental + vocals, 16-bit WAVs).

    Attributes:
        stems: stems to write: ``instrumental`` and/or the model's sources (htdemucs: drums,
            bass, other, vocals); ``all`` means every model source. A comma-separated string
            is accepted.
        model: pretrained demucs name (downloaded once, then cached) or a model file path.
        device: ``auto`` (GPU when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        segment: model window in seconds; None uses the model's own (7.8 s for htdemucs).
        overlap: share of each window shared with the next, cross-faded (0 to 0.9).
        shifts: extra randomly offset passes averaged in (demucs' shift trick; N+1 x slower).
        instrumental_mode: ``difference`` (mix - vocals) or ``sum`` (the other sources).
        subtype: WAV sample format: PCM_16, PCM_24 or FLOAT (FLOAT never clips).
        force: separate again even when the outputs are up to date.
        progress: show progress bars.
        trust_model_file: load a model file with full pickle (only for files you trust).
        seed: seed of the shift offsets (same seed, same output).
    """
    stems: tuple = SEPARATION_STEMS
    model: str = SEPARATION_MODEL
    device: str = "auto"
    segment: float | None = None
    overlap: float = SEPARATION_OVERLAP
    shifts: int = 0
    instrumental_mode: str = "difference"
    subtype: str = "PCM_16"
    force: bool = False
    progress: bool = True
    trust_model_file: bool = False
    seed: int = 0

    def __post_init__(self):
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)
        stems = self.stems.split(",") if isinstance(self.stems, str) else list(self.stems)
        stems = [str(s).strip().lower() for s in stems if str(s).strip()]
        need(bool(stems), "no stems requested: e.g. --stems instrumental,vocals")
        bad = [s for s in stems if not _STEM.match(s)]
        need(not bad, f"stem names are words like vocals or drums, got {bad[0]!r}" if bad else "")
        need(len(set(stems)) == len(stems), f"a stem is requested twice in {','.join(stems)}")
        self.stems = tuple(stems)
        self.model = str(self.model).strip()
        need(bool(self.model), "model is empty: give a pretrained name (htdemucs) or a model file")
        self.device = str(self.device or "auto").strip().lower()
        need(bool(_DEVICE.match(self.device)), f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        need(self.segment is None or 0.5 <= self.segment <= 600,
             f"segment must be between 0.5 and 600 seconds, got {self.segment}")
        need(0.0 <= self.overlap <= 0.9, f"overlap must be between 0 and 0.9, got {self.overlap}")
        need(isinstance(self.shifts, int) and 0 <= self.shifts <= 20,
             f"shifts must be a whole number from 0 to 20, got {self.shifts}")
        need(self.instrumental_mode in INSTRUMENTAL_MODES,
             f"instrumental mode must be one of {', '.join(INSTRUMENTAL_MODES)}, got {self.instrumental_mode!r}")
        self.subtype = str(self.subtype).upper()
        need(self.subtype in WAV_FORMATS, f"WAV format must be one of {', '.join(WAV_FORMATS)}, got {self.subtype}")

    def stems_for(self, separator: Separator) -> list[str]:
        """The requested stems with ``all`` expanded; ValueError for a stem the model lacks."""
        stems: list[str] = []
        for stem in self.stems:
            for s in (separator.sources if stem == "all" else [stem]):
                if s not in stems:
                    stems.append(s)
        stem_picker(separator.sources, stems, self.instrumental_mode)  # validates
        return stems


class SeparatorLoadError(ValueError):
    """The model cannot be loaded; ``str(err)`` is one line saying why and what to do."""


def load_separator(model: str = SEPARATION_MODEL, device=None, trust_model_file: bool = False) -> Separator:
    """The demucs model ``model`` (pretrained name or model file) on ``device`` (None/"auto":
    the GPU if there is one), loaded once per process. See ``separation_model``.

    Raises:
        SeparatorLoadError: unknown name, download impossible (offline), unreadable file.
    """
    from .separation_model import load_separator as load
    return load(model, device, trust_model_file)


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


# --- command line --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``separate``'s arguments (inputs, ``--out`` and the options) to ``parser``."""
    parser.add_argument("inputs", nargs="+", metavar="IN", help="audio files, or folders searched for them")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<song>/<stem>.wav")
    g = parser.add_argument_group("separation")
    g.add_argument("--stems", default=",".join(SEPARATION_STEMS), metavar="LIST",
                   help="comma-separated stems: instrumental (everything but vocals) and/or the model's "
                        "sources (htdemucs: drums,bass,other,vocals); 'all' = every source "
                        "(default: %(default)s)")
    g.add_argument("--model", default=SEPARATION_MODEL, metavar="NAME|FILE",
                   help="pretrained demucs model (downloaded once, then cached: htdemucs, htdemucs_ft, "
                        "htdemucs_6s, mdx_extra...) or a local model file (.th) (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:N, mps "
                                                   "(default: auto)")
    g.add_argument("--segment", type=float, default=None, metavar="S",
                   help="model window in seconds (default: the model's, 7.8 for htdemucs, which pads shorter "
                        "windows to that; shorter ones save memory with the mdx models)")
    g.add_argument("--overlap", type=float, default=SEPARATION_OVERLAP, metavar="F",
                   help="share of each window overlapping the next (default: %(default)s)")
    g.add_argument("--shifts", type=int, default=0, metavar="N",
                   help="average N extra randomly offset passes: slightly better, N+1 times slower (default: 0)")
    g.add_argument("--instrumental", dest="instrumental_mode", default="difference", choices=INSTRUMENTAL_MODES,
                   help="difference: mix minus vocals (exact complement, default); sum: the other stems added")
    g.add_argument("--wav-format", default="PCM_16", choices=WAV_FORMATS,
                   help="WAV sample format (default: %(default)s; FLOAT never clips)")
    g.add_argument("--force", action="store_true", help="separate again songs already done with these settings")
    g.add_argument("--trust-model-file", action="store_true",
                   help="load a --model file that holds arbitrary Python objects (only files you trust)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def options_from_args(args: argparse.Namespace) -> SeparateOptions:
    """``SeparateOptions`` from arguments added by ``add_arguments`` (ValueError if invalid)."""
    return SeparateOptions(stems=args.stems, model=args.model, device=args.device, segment=args.segment,
                           overlap=args.overlap, shifts=args.shifts, instrumental_mode=args.instrumental_mode,
                           subtype=args.wav_format, force=args.force, progress=not args.no_progress,
                           trust_model_file=args.trust_model_file)


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``separate`` for parsed arguments and print the summary. Exit status: 0, or 1
    when a file failed (a bad input is only skipped). ValueError/OSError/RunFailedError
    propagate."""
    report = separate(args.inputs, args.out, options_from_args(args))
    print(report.summary())
    return 1 if report.failed else 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m dataset_tools.separation",
        description="Split songs into stems with demucs: instrumental (karaoke / training data), vocals, "
                    "drums, bass, other. Writes OUT/<song>/<stem>.wav at the input's rate and length."))
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished songs are kept; run the same command again for the rest", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
