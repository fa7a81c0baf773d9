"""The measures of ``evaluate``: everything computed from the two models' clips once both have
generated, filled into the report dict (``report_schema``): genre adherence and the classifier's
ceiling, FAD per embedding (overall and per genre), CLAP scores, sanity flags, memorisation.

``runs`` maps ``"finetune"``/``"base"`` to what each model produced (``evaluate.ModelRun``: clips
``[C, T]`` at ``rate`` and codes ``[K, F]``, in ``plan`` order); ``real_waves`` are the real
held-out clips ``[n]`` at ``rate``, ``real_clips`` their ``data.Clip``.
"""
from __future__ import annotations

import typing as tp

import numpy as np

from .fad import fad_with_interval
from .report_schema import MODELS

MIN_PER_GENRE_FAD = 4      # clips in each set before a per-genre FAD is given (below: too noisy to show)
N_BOOT = 200               # bootstrap replicates of each FAD interval


def _fad_section(real: np.ndarray, generated: tp.Dict[str, np.ndarray], seed: int) -> dict:
    if real.shape[0] < 2:
        return {"note": f"{real.shape[0]} real held-out clip(s): a FAD needs at least 2"}
    out = {}
    for model, emb in generated.items():
        if emb.shape[0] < 2:
            return {"note": f"{emb.shape[0]} generated clip(s) per model: a FAD needs at least 2"}
        out[model] = fad_with_interval(emb, real, n_boot=N_BOOT, seed=seed)
    return out


def measure(report: dict, runs: dict, plan, real_waves, real_clips, rate: int, codec,
            classifier, clap, train_codes, config) -> None:
    """Fill the measures of ``report`` (genre adherence, FAD, CLAP, sanity, memorisation) in place.
    ``classifier``/``clap``: None when not available (the report then holds notes); ``codec``: the
    fine-tune's compression model (EnCodec embeddings of every set); ``train_codes``: ``[K, T_i]``
    of the run's training clips; ``config``: the ``EvaluateConfig`` (its seed)."""
    from .embeddings import clap_embeddings, clap_scores, classifier_embeddings, encodec_embeddings
    from .genre_adherence import genre_adherence
    from .sanity import (MEMORISATION_THRESHOLD, memorisation_overlap, sanity_flags, sanity_measures,
                         training_ngrams)

    genre_rows = [i for i, p in enumerate(plan) if p.genre is not None]
    # Genre adherence and the ceiling: clips whose genre the classifier knows.
    if classifier is not None:
        labels = set(classifier.labels)
        scored = [i for i in genre_rows if plan[i].genre in labels]
        real_scored = [i for i, c in enumerate(real_clips) if c.genre in labels]
        unknown = sorted({plan[i].genre for i in genre_rows} - labels)
        if unknown:
            report["notes"].append(f"Genre(s) {', '.join(unknown)} unknown to the classifier: left out of the genre "
                                   f"figures.")
        if scored:
            report["genre_adherence"] = {m: genre_adherence(classifier, [runs[m].waves[i] for i in scored], rate,
                                                            [plan[i].genre for i in scored]) for m in MODELS}
            for m in MODELS:
                for i, clip in zip(scored, report["genre_adherence"][m]["per_clip"]):
                    if clip["predicted"] is not None:
                        report["clips"][i].setdefault("predictions", {})[m] = {
                            "label": clip["predicted"], "confidence": clip["confidence"]}
        else:
            report["genre_adherence"] = {"note": "no generated clip asked for a genre the classifier knows"}
        if real_scored:
            ceiling = genre_adherence(classifier, [real_waves[i] for i in real_scored], rate,
                                      [real_clips[i].genre for i in real_scored])
            report["classifier_ceiling"] = {"accuracy": ceiling["accuracy"], "n": ceiling["n"],
                                            "per_genre": ceiling["per_genre"]}
        else:
            report["classifier_ceiling"] = {"note": "no held-out clip of a genre the classifier knows"}

    # FAD: each model's genre-prompted clips (all clips when the dataset has no genres) against the
    # real held-out clips, per embedding.
    fad_rows = genre_rows or list(range(len(plan)))
    embedders = {"encodec": lambda w, r: encodec_embeddings(codec, w, r)}
    if classifier is not None:
        embedders = {"classifier": lambda w, r: classifier_embeddings(classifier, w, r), **embedders}
    if clap is not None:
        embedders["clap"] = lambda w, r: clap_embeddings(clap, w, r)[0]
    if not real_waves:
        report["fad"] = {"note": "no real held-out clips to compare with"}
    else:
        report["fad"], report["fad_per_genre"] = {}, {}
        genres = sorted({plan[i].genre for i in genre_rows})
        for name, embed in embedders.items():
            real = embed(real_waves, rate)
            gen = {m: embed([runs[m].waves[i] for i in fad_rows], rate) if fad_rows else np.zeros((0, 1))
                   for m in MODELS}
            report["fad"][name] = _fad_section(real, gen, config.seed)
            per_genre = {}
            for g in genres:
                rows = [k for k, i in enumerate(genre_rows) if plan[i].genre == g]
                real_rows = [k for k, c in enumerate(real_clips) if c.genre == g]
                if len(rows) >= MIN_PER_GENRE_FAD and len(real_rows) >= MIN_PER_GENRE_FAD:
                    per_genre[g] = _fad_section(real[real_rows], {m: gen[m][rows] for m in MODELS}, config.seed)
            report["fad_per_genre"][name] = per_genre or {
                "note": f"no genre has {MIN_PER_GENRE_FAD} generated and {MIN_PER_GENRE_FAD} real clips"}

    if clap is not None:
        report["clap"] = {}
        for m in MODELS:
            scores = clap_scores(clap, [p.prompt for p in plan], runs[m].waves, rate)
            report["clap"][m] = {"mean": float(np.mean(scores)), "n": len(scores), "per_clip": scores.tolist()}
            for row, s in zip(report["clips"], scores):
                row.setdefault("clap", {})[m] = float(s)
    else:
        report["clap"] = {"note": "no CLAP model (see the notes)"}

    report["sanity"] = {"memorisation": {}}
    index = training_ngrams(train_codes) if train_codes else None
    for m in MODELS:
        counts = {"silent": 0, "clipped": 0, "repetitive": 0, "n": len(plan)}
        overlaps = []
        for row, wave, codes in zip(report["clips"], runs[m].waves, runs[m].codes):
            flags = sanity_flags(wave, rate, codes)
            row.setdefault("flags", {})[m] = flags
            row.setdefault("measures", {})[m] = sanity_measures(wave, rate, codes)
            for f in flags:
                counts[f] += 1
            if train_codes:
                overlaps.append(memorisation_overlap(codes, train_codes, index=index))
                row.setdefault("memorisation", {})[m] = overlaps[-1]
        report["sanity"][m] = counts
        report["sanity"]["memorisation"][m] = (
            {"flagged": int(sum(o >= MEMORISATION_THRESHOLD for o in overlaps)), "n": len(overlaps),
             "max_overlap": float(max(overlaps)), "threshold": MEMORISATION_THRESHOLD}
            if overlaps else {"note": "no training codes to compare with"})
