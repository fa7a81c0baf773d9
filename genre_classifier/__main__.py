"""Command line: ``python -m genre_classifier {train,evaluate,predict,tag} ...`` (``genre-classifier``).

This file only parses arguments and prints; the work is done by the library functions
(`training.train`, `evaluation.evaluate`, `tagging.predict`, `tagging.tag`). Errors print one line,
``error: ...``, and exit 1 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything can import TensorFlow

EXAMPLES = """\
examples:
  python -m genre_classifier train datasets/mine --out checkpoints/genre-mine
  python -m genre_classifier evaluate datasets/other --model checkpoints/genre-mine
  python -m genre_classifier predict song.mp3 other.wav --model checkpoints/genre-mine
  python -m genre_classifier tag datasets/mine/unknown --model checkpoints/genre-mine            (dry run)
  python -m genre_classifier tag datasets/mine/unknown --model checkpoints/genre-mine --apply move
"""


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("feature extraction")
    group.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: one per CPU core)")
    group.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help="feature cache (default: ~/.cache/musicgen-finetune/genre_features, "
                            "or $GENRE_CLASSIFIER_CACHE)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_options(args) -> dict:
    return {"workers": args.workers, "cache_dir": args.cache_dir, "use_cache": not args.no_cache,
            "progress": not args.no_progress}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genre-classifier", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Train a genre classifier (Keras MFCC CNN) on your genre folders, evaluate it honestly "
                    "(split by track), and tag the tracks in unknown/.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and results")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train on a genre-folder tree (unknown/ excluded)",
                       description="Train on DATA/<genre>/ folders. The split into train/validation/test is "
                                   "by track, stratified and seeded; the test report is saved with the model.")
    p.add_argument("data", type=Path, metavar="DATA", help="folder of genre folders (raw or dataset_tools output)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="model folder (default: checkpoints/genre-<DATA name>)")
    p.add_argument("--epochs", type=int, default=60, metavar="N", help="maximum epochs (default: 60)")
    p.add_argument("--patience", type=int, default=8, metavar="N", help="early stopping: epochs without validation "
                                                            "improvement (default: 8)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="segments per step (default: 32)")
    p.add_argument("--learning-rate", type=float, default=1e-4, metavar="LR", help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--val-fraction", type=float, default=0.15, metavar="F",
                   help="share of each genre's tracks for validation (default: 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, metavar="F",
                   help="share of each genre's tracks for the test (default: 0.15)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and the training (default: 0)")
    p.add_argument("--head", choices=("baseline", "gap"), default="baseline",
                   help="classifier head: baseline (Flatten+Dense) or gap (global pooling)")
    p.add_argument("--augment", action="store_true", help="random window positions, gain and time masks")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature on the validation split so confidences are honest")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    _common(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1 and confusion matrix on labelled folders")
    p.add_argument("data", type=Path, metavar="DATA", help="folder of genre folders")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model folder written by train")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="report folder (default: MODEL/eval-<DATA name>)")
    p.add_argument("--include-training-tracks", action="store_true",
                   help="also score tracks the model was trained on (overstates accuracy)")
    _common(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("predict", help="top genres with probabilities for each file")
    p.add_argument("files", type=Path, nargs="+", metavar="PATH",
                   help="audio files (anything ffmpeg decodes), or folders of them")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model folder written by train")
    p.add_argument("--top", type=int, default=3, metavar="N", help="genres to show per file (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("tag", help="tag every track in a folder (typically unknown/); dry run by default",
                       description="Tag every audio file under DIR. Tracks below --min-confidence stay "
                                   "unknown. Results go to a CSV and JSON before anything moves. With "
                                   "--apply, tagged tracks are copied or moved into DATASET/<genre>/ with "
                                   "their captions and metadata updated; nothing is ever overwritten.")
    p.add_argument("directory", type=Path, metavar="DIR", help="folder of tracks to tag, e.g. datasets/mine/unknown")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model folder written by train")
    p.add_argument("--min-confidence", type=float, default=0.6, metavar="P", help="below this, a track stays unknown "
                                                                      "(default: 0.6)")
    p.add_argument("--apply", choices=("copy", "move"), default=None, help="file tagged tracks (default: dry run)")
    p.add_argument("--into", type=Path, default=None, metavar="DATASET",
                   help="dataset holding the genre folders (default: DIR's parent when DIR is unknown/)")
    p.add_argument("--report", type=Path, default=None, metavar="CSV", help="results CSV (default: DIR/genre_tags.csv; "
                                                             "a JSON twin is written next to it)")
    _common(p)
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
    config = TrainConfig(data=args.data, out=out, epochs=args.epochs, patience=args.patience,
                         batch_size=args.batch_size, learning_rate=args.learning_rate,
                         val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                         head=args.head, augment=args.augment, calibrate=args.calibrate,
                         overwrite=args.overwrite, **_run_options(args))
    train(config)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import EvaluateConfig, evaluate, format_report
    report = evaluate(EvaluateConfig(data=args.data, model=args.model, out=args.out,
                                     include_training_tracks=args.include_training_tracks, **_run_options(args)))
    print(format_report(report))
    for item in report["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}")
    print(f"report: {report['files']['json']}\nconfusion matrix: {report['files']['png']}")
    return 0


def cmd_predict(args) -> int:
    from .extract import resolve_cache_dir
    from .tagging import predict
    results = predict(args.files, args.model, top_k=args.top, workers=args.workers,
                      cache_dir=resolve_cache_dir(args.cache_dir, not args.no_cache), progress=not args.no_progress)
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
    result = tag(TagConfig(directory=args.directory, model=args.model, min_confidence=args.min_confidence,
                           apply=args.apply, into=args.into, report=args.report, **_run_options(args)))
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
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; --debug for the developer
        if args.debug:
            raise
        message = (str(err).strip().splitlines() or [""])[0]
        known = isinstance(err, (ValueError, OSError))
        print(f"error: {message if known else f'{type(err).__name__}: {message} (run with --debug for details)'}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
