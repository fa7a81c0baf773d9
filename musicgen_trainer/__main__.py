"""`python -m musicgen_trainer show|demo`: inspect a model, run the offline demo.

Training is `train.py` (or `musicgen-train`), generation `generate.py` (or `musicgen-generate`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _show(args) -> int:
    from .loading import format_summary, load_model, model_summary
    model = load_model(args.model, device=args.device)
    summary = model_summary(model)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _demo(args) -> int:
    from .demo import DemoConfig, run_demo
    run_demo(DemoConfig(out=Path(args.out), model=args.model, duration=args.duration, train_steps=args.steps,
                        classifier=not args.no_classifier))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m musicgen_trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print a model's size, sample rate, frame rate and codebooks",
                          description="Load a model and print its summary. MODEL is 'tiny', a hub "
                                      "name such as facebook/musicgen-small, or an export folder.")
    show.add_argument("--model", default="tiny", help="model to inspect (default: tiny)")
    show.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(func=_show)
    demo = sub.add_parser("demo", help="the whole pipeline offline on example data (what `make demo` runs)",
                          description="Example library -> prepare -> genre classifier -> fine-tune the tiny "
                                      "model -> generate, all offline, into --out.")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--model", default="tiny", help="model to fine-tune (default: tiny)")
    demo.add_argument("--duration", type=float, default=4.0, help="seconds of audio to generate (default: 4)")
    demo.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    demo.add_argument("--no-classifier", action="store_true", help="skip the genre-classifier step")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .loading import ModelUnavailableError
    try:
        return args.func(args)
    except (ModelUnavailableError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
