"""Command line: ``python -m dataset_tools {prepare,separate,stats,captions,example,fetch-tagger} ...`` (or ``dataset-tools``).

Only parses arguments and prints; the work is done by ``prepare``, ``separation.separate``,
``dataset_stats``, ``caption_report``, ``build_example`` and ``musicnn_fetch.fetch_tagger``. Each
command's flags come from the fields of its options dataclass (``PrepareOptions``,
``SeparateOptions``, ``StatsOptions``, ``CaptionsOptions``, ``ExampleOptions``,
``FetchTaggerOptions``) through ``dataset_tools.cli``.
Errors follow the project's convention (``cli.run_command``): one ``error: ...`` line, exit
status 2 for bad input (also for a file in OUT that the command did not write and would have
to replace), 1 for a run that could not finish (e.g. disk full), never a traceback (unless
``--debug``); Ctrl-C exits 130 after saving progress.
"""
from __future__ import annotations

import argparse
import sys

from .captions import CAPTION_FIELDS
from .cli import add_dataclass_options, add_debug_flag, dataclass_from_args, run_command

EPILOG_PREPARE = f"""\
SRC layout: top-level folders are genres (rock/, jazz/, ...); unknown/ (or unknow/) holds
unlabelled tracks; files directly in SRC have no genre. Audio: anything ffmpeg decodes
(mp3, wav, flac, ogg, opus, m4a, aac, aiff, ...); MIDI (.mid/.midi) is rendered with
FluidSynth.

OUT gets <genre>/<name>.wav (+ .txt caption + .json audiocraft metadata) per segment,
manifest.jsonl / train.jsonl / valid.jsonl (paths relative to OUT), unlabelled.jsonl
and prepare_report.json. Re-running only converts what changed. Files in OUT that prepare
did not write are never replaced or deleted: one where it would write stops the run
before any work (exit status 2). A full or read-only disk stops it with exit status 1.

Caption fields: {", ".join("{" + f + "}" for f in CAPTION_FIELDS)}. A comma-separated part
of the template with an unknown field is left out.

example:
  python -m dataset_tools prepare ~/Music/library data/mymusic --workers 4
  python -m dataset_tools prepare lib out --segment-seconds 20 --overlap-seconds 5 --loudness-lufs -14
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataset_tools",
        description="Turn a folder of music into clean, captioned MusicGen training data.")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="convert a music folder into a training dataset",
                       description="Convert every audio/MIDI file under SRC into segmented, captioned "
                                   "WAVs and audiocraft manifests in OUT.",
                       epilog=EPILOG_PREPARE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="music folder (genre subfolders); never modified")
    p.add_argument("out", metavar="OUT", help="dataset folder to create or update (not inside SRC)")
    from .options import PrepareOptions
    add_dataclass_options(p, PrepareOptions)

    sep = sub.add_parser("separate", help="split songs into stems (instrumental, vocals, drums...) with demucs",
                         description="Write the requested stems of each song as WAV files (karaoke backing "
                                     "tracks, instrumental training data).")
    from .separation.cli import add_arguments
    add_arguments(sep)

    s = sub.add_parser("stats", help="counts, durations and caption examples of a prepared dataset",
                       description="Summarise a dataset made by `prepare`: tracks, segments and hours per "
                                   "genre, caption examples, and a PNG chart of hours per genre.")
    s.add_argument("out", metavar="OUT", help="dataset folder (with manifest.jsonl)")
    from .stats import StatsOptions
    add_dataclass_options(s, StatsOptions)

    c = sub.add_parser("captions", help="caption statistics of a prepared dataset; re-render them with a new template",
                       description="Most common tags per genre, untagged segments, duplicated captions and the "
                                   "longest caption of a dataset made by `prepare`; with --template, first rewrite "
                                   "every caption from the .json fields (the audio is not touched).")
    c.add_argument("out", metavar="OUT", help="dataset folder made by prepare")
    from .caption_report import CaptionsOptions
    add_dataclass_options(c, CaptionsOptions)

    e = sub.add_parser("example", help="build a small real example library from music21's corpus",
                       description="Write a small music library (genre folders + unknown/) rendered from "
                                   "music21's bundled corpus: Bach chorales on organ, Palestrina on choir, "
                                   "fiddle tunes on fiddle, classical quartets on piano. Feed it to `prepare`.")
    e.add_argument("out", metavar="OUT", help="folder to write the library into")
    from .example import ExampleOptions
    add_dataclass_options(e, ExampleOptions)

    f = sub.add_parser("fetch-tagger", help="download and convert musicnn's pretrained weights for --tagger musicnn",
                       description="Download the musicnn wheel from PyPI (pip download, no install), check its "
                                   "sha256, and convert its MagnaTagATune and Million-Song checkpoints to "
                                   "safetensors for `prepare --tagger musicnn`.")
    from .musicnn_fetch import FetchTaggerOptions
    add_dataclass_options(f, FetchTaggerOptions)
    return parser


def _run(args) -> int:
    if args.command == "prepare":
        from .options import PrepareOptions
        from .prepare import prepare
        report = prepare(args.src, args.out, dataclass_from_args(PrepareOptions, args))
        print(report.summary())
        return 0
    if args.command == "separate":
        from .separation.cli import run_from_args
        return run_from_args(args)
    if args.command == "stats":
        from .stats import StatsOptions, dataset_stats
        stats = dataset_stats(args.out, dataclass_from_args(StatsOptions, args))
        print(stats.summary())
        return 0
    if args.command == "captions":
        from .caption_report import CaptionsOptions, caption_report
        options = dataclass_from_args(CaptionsOptions, args)
        print(caption_report(args.out, options).summary(options.top))
        return 0
    if args.command == "fetch-tagger":
        from .musicnn_fetch import FetchTaggerOptions, fetch_tagger
        folder = fetch_tagger(dataclass_from_args(FetchTaggerOptions, args))
        print(f"musicnn weights written to {folder} (use: prepare --tagger musicnn"
              f"{'' if args.to is None else ' --tagger-model ' + str(folder)})")
        return 0
    from .example import ExampleOptions, build_example
    report = build_example(args.out, dataclass_from_args(ExampleOptions, args))
    print(report.summary())
    return 0


def main(argv=None) -> int:
    from .files import tolerant_output
    tolerant_output()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .files import RunFailedError
    from .prepare import OutputLockedError
    # 2: bad input (ValueError, ForeignFileError, OUT locked by another run); 1: the disk
    # failed the run (RunFailedError, OSError: progress is saved); 130: Ctrl-C.
    return run_command(lambda: _run(args), input_errors=(OutputLockedError,), run_errors=(RunFailedError,),
                       debug=args.debug, interrupted_hint="progress is saved; run the same command again to finish")


if __name__ == "__main__":
    sys.exit(main())
