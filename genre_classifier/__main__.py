"""Command line: ``python -m genre_classifier {train,evaluate,predict,tag} ...`` (``genre-classifier``).

This file only parses arguments and prints; the work is done by the library functions
(`training.train`, `evaluation.evaluate`, `tagging.predict`, `tagging.tag`). The flags are the
fields of their config dataclasses (`TrainConfig`, `EvaluateConfig`, `TagConfig`, `RunOptions`),
through ``dataset_tools.cli``. Errors follow the project's convention (``dataset_tools.cli.run_command``):
one line, ``error: ...``, exit status 2 for bad input (a missing folder, a dataset or model folder
that cannot be used), 1 for a failure while working (``--debug`` shows the traceback instead);
130 on Ctrl-C. ``tag --apply`` also exits 1 when a track could not be filed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything can import TensorFlow

from dataset_tools.cli import add_dataclass_options, add_debug_flag, dataclass_from_args, run_command  # noqa: E402

from .options import RunOptions  # noqa: E402

EXAMPLES = """\
examples:
  python -m genre_classifier train datasets/mine --out checkpoints/genre-mine
  python -m genre_classifier evaluate datasets/other --model checkpoints/genre-mine
  python -m genre_classifier predict song.mp3 other.wav --model checkpoints/genre-mine
  python -m genre_classifier tag datasets/mine/unknown --model checkpoints/genre-mine            (dry run)
  python -m genre_classifier tag datasets/mine/unknown --model checkpoints/genre-mine --apply move
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genre-classifier", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Train a genre classifier (Keras MFCC CNN) on your genre folders, evaluate it honestly "
                    "(split by track), and tag the tracks in unknown/.")
    add_debug_flag(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .evaluation import EvaluateConfig
    from .tagging import TagConfig
    from .training import TrainConfig

    p = sub.add_parser("train", help="train on a genre-folder tree (unknown/ excluded)",
                       description="Train on DATA/<genre>/ folders. The split into train/validation/test is "
                                   "by track, stratified and seeded; the test report is saved with the model.")
    # --out: checkpoints/genre-<DATA name> when not given (cmd_train)
    add_dataclass_options(p, TrainConfig, exclude=("features",), defaults={"out": None})
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1 and confusion matrix on labelled folders")
    add_dataclass_options(p, EvaluateConfig)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("predict", help="top genres with probabilities for each file")
    p.add_argument("files", type=Path, nargs="+", metavar="PATH",
                   help="audio files (anything ffmpeg decodes), or folders of them")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model folder written by train")
    p.add_argument("--top", type=int, default=3, metavar="N", help="genres to show per file (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_dataclass_options(p, RunOptions)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("tag", help="tag every track in a folder (typically unknown/); dry run by default",
                       description="Tag every audio file under DIR. Tracks below --min-confidence stay "
                                   "unknown. Results go to a CSV and JSON before anything moves. With "
                                   "--apply, tagged tracks are copied or moved into DATASET/<genre>/ with "
                                   "their captions and metadata updated; nothing is ever overwritten.")
    add_dataclass_options(p, TagConfig)
    p.set_defaults(handler=cmd_tag)
    return parser


def _shown(path) -> str:
    """``path`` relative to the current folder when it is inside it (shorter output)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cmd_train(args) -> int:
    from .training import TrainConfig, train
    out = args.out or Path("checkpoints") / f"genre-{args.data.expanduser().resolve().name}"
    train(dataclass_from_args(TrainConfig, args, out=out))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import EvaluateConfig, evaluate, format_report
    report = evaluate(dataclass_from_args(EvaluateConfig, args))
    print(format_report(report))
    for item in report["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}")
    print(f"report: {report['files']['json']}\nconfusion matrix: {report['files']['png']}")
    return 0


def cmd_predict(args) -> int:
    from .extract import resolve_cache_dir
    from .tagging import predict
    results = predict(args.files, args.model, top_k=args.top, workers=args.workers,
                      cache_dir=resolve_cache_dir(args.cache_dir, args.use_cache), progress=args.progress)
    if args.json:
        print(json.dumps([{"file": str(r.path), "top": [{"genre": g, "probability": round(p, 4)} for g, p in r.top],
                           "duration_s": round(r.duration, 2), "skipped": r.reason} for r in results], indent=2))
        return 0
    for r in results:
        shown = "  ".join(f"{g} {p:.2f}" for g, p in r.top) if r.reason is None else f"skipped: {r.reason}"
        print(f"{r.path}\t{shown}")
    skipped = sum(r.reason is not None for r in results)
    if skipped:
        sys.stdout.flush()  # keep the summary after the results when both go to one terminal
        print(f"{skipped} of {len(results)} file(s) skipped", file=sys.stderr)
    return 0


def cmd_tag(args) -> int:
    from .tagging import TagConfig, tag
    result = tag(dataclass_from_args(TagConfig, args))
    shown = 0
    for row in result.rows:
        if shown == 200:
            print(f"... {len(result.rows) - shown} more rows in the CSV")
            break
        shown += 1
        conf = f"{row.confidence:.2f}" if row.confidence is not None else "   -"
        where = f" -> {_shown(row.destination)}" if row.destination and row.action in ("moved", "copied", "dry run") \
            else ""
        note = f"  ({row.note})" if row.note else ""
        print(f"{row.genre:<12} {conf}  {row.file}{where}  [{row.action}]{note}")
    counts = result.counts()
    summary = (f"{counts.get('tagged', 0)} tagged, {counts.get('unknown', 0)} left unknown "
               f"(below {args.min_confidence:g}), {counts.get('skipped', 0)} skipped")
    if result.applied:
        done = "moved" if result.applied == "move" else "copied"
        summary += f"; {counts.get(done, 0)} {done}, {counts.get('failed', 0)} failed"
    else:
        summary += "; dry run: nothing moved (use --apply copy|move)"
    print(summary)
    print(f"results: {_shown(result.csv_path)} and {result.json_path.name}")
    return 1 if counts.get("failed") else 0


def main(argv=None) -> int:
    from dataset_tools.files import tolerant_output
    tolerant_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    # 2: bad input (ValueError: DatasetError, ModelFolderError...; FileNotFoundError); 1: a failure
    # while working (OSError such as a full disk, anything unexpected); 130: Ctrl-C.
    return run_command(lambda: args.handler(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
