"""The report's PNG plots (matplotlib's Agg backend, no display): per-codebook cross-entropy
bars (base vs fine-tune), one confusion matrix per model, per-genre FAD bars per embedding.

``make_plots(report, folder)`` draws what the report has data for and returns the plots it
wrote (the table each belongs beside, its title, its file name relative to the report folder)
and notes for those it could not draw: missing or malformed data means no plot and a note,
never an exception.
"""
from __future__ import annotations

import re
import typing as tp
from pathlib import Path

import numpy as np

from dataset_tools.atomic import atomic_path

from .report_schema import BASE, FINETUNE, MODEL_LABELS, MODELS, model_figures, note_of, tokens

PLOTS_DIR = "plots"
COLOURS = {FINETUNE: "#d95f02", BASE: "#7570b3"}


def _figure(width: float, height: float):
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _bars(ax, groups: tp.Sequence[str], values: tp.Dict[str, tp.Sequence[float]],
          errors: tp.Optional[tp.Dict[str, np.ndarray]] = None) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per model in ``values``."""
    x = np.arange(len(groups))
    width = 0.8 / max(len(values), 1)
    for i, (model, ys) in enumerate(values.items()):
        ax.bar(x + (i - (len(values) - 1) / 2) * width, ys, width, label=MODEL_LABELS[model],
               color=COLOURS[model], yerr=None if errors is None else errors[model], capsize=3)
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    tops = [max(ys) + (0 if errors is None else float(np.max(errors[m][1]))) for m, ys in values.items()]
    ax.set_ylim(0, 1.25 * max(max(tops), 1e-9))  # headroom: the legend sits above the bars
    ax.legend(loc="upper left", ncols=len(values))


def plot_ce(held_out_ce: dict, path: Path) -> None:
    figs = model_figures(held_out_ce)
    k = len(next(iter(figs.values()))["per_codebook"])
    values = {m: [float(v) for v in f["per_codebook"]] for m, f in figs.items()}
    if any(len(v) != k for v in values.values()):
        raise ValueError("the models have different numbers of codebooks")
    fig = _figure(max(5.5, 1.6 + 1.2 * k), 3.8)
    ax = fig.subplots()
    _bars(ax, [f"codebook {i + 1}" for i in range(k)], values)
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"Held-out cross-entropy per codebook, lower is better\n"
                 f"({tokens(figs[FINETUNE])})", fontsize=10)
    _save(fig, path)


def plot_confusion(adherence: dict, model: str, path: Path) -> None:
    labels = list(adherence["labels"])
    matrix = np.asarray(adherence["confusion"], dtype=float).reshape(len(labels), len(labels))
    size = 2.2 + 0.55 * len(labels)
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.set_xlabel("heard as (classifier)")
    ax.set_ylabel("asked for (prompt)")
    ax.set_title(f"{MODEL_LABELS[model]}: accuracy {100 * adherence['accuracy']:.0f} % "
                 f"(n={adherence['n']})", fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the row")
    _save(fig, path)


def plot_fad_per_genre(per_genre: dict, embedding: str, path: Path) -> None:
    genres = [g for g, section in per_genre.items() if len(model_figures(section)) == len(MODELS)]
    if not genres:
        raise ValueError("no genre has figures for both models")
    values, errors = {}, {}
    for m in MODELS:
        figs = [per_genre[g][m] for g in genres]
        values[m] = [float(f["fad"]) for f in figs]
        if all(f.get("low") is not None and f.get("high") is not None for f in figs):
            errors[m] = np.array([[f["fad"] - f["low"] for f in figs], [f["high"] - f["fad"] for f in figs]])
    fig = _figure(max(5.5, 2.0 + 1.3 * len(genres)), 3.8)
    ax = fig.subplots()
    _bars(ax, genres, values, errors if len(errors) == len(MODELS) else None)
    ax.set_ylabel("FAD (lower is closer)")
    n_a = per_genre[genres[0]][FINETUNE].get("n_a")
    ax.set_title(f"FAD to the held-out clips per genre, {embedding} embeddings\n"
                 f"({n_a} generated clips per genre and model)", fontsize=10)
    _save(fig, path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def make_plots(report: dict, folder: Path) -> tp.Tuple[tp.List[tp.Tuple[str, str, str]], tp.List[str]]:
    """Draw every plot ``report`` has data for into ``folder/plots/``. Returns
    ``([(section, title, "plots/name.png")], [note, ...])``; ``section`` is the report key of
    the table the plot belongs beside."""
    folder = Path(folder)
    plots, notes = [], []
    jobs = []
    ce = report.get("held_out_ce")
    if len(model_figures(ce)) == len(MODELS):
        jobs.append(("held_out_ce", "Held-out cross-entropy per codebook", "ce_per_codebook.png",
                     lambda p: plot_ce(ce, p)))
    else:
        notes.append(f"No cross-entropy plot: {note_of(ce) or 'figures for both models are needed'}.")
    adherence = report.get("genre_adherence")
    figs = model_figures(adherence)
    for model in MODELS:
        if model in figs:
            jobs.append(("genre_adherence", f"Confusion matrix, {MODEL_LABELS[model]}",
                         f"confusion_{model}.png", lambda p, m=model: plot_confusion(figs[m], m, p)))
    if not figs:
        notes.append(f"No confusion matrices: {note_of(adherence) or 'no genre adherence figures'}.")
    per_genre = report.get("fad_per_genre")
    if isinstance(per_genre, dict) and note_of(per_genre) is None:
        for embedding, section in per_genre.items():
            if isinstance(section, dict) and note_of(section) is None:
                jobs.append(("fad_per_genre", f"FAD per genre, {embedding} embeddings",
                             f"fad_per_genre_{_slug(embedding)}.png",
                             lambda p, s=section, e=embedding: plot_fad_per_genre(s, e, p)))
    # (no per-genre FAD: nothing to say; the FAD table already covers the overall figures)
    for section, title, name, draw in jobs:
        try:
            draw(folder / PLOTS_DIR / name)
        except (KeyError, TypeError, ValueError, IndexError, StopIteration) as exc:
            notes.append(f"No plot '{title}': its data is incomplete ({type(exc).__name__}: {exc}).")
            continue
        plots.append((section, title, f"{PLOTS_DIR}/{name}"))
    return plots, notes
