"""`python -m musicgen_trainer show`: inspect a model.

Training is `train.py` (or `musicgen-train`), generation `generate.py` (or `musicgen-generate`),
the web page `python -m musicgen_trainer.app`, the offline demo `python demo.py` (`make demo`).
"""
from __future__ import annotations

import argparse
import json
import sys


def _show(args) -> int:
    from .models import format_summary, load_model, model_summary
    model = load_model(args.model, device=args.device)
    summary = model_summary(model)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
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
    from dataset_tools.cli import add_debug_flag
    add_debug_flag(show)
    return parser


def main(argv=None) -> int:
    from dataset_tools.cli import run_command

    from .models import ModelUnavailableError
    args = build_parser().parse_args(argv)
    return run_command(lambda: args.func(args), input_errors=(ModelUnavailableError,), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
