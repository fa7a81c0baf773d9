"""Command line: ``python -m dataset_tools {prepare,stats,example} ...`` (or ``dataset-tools``).

Only parses arguments and prints; the work is done by ``prepare``, ``dataset_stats`` and
``build_example``. Bad input ends with one ``error: ...`` line and exit status 2 (also for
a file in OUT that the command did not write and would have to replace), 1 for a run that
could not finish (e.g. disk full), never a traceback; Ctrl-C exits 130 after saving progress.
"""
from __future__ import annotations

import argparse
import sys

from musicgen_trainer.constants import (SEPARATION_MODEL, DATASET_SAMPLE_RATE, MIDI_RELEASE_SECONDS, MIN_SEGMENT_SECONDS,
                                        SEGMENT_SECONDS, SILENCE_DB, VALID_FRACTION)

from .captions import CAPTION_FIELDS, DEFAULT_TEMPLATE

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
  python -m dataset_tools prepare lib out --segment-seconds 20 --overlap-seconds 5 --loudness -14
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataset_tools",
        description="Turn a folder of music into clean, captioned MusicGen training data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="convert a music folder into a training dataset",
                       description="Convert every audio/MIDI file under SRC into segmented, captioned "
                                   "WAVs and audiocraft manifests in OUT.",
                       epilog=EPILOG_PREPARE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="music folder (genre subfolders); never modified")
    p.add_argument("out", metavar="OUT", help="dataset folder to create or update (not inside SRC)")
    g = p.add_argument_group("audio")
    g.add_argument("--sample-rate", type=int, default=DATASET_SAMPLE_RATE, metavar="HZ",
                   help="output sample rate (default: %(default)s)")
    g.add_argument("--channels", type=int, choices=(1, 2), default=1, help="1 = mono, 2 = stereo (default: 1)")
    g.add_argument("--wav-format", default="PCM_16", choices=("PCM_16", "PCM_24", "FLOAT"),
                   help="WAV sample format (default: %(default)s)")
    g.add_argument("--segment-seconds", type=float, default=SEGMENT_SECONDS, metavar="S",
                   help="cut long tracks into segments this long (default: %(default)s)")
    g.add_argument("--overlap-seconds", type=float, default=0.0, metavar="S",
                   help="overlap between consecutive segments (default: 0)")
    g.add_argument("--min-seconds", type=float, default=MIN_SEGMENT_SECONDS, metavar="S",
                   help="drop a final remainder shorter than this; a short track is always kept "
                        "(default: %(default)s)")
    g.add_argument("--silence-db", type=float, default=SILENCE_DB, metavar="DB",
                   help="trim leading/trailing audio below this level in dBFS (default: %(default)s)")
    g.add_argument("--no-trim", action="store_true", help="keep leading/trailing silence")
    g.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                   help="normalise each track to this loudness, e.g. -14 (default: off)")
    g = p.add_argument_group("captions")
    g.add_argument("--caption-template", default=DEFAULT_TEMPLATE, metavar="TEXT",
                   help='caption template (default: "%(default)s")')
    g.add_argument("--no-analysis", action="store_true", help="do not estimate tempo and key (faster)")
    g = p.add_argument_group("MIDI")
    g.add_argument("--soundfont", default=None, metavar="SF2",
                   help="General MIDI soundfont (default: found on the system, e.g. FluidR3_GM.sf2)")
    g.add_argument("--midi-release", type=float, default=MIDI_RELEASE_SECONDS, metavar="S",
                   help="seconds kept after the last note-off (default: %(default)s)")
    g = p.add_argument_group("split and run")
    g.add_argument("--valid-fraction", type=float, default=VALID_FRACTION, metavar="F",
                   help="share of each genre's tracks used for validation (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of the train/valid split (default: 0)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: all CPU cores; 1 = no subprocesses)")
    g.add_argument("--absolute-paths", action="store_true",
                   help="write absolute WAV paths in the manifests (default: relative to OUT)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("vocal removal")
    g.add_argument("--remove-vocals", action="store_true",
                   help="train on instrumentals: remove vocals with demucs (slow on CPU; see docs/separation.md)")
    g.add_argument("--separation-model", default=SEPARATION_MODEL, metavar="NAME|FILE",
                   help="demucs pretrained name or local model file (default: %(default)s)")
    g.add_argument("--separation-device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where demucs runs (default: auto = GPU when available)")

    sep = sub.add_parser("separate", help="split songs into stems (instrumental, vocals, drums...) with demucs",
                         description="Write the requested stems of each song as WAV files (karaoke backing "
                                     "tracks, instrumental training data).")
    from .separation import add_arguments
    add_arguments(sep)

    s = sub.add_parser("stats", help="counts, durations and caption examples of a prepared dataset",
                       description="Summarise a dataset made by `prepare`: tracks, segments and hours per "
                                   "genre, caption examples, and a PNG chart of hours per genre.")
    s.add_argument("out", metavar="OUT", help="dataset folder (with manifest.jsonl)")
    s.add_argument("--examples", type=int, default=3, metavar="N", help="captions shown per genre (default: 3)")
    s.add_argument("--chart", default=None, metavar="PNG",
                   help="chart file (default: OUT/stats_hours_per_genre.png)")
    s.add_argument("--no-chart", action="store_true", help="do not draw the chart")

    e = sub.add_parser("example", help="build a small real example library from music21's corpus",
                       description="Write a small music library (genre folders + unknown/) rendered from "
                                   "music21's bundled corpus: Bach chorales on organ, Palestrina on choir, "
                                   "fiddle tunes on fiddle, classical quartets on piano. Feed it to `prepare`.")
    e.add_argument("out", metavar="OUT", help="folder to write the library into")
    e.add_argument("--pieces-per-genre", type=int, default=3, metavar="N", help="pieces per genre (default: 3)")
    e.add_argument("--unknown-pieces", type=int, default=2, metavar="N",
                   help="pieces put in unknown/ (default: 2)")
    e.add_argument("--max-seconds", type=float, default=20.0, metavar="S",
                   help="cut each piece to this length (default: 20)")
    e.add_argument("--format", default="flac", choices=("flac", "wav", "ogg", "mp3", "mid"),
                   help="file format; mid writes MIDI only (default: flac)")
    e.add_argument("--seed", type=int, default=0, help="chooses the pieces (default: 0)")
    e.add_argument("--soundfont", default=None, metavar="SF2", help="General MIDI soundfont")
    e.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: all cores)")
    e.add_argument("--force", action="store_true", help="rebuild even if OUT is up to date")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _run(args) -> int:
    if args.command == "prepare":
        from .options import PrepareOptions
        from .prepare import prepare
        options = PrepareOptions(
            sample_rate=args.sample_rate, channels=args.channels, subtype=args.wav_format,
            segment_seconds=args.segment_seconds, overlap_seconds=args.overlap_seconds,
            min_seconds=args.min_seconds, trim_db=None if args.no_trim else args.silence_db,
            loudness_lufs=args.loudness, analyze=not args.no_analysis,
            caption_template=args.caption_template, soundfont=args.soundfont,
            midi_release_seconds=args.midi_release, valid_fraction=args.valid_fraction, seed=args.seed,
            workers=args.workers, absolute_paths=args.absolute_paths, progress=not args.no_progress,
            remove_vocals=args.remove_vocals, separation_model=args.separation_model,
            separation_device=args.separation_device)
        report = prepare(args.src, args.out, options)
        print(report.summary())
        return 0
    if args.command == "separate":
        from .separation import run_from_args
        return run_from_args(args)
    if args.command == "stats":
        from .stats import StatsOptions, dataset_stats
        stats = dataset_stats(args.out, StatsOptions(examples=args.examples,
                                                     chart="" if args.no_chart else args.chart))
        print(stats.summary())
        return 0
    from .example import ExampleOptions, build_example
    report = build_example(args.out, ExampleOptions(
        pieces_per_genre=args.pieces_per_genre, unknown_pieces=args.unknown_pieces,
        max_seconds=args.max_seconds, seed=args.seed, audio_format=args.format,
        soundfont=args.soundfont, workers=args.workers, force=args.force, progress=not args.no_progress))
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
    try:
        return _run(args)
    except (ValueError, OutputLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailedError as exc:  # the disk failed the run: progress is saved
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: progress is saved; run the same command again to finish", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` & co.: not an error of the run
        sys.stderr.close()
        return 1
    except OSError as exc:  # e.g. OUT not writable, disk full
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
