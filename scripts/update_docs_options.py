#!/usr/bin/env python
"""Rewrite the docs' option tables from the dataclass fields that declare the options.

Each table sits between ``<!-- options: NAME -->`` and ``<!-- /options -->`` in a doc; NAME is
a key of ``TABLES``. ``python scripts/update_docs_options.py`` rewrites them; ``--check`` only
reports the tables that are out of date (the test suite runs the same check).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _tables() -> dict:
    """NAME -> (doc path, Markdown table)."""
    from dataset_tools.caption_report import CaptionsOptions
    from dataset_tools.cli import options_markdown
    from dataset_tools.musicnn_fetch import FetchTaggerOptions
    from dataset_tools.options import PrepareOptions
    from musicgen_trainer.cli_generate import GenerateOptions
    from musicgen_trainer.evaluation.evaluate_config import EvaluateConfig
    from musicgen_trainer.generation import GenerationConfig
    from musicgen_trainer.sharing.export_config import ExportConfig
    from musicgen_trainer.sharing.card import CardOptions
    from musicgen_trainer.sharing.push import PushOptions
    from musicgen_trainer.train_config import TrainConfig
    return {
        "train": ("docs/training.md", options_markdown(TrainConfig)),
        "generate": ("docs/generation.md", options_markdown(GenerateOptions, exclude=("generation",))),
        "sampling": ("docs/generation.md", options_markdown(GenerationConfig, defaults={"seed": None})),
        "prepare": ("docs/dataset_tools.md", options_markdown(PrepareOptions)),
        "captions": ("docs/dataset_tools.md", options_markdown(CaptionsOptions)),
        "fetch-tagger": ("docs/dataset_tools.md", options_markdown(FetchTaggerOptions)),
        "evaluate": ("docs/evaluation.md", options_markdown(EvaluateConfig)),
        "export": ("docs/sharing.md", options_markdown(ExportConfig)),
        "card": ("docs/sharing.md", options_markdown(CardOptions)),
        "push": ("docs/sharing.md", options_markdown(PushOptions)),
    }


def _section(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- options: {re.escape(name)} -->\n)(.*?)(<!-- /options -->)", re.S)


def stale_tables() -> list:
    """``[(name, doc)]`` of the tables whose text differs from the fields (or that are missing)."""
    stale = []
    for name, (doc, table) in _tables().items():
        match = _section(name).search((ROOT / doc).read_text(encoding="utf-8"))
        if match is None or match.group(2) != table:
            stale.append((name, doc))
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report out-of-date tables (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_tables()
        for name, doc in stale:
            print(f"{doc}: the '{name}' options table is out of date (run scripts/update_docs_options.py)")
        return 1 if stale else 0
    for name, (doc, table) in _tables().items():
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        if _section(name).search(text) is None:
            print(f"{doc}: no '<!-- options: {name} -->' section", file=sys.stderr)
            return 1
        path.write_text(_section(name).sub(lambda m: m.group(1) + table + m.group(3), text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
