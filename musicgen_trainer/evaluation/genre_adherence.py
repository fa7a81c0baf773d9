"""Genre adherence: does the user's genre classifier hear a "jazz" prompt's clip as jazz?

Each generated clip is scored by ``genre_classifier``'s own code (`score_audio`: the same
features, windows and window averaging as ``genre_classifier evaluate`` gives a file), so real
held-out clips passed here score exactly as the classifier's evaluation scores them: that
accuracy is the ceiling a fine-tune can reach on this measure.
"""
from __future__ import annotations

import typing as tp

import numpy as np


def genre_adherence(classifier, waves: tp.Sequence[np.ndarray], sample_rate: int,
                    intended_genres: tp.Sequence[str]) -> dict:
    """Score clips against the genres their prompts asked for.

    Args:
        classifier: a ``genre_classifier`` `Classifier` or its model folder.
        waves: N clips, each ``[n]`` or ``[C, n]`` float samples at ``sample_rate``.
        intended_genres: N genre names, each one of the classifier's labels.
    Returns:
        JSON-ready ``{"accuracy", "n", "n_scored", "labels", "confusion", "mean_confidence",
        "per_genre", "per_clip"}``: ``confusion`` is a list of lists, rows the intended genre and
        columns the predicted one (in ``labels`` order, scored clips only); ``per_clip`` is
        ``[{"intended", "predicted", "confidence"}]`` (+ ``"reason"`` for a clip the classifier
        cannot score, e.g. silent: predicted None, confidence 0, and counted as a miss, since a
        silent "jazz" clip is not jazz). ``mean_confidence`` is the mean top probability over the
        scored clips; ``per_genre`` gives each intended genre's ``{"accuracy", "n"}``.
    Raises:
        ValueError: counts differ, or a genre the classifier does not know.
    """
    from genre_classifier.inference import score_audio
    from genre_classifier.metrics import confusion_matrix
    from genre_classifier.model_folder import Classifier, load_classifier

    if len(waves) != len(intended_genres):
        raise ValueError(f"{len(waves)} clips but {len(intended_genres)} intended genres: give one genre per clip")
    if not isinstance(classifier, Classifier):
        classifier = load_classifier(classifier)
    labels = list(classifier.labels)
    unknown = sorted(set(intended_genres) - set(labels))
    if unknown:
        raise ValueError(f"genre(s) {', '.join(unknown)} unknown to the classifier (it knows {', '.join(labels)})")
    index = {name: i for i, name in enumerate(labels)}
    per_clip, true, pred, confidences = [], [], [], []
    for genre, scores in zip(intended_genres, score_audio(waves, sample_rate, classifier)):
        if not scores.ok:
            per_clip.append({"intended": genre, "predicted": None, "confidence": 0.0, "reason": scores.reason})
            continue
        best = int(np.argmax(scores.probs))
        confidence = float(scores.probs[best])
        per_clip.append({"intended": genre, "predicted": labels[best], "confidence": confidence})
        true.append(index[genre])
        pred.append(best)
        confidences.append(confidence)
    hits = [c["predicted"] == c["intended"] for c in per_clip]
    per_genre = {}
    for genre in labels:
        mine = [h for c, h in zip(per_clip, hits) if c["intended"] == genre]
        if mine:
            per_genre[genre] = {"accuracy": float(np.mean(mine)), "n": len(mine)}
    return {
        "accuracy": float(np.mean(hits)) if hits else 0.0,
        "n": len(per_clip),
        "n_scored": len(true),
        "labels": labels,
        "confusion": confusion_matrix(np.array(true, dtype=int), np.array(pred, dtype=int), len(labels)).tolist(),
        "mean_confidence": float(np.mean(confidences)) if confidences else 0.0,
        "per_genre": per_genre,
        "per_clip": per_clip,
    }
