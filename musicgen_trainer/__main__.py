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


EXPORT_HELP = ("Write a run's export, an export folder or a model in Hugging Face transformers' format "
               "(MusicgenForConditionalGeneration / pipeline('text-to-audio'), safetensors) or in audiocraft's "
               "layout. See docs/sharing.md.")
EVALUATE_HELP = ("Compare a fine-tune with its base model on the dataset's held-out tracks: cross-entropy, "
                 "generated clips (same prompts and seeds), genre adherence, FAD, CLAP, sanity flags; writes "
                 "report.html (with a blind A/B test), report.md and report.json into --out. See docs/evaluation.md.")
CARD_HELP = ("Write EXPORT/README.md: base model, training data (tracks and hours per genre), settings, evaluation, "
             "samples, usage. See docs/sharing.md.")
PUSH_HELP = "Upload EXPORT (weights, README.md, samples/) to the Hub repo --repo as one commit. See docs/sharing.md."


def _option_commands():
    """The subcommands that are one options dataclass (each field a flag) handed to one function:
    ``(name, short help, description, options class, "module:function")``. The function's module is
    imported only when its command runs (evaluate loads torch and the models)."""
    from .evaluation.evaluate_config import EvaluateConfig
    from .sharing.card import CardOptions
    from .sharing.export_config import ExportConfig
    from .sharing.push import PushOptions
    return (
        ("evaluate", "compare a fine-tune with its base: report.html/md/json", EVALUATE_HELP, EvaluateConfig,
         ".evaluation.evaluate:evaluate"),
        ("export", "write a model in transformers' format (or audiocraft's)", EXPORT_HELP, ExportConfig,
         ".sharing.export_config:run_export"),
        ("card", "(re)write an export's model card: README.md with samples", CARD_HELP, CardOptions,
         ".sharing.card_data:card_command"),
        ("push", "upload an export with its card to the Hugging Face Hub (one commit)", PUSH_HELP, PushOptions,
         ".sharing.push:push"),
    )


def _run_options(args) -> int:
    """Build the command's options dataclass from its flags and hand it to its function."""
    import importlib

    from dataset_tools.cli import dataclass_from_args
    module, _, function = args.run_target.partition(":")
    getattr(importlib.import_module(module, __package__), function)(dataclass_from_args(args.options_class, args))
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
    from dataset_tools.cli import add_dataclass_options, add_debug_flag
    add_debug_flag(show)
    for name, short, description, options, target in _option_commands():
        command = sub.add_parser(name, help=short, description=description)
        add_dataclass_options(command, options)
        command.set_defaults(func=_run_options, options_class=options, run_target=target)
        add_debug_flag(command)
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
