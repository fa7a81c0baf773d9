"""Classification metrics (plain numpy) and the confusion-matrix picture.

Conventions: ``y_true``/``y_pred`` are ``[n]`` integer label indices, ``probs`` ``[n, n_labels]``;
confusion matrices are ``[true, predicted]`` (rows: the real genre).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def per_class_scores(matrix: np.ndarray, labels: Sequence[str]) -> dict:
    """Precision, recall, F1 and support per label (0 where undefined)."""
    scores = {}
    for i, label in enumerate(labels):
        tp = matrix[i, i]
        predicted, support = matrix[:, i].sum(), matrix[i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                         "support": int(support)}
    return scores


def macro_f1(matrix: np.ndarray, labels: Sequence[str]) -> float:
    """Mean F1 over the labels that occur in the truth or the predictions (as scikit-learn does)."""
    scores = per_class_scores(matrix, labels)
    present = [i for i in range(len(labels)) if matrix[i].sum() or matrix[:, i].sum()]
    return float(np.mean([scores[labels[i]]["f1"] for i in present])) if present else 0.0


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    """ECE: |confidence - accuracy| averaged over equal-width confidence bins, weighted by count.

    0 means "when the model says 80 %, it is right 80 % of the time"; this is what makes a
    ``--min-confidence`` threshold mean something.
    """
    if len(y_true) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(ece)


def summarise(y_true: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class scores, confusion, ECE and NLL for one level (track or segment)."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1) if len(y_true) else np.zeros(0, dtype=int)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1)))) if len(y_true) else 0.0
    return {
        "count": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": macro_f1(matrix, labels),
        "ece": expected_calibration_error(probs, y_true),
        "nll": nll,
        "mean_confidence": float(probs.max(axis=1).mean()) if len(y_true) else 0.0,
        "per_class": per_class_scores(matrix, labels),
        "confusion": matrix.tolist(),
    }


def plot_confusion(matrix, labels: Sequence[str], path, title: str) -> Path:
    """Save a confusion matrix (counts, rows normalised for the colour) as PNG."""
    import matplotlib
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = 1.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted genre")
    ax.set_ylabel("true genre")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true genre's tracks")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % for z = 1.96) of a proportion ``correct / total``.

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0 % or 100 %,
    which is what small test sets produce (10/10 correct: [0.72, 1.0]).
    """
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
