"""The evaluation report: ``write_report(report, out_dir)`` writes report.json (every number,
with its sample size), report.md (the tables), report.html (tables, plots and a blind A/B
listening test) and PNG plots; ``verdict(report)`` is its one-paragraph conclusion.

The report is one JSON-able dict, filled by the ``evaluate`` pipeline; its schema is documented
by the TypedDicts in ``report_schema`` (``Report`` and its parts). In short::

    models           {"finetune": {name, path}, "base": {name, path, source}}  (source: how the base was chosen)
    data             {path, split, genres: {genre: {tracks, clips}}}            (the held-out tracks)
    settings         {duration, per_genre, seeds, generic_prompt, blind_seed}
    held_out_ce      {model: {per_codebook: [K], mean, perplexity, n_tokens, n_tokens_per_codebook: [K]}}
    genre_adherence  {model: {accuracy, n, labels, confusion: [asked][heard], mean_confidence}}
    classifier_ceiling {accuracy, n}                                          (on real held-out clips)
    fad              {embedding: {model: {fad, low, high, n_a, n_b}}}          (a: generated, b: real)
    fad_per_genre    {embedding: {genre: {model: {fad, low, high, n_a, n_b}}}} (optional)
    clap             {model: {mean, n}}
    sanity           {model: {flag: count, ..., n}, memorisation: {model: {flagged, n, max_overlap, threshold}}}
    clips            [{prompt, genre, seed, files: {model: relative wav path},
                       predictions: {model: {label, confidence}}, flags: {model: [flag]}}]
    notes            [str]
    verdict          str (written here)

``model`` is ``"finetune"`` or ``"base"``. Any section (and any embedding under ``fad``) may be
``{"note": "why it was not measured"}`` or absent: the report then says so, and never fails
for missing data.
"""
from __future__ import annotations

import copy
import html
import json
import os
import typing as tp
from pathlib import Path

from dataset_tools.atomic import write_text_atomic

from .report_html import render_html
from .report_plots import make_plots
from .report_schema import (BASE, FINETUNE, MODEL_LABELS, MODELS, Report, jsonable,
                            validate)
from .report_tables import Table, tables
from .report_verdict import verdict

JSON_FILE, MARKDOWN_FILE, HTML_FILE = "report.json", "report.md", "report.html"


def _md_cell(text: str) -> str:
    # Captions are user text: no raw HTML and no table-breaking pipes or newlines in report.md.
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(table: Table) -> str:
    out = [f"## {table.title}", ""]
    if table.about:
        out += [_md_cell(table.about), ""]
    if table.rows:
        out.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
        out.append("|" + "---|" * len(table.header))
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
        out.append("")
    out += [f"*{_md_cell(n)}*" + "\n" for n in table.notes]
    return "\n".join(out)


def render_markdown(report: dict, report_tables: tp.List[Table], plots: tp.List[tp.Tuple[str, str, str]],
                    notes: tp.List[str]) -> str:
    """report.md: the verdict, then each table with its plots (``(section, title, path)``), then notes."""
    models = report.get("models") or {}
    names = {m: (models.get(m) or {}).get("name") or MODEL_LABELS[m] for m in MODELS}
    out = ["# Does the fine-tune sound like your music?", "",
           f"**{_md_cell(names[FINETUNE])}** (fine-tune) against **{_md_cell(names[BASE])}** (base).", "",
           "## Verdict", "", _md_cell(report.get("verdict", "")), "",
           f"Listen to the clips blind (A/B, then reveal) in [{HTML_FILE}]({HTML_FILE}).", ""]
    keys = {t.key for t in report_tables}
    for t in report_tables:
        out.append(_md_table(t))
        out += [f"![{_md_cell(title)}]({path})\n" for key, title, path in plots if key == t.key]
    stray = [(title, path) for key, title, path in plots if key not in keys]
    if stray:
        out += ["## Plots", ""] + [f"![{_md_cell(title)}]({path})\n" for title, path in stray]
    if notes:
        out += ["## Notes", ""] + [f"- {_md_cell(n)}" for n in notes] + [""]
    return "\n".join(out)


def _relative_clip_paths(report: dict, folder: Path) -> None:
    """Absolute clip paths inside the report folder become relative (in place); others are
    left for ``validate`` to refuse."""
    root = os.path.realpath(folder)
    for clip in report.get("clips") or []:
        files = clip.get("files") or {}
        for model, path in files.items():
            if os.path.isabs(str(path)):
                real = os.path.realpath(path)
                if os.path.commonpath([root, real]) == root:
                    files[model] = Path(os.path.relpath(real, root)).as_posix()


def write_report(report: tp.Union[Report, dict], out_dir: tp.Union[str, os.PathLike]) -> tp.Dict[str, tp.Any]:
    """Write report.json, report.md, report.html and plots/*.png into ``out_dir`` (created).
    ``report`` is not modified; the written JSON is it (numpy values made plain, clip paths
    made relative) plus ``verdict``. Returns ``{"json", "markdown", "html": Path, "plots": [Path]}``.
    Raises ValueError (one line) for a report that breaks the schema; missing sections are notes."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data = jsonable(copy.deepcopy(dict(report)))
    _relative_clip_paths(data, folder)
    validate(data)
    data["verdict"] = verdict(data)
    plots, plot_notes = make_plots(data, folder)
    report_tables = tables(data)
    notes = [str(n) for n in data.get("notes") or []] + plot_notes
    paths = {"json": folder / JSON_FILE, "markdown": folder / MARKDOWN_FILE, "html": folder / HTML_FILE,
             "plots": [folder / p for _, _, p in plots]}
    write_text_atomic(paths["json"], json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    write_text_atomic(paths["markdown"], render_markdown(data, report_tables, plots, notes))
    write_text_atomic(paths["html"], render_html(data, report_tables, plots, notes, folder))
    return paths


__all__ = ["write_report", "verdict", "validate", "render_markdown", "Report"]
