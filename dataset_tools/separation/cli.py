"""Arguments of ``python -m dataset_tools separate`` (the command itself is in
``dataset_tools/__main__.py``, which adds these arguments and calls ``run_from_args``)."""
from __future__ import annotations

import argparse

from .api import separate
from .options import SEPARATION_MODEL, SEPARATION_OVERLAP, SEPARATION_STEMS, WAV_FORMATS, SeparateOptions
from .stems import INSTRUMENTAL_MODES


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
