"""`python -m musicgen_trainer show`: inspect a model; `evaluate`: a fine-tune against its base;
`export`: a run or model in transformers' format (or audiocraft's layout).
`card`: an export's model card (README.md with samples); `push`: an export to the Hugging Face Hub.

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


def _evaluate(args) -> int:
    from dataset_tools.cli import dataclass_from_args

    from .evaluation.evaluate import evaluate
    from .evaluation.evaluate_config import EvaluateConfig
    evaluate(dataclass_from_args(EvaluateConfig, args))
    return 0


def _export(args) -> int:
    from dataset_tools.cli import dataclass_from_args

    from .sharing.export_config import ExportConfig, run_export
    run_export(dataclass_from_args(ExportConfig, args))
    return 0


EXPORT_HELP = ("Write a run's export, an export folder or a model in Hugging Face transformers' format "
               "(MusicgenForConditionalGeneration / pipeline('text-to-audio'), safetensors) or in audiocraft's "
               "layout. See docs/sharing.md.")


def _card(args) -> int:
    from dataset_tools.cli import dataclass_from_args

    from .sharing.card import CardOptions
    from .sharing.card_data import card_command
    card_command(dataclass_from_args(CardOptions, args))
    return 0


def _push(args) -> int:
    from dataset_tools.cli import dataclass_from_args

    from .sharing.push import PushOptions, push
    push(dataclass_from_args(PushOptions, args))
    return 0


EVALUATE_HELP = ("Compare a fine-tune with its base model on the dataset's held-out tracks: cross-entropy, "
                 "generated clips (same prompts and seeds), genre adherence, FAD, CLAP, sanity flags; writes "
                 "report.html (with a blind A/B test), report.md and report.json into --out. See docs/evaluation.md.")


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
    from dataset_tools.cli import add_dataclass_options, add_debug_flag
    add_debug_flag(show)
    from .evaluation.evaluate_config import EvaluateConfig
    evaluate = sub.add_parser("evaluate", help="compare a fine-tune with its base: report.html/md/json",
                              description=EVALUATE_HELP)
    add_dataclass_options(evaluate, EvaluateConfig)
    evaluate.set_defaults(func=_evaluate)
    add_debug_flag(evaluate)
    from .sharing.export_config import ExportConfig
    export = sub.add_parser("export", help="write a model in transformers' format (or audiocraft's)",
                            description=EXPORT_HELP)
    add_dataclass_options(export, ExportConfig)
    export.set_defaults(func=_export)
    add_debug_flag(export)
    from .sharing.card import CardOptions
    from .sharing.push import PushOptions
    card = sub.add_parser("card", help="(re)write an export's model card: README.md with samples",
                          description="Write EXPORT/README.md: base model, training data (tracks and hours per "
                                      "genre), settings, evaluation, samples, usage. See docs/sharing.md.")
    add_dataclass_options(card, CardOptions)
    card.set_defaults(func=_card)
    add_debug_flag(card)
    push = sub.add_parser("push", help="upload an export with its card to the Hugging Face Hub (one commit)",
                          description="Upload EXPORT (weights, README.md, samples/) to the Hub repo --repo as "
                                      "one commit. See docs/sharing.md.")
    add_dataclass_options(push, PushOptions)
    push.set_defaults(func=_push)
    add_debug_flag(push)
    return parser


def main(argv=None) -> int:
    from dataset_tools.cli import run_command

    args = build_parser().parse_args(argv)
    input_errors = ()
    if args.command != "push":  # push loads no model: its offline/token error comes before torch is imported
        from .models import ModelUnavailableError
        input_errors = (ModelUnavailableError,)
    return run_command(lambda: args.func(args), input_errors=input_errors, debug=args.debug,
                       interrupted_hint="the report folder holds the clips written so far; run again with "
                                        "--overwrite" if args.command == "evaluate" else "")


if __name__ == "__main__":
    sys.exit(main())
