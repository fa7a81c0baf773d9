"""Arguments of ``python -m dataset_tools separate`` (the command itself is in
``dataset_tools/__main__.py``, which adds these arguments and calls ``run_from_args``).

The options are the fields of ``SeparateOptions`` (flags, types, defaults and help come from
them: ``dataset_tools.cli``); only the inputs and ``--out``, which are not options, are added
here."""
from __future__ import annotations

import argparse

from ..cli import add_dataclass_options, dataclass_from_args
from .api import separate
from .options import SeparateOptions


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``separate``'s arguments (inputs, ``--out`` and the options) to ``parser``."""
    parser.add_argument("inputs", nargs="+", metavar="IN", help="audio files, or folders searched for them")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<song>/<stem>.wav")
    add_dataclass_options(parser, SeparateOptions)
    return parser


def options_from_args(args: argparse.Namespace) -> SeparateOptions:
    """``SeparateOptions`` from arguments added by ``add_arguments`` (ValueError if invalid)."""
    return dataclass_from_args(SeparateOptions, args)


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``separate`` for parsed arguments and print the summary. Exit status: 0, or 1
    when a file failed (a bad input is only skipped). ValueError/OSError/RunFailedError
    propagate (``dataset_tools.__main__`` runs this under ``cli.run_command``)."""
    report = separate(args.inputs, args.out, options_from_args(args))
    print(report.summary())
    return 1 if report.failed else 0
