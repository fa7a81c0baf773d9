"""The report's verdict: one paragraph in plain words, with the numbers that support it.

Warnings come first (the classic failures: clips that are mostly silence, clipped or stuck in a
loop; a fine-tune that reproduces its training audio), then one sentence per measure, then an
overall sentence. A difference is only called a difference when it passes the rule named here:

* cross-entropy: the means differ by more than ``CE_CLEAR_NATS`` nats per token (the figures
  rest on thousands of tokens, so their own noise is far smaller than this);
* genre adherence: a two-proportion z-test on the clip counts, ``|z| > Z_CLEAR``;
* FAD: the two bootstrap intervals do not overlap (no interval: no claim);
* CLAP: the means differ by more than ``CLAP_CLEAR``.

The genre figures are qualified when the classifier itself is weak on real clips (accuracy
below ``WEAK_CEILING`` or below ``WEAK_CEILING_OVER_CHANCE`` times chance).
"""
from __future__ import annotations

import math
import typing as tp

from .report_schema import BASE, FINETUNE, count, model_figures, note_of, num, pct, tokens

CE_CLEAR_NATS = 0.05
Z_CLEAR = 1.96
CLAP_CLEAR = 0.05
FLAG_WARN_FRACTION = 0.10       # warn when at least this share of the fine-tune's clips is flagged
MEMORISATION_WARN_COUNT = 1     # warn when at least this many fine-tune clips look memorised
WEAK_CEILING = 0.5
WEAK_CEILING_OVER_CHANCE = 1.5

# sanity.py's flag names first; the others are accepted for hand-made reports.
FLAG_WORDS = {"silent": "mostly silence", "clipped": "clipped", "repetitive": "stuck in a repeating loop",
              "silence": "mostly silence", "clipping": "clipped", "loop": "stuck in a repeating loop"}

BETTER, WORSE, SAME = 1, -1, 0


def _pair(section, key: str) -> tp.Optional[tp.Tuple[dict, dict]]:
    """(fine-tune, base) figures of a per-model section when both hold a number under ``key``
    (a failed figure is None in the JSON: no comparison then)."""
    figs = model_figures(section)
    if len(figs) < 2 or any(not isinstance(f.get(key), (int, float)) for f in figs.values()):
        return None
    return figs[FINETUNE], figs[BASE]


def _because(section) -> str:
    """" (why)" after "was not measured": the section's note, nothing for an absent section."""
    return "" if section is None else f" ({note_of(section) or 'no figures for both models'})"


def _warnings(report: dict) -> tp.List[str]:
    out = []
    sanity = report.get("sanity") if isinstance(report.get("sanity"), dict) else {}
    ft, base = ({}, {}) if note_of(sanity) else (model_figures(sanity).get(m, {}) for m in (FINETUNE, BASE))
    n = ft.get("n") or 0
    for flag, k in ft.items():
        if flag == "n" or not isinstance(k, (int, float)) or not n or k / n < FLAG_WARN_FRACTION:
            continue
        base_part = (f"; base: {count(base[flag])} of {count(base.get('n'))}"
                     if isinstance(base.get(flag), (int, float)) else "")
        out.append(f"Warning: {count(k)} of {count(n)} fine-tune clips are "
                   f"{FLAG_WORDS.get(flag, 'flagged ' + repr(flag))}{base_part}.")
    memo = sanity.get("memorisation") if isinstance(sanity.get("memorisation"), dict) else {}
    m = model_figures(memo).get(FINETUNE, {})
    if (m.get("flagged") or 0) >= MEMORISATION_WARN_COUNT:
        detail = []
        if m.get("max_overlap") is not None:
            detail.append(f"token overlap up to {pct(m['max_overlap'])}")
        if m.get("threshold") is not None:
            detail.append(f"threshold {pct(m['threshold'])}")
        control = model_figures(memo).get(BASE, {})
        if (control.get("flagged") or 0) > 0:  # the base never saw the training set: a control
            detail.append(f"base: {count(control['flagged'])} of {count(control.get('n'))}, so some of this "
                          "may be common patterns rather than copying")
        out.append(f"Warning: {count(m['flagged'])} of {count(m.get('n'))} fine-tune clips reproduce "
                   f"training audio almost verbatim{' (' + '; '.join(detail) + ')' if detail else ''}: "
                   "the model is memorising; train fewer steps, on more music, or keep an earlier export.")
    return out


def _ce(report: dict) -> tp.Tuple[tp.Optional[str], tp.Optional[int]]:
    pair = _pair(report.get("held_out_ce"), "mean")
    if pair is None:
        return f"Held-out cross-entropy was not measured{_because(report.get('held_out_ce'))}.", None
    ft, base = pair
    numbers = f"cross-entropy {num(ft['mean'])} vs {num(base['mean'])} on {tokens(ft)}"
    diff = ft["mean"] - base["mean"]
    if diff < -CE_CLEAR_NATS:
        return f"The fine-tune predicts your held-out music better than the base ({numbers}).", BETTER
    if diff > CE_CLEAR_NATS:
        return (f"The fine-tune predicts your held-out music worse than the base ({numbers}): "
                "it has drifted away from music like yours, often a sign of overfitting.", WORSE)
    return f"The fine-tune predicts your held-out music about as well as the base ({numbers}).", SAME


def _two_proportions(p1: float, n1: int, p2: float, n2: int) -> int:
    if not n1 or not n2:
        return SAME
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return SAME
    z = (p1 - p2) / se
    return BETTER if z > Z_CLEAR else WORSE if z < -Z_CLEAR else SAME


def _genre(report: dict) -> tp.Tuple[str, tp.Optional[int]]:
    pair = _pair(report.get("genre_adherence"), "accuracy")
    if pair is None:
        return f"Genre adherence was not measured{_because(report.get('genre_adherence'))}.", None
    ft, base = pair
    ceiling = report.get("classifier_ceiling")
    if isinstance(ceiling, dict) and note_of(ceiling) is None and ceiling.get("accuracy") is not None:
        ceil = f"the classifier itself gets {pct(ceiling['accuracy'])} on real clips, n={count(ceiling.get('n'))}"
        chance = 1 / max(len(ft.get("labels") or []), 1)
        weak = ceiling["accuracy"] < max(WEAK_CEILING, WEAK_CEILING_OVER_CHANCE * chance)
    else:
        ceil, weak = "the classifier's own accuracy on real clips was not measured", False
    text = (f"Its clips are heard as the genre asked for {pct(ft['accuracy'])} of the time "
            f"(base {pct(base['accuracy'])}, n={count(ft.get('n'))} clips each; {ceil})")
    if weak:
        return text + ", so the classifier is too unreliable for these figures to say much.", None
    outcome = _two_proportions(ft["accuracy"], ft.get("n") or 0, base["accuracy"], base.get("n") or 0)
    if outcome == SAME:
        text += ": not a clear difference with this many clips"
    elif outcome == WORSE:
        text += ": the fine-tune follows the genre less often than the base"
    return text + ".", outcome


def _fad(report: dict) -> tp.Tuple[tp.List[str], tp.List[int]]:
    sentences, outcomes = [], []
    fad = report.get("fad")
    if not isinstance(fad, dict) or not fad or note_of(fad) is not None:
        return [f"FAD was not measured{_because(fad)}."], []
    for embedding, section in fad.items():
        pair = _pair(section, "fad")
        if pair is None:
            continue  # notes for unavailable embeddings are listed in the report, not the verdict
        ft, base = pair
        numbers = (f"{num(ft.get('fad'))} vs {num(base.get('fad'))}, lower is closer; "
                   f"{count(ft.get('n_a'))} generated vs {count(ft.get('n_b'))} real clips")
        has_interval = all(isinstance(f.get(k), (int, float)) for f in (ft, base) for k in ("low", "high"))
        if not has_interval:
            sentences.append(f"FAD to your held-out music on {embedding} embeddings: {numbers} "
                             "(no bootstrap interval, so no claim either way).")
            continue
        intervals = (f"intervals {num(ft['low'])}-{num(ft['high'])} and "
                     f"{num(base['low'])}-{num(base['high'])}")
        if ft["high"] < base["low"]:
            outcome, words = BETTER, "the fine-tune's clips are clearly closer to your music"
        elif ft["low"] > base["high"]:
            outcome, words = WORSE, "the fine-tune's clips are clearly further from your music than the base's"
        else:
            outcome, words = SAME, "the intervals overlap: not a clear difference with this few clips"
        sentences.append(f"FAD to your held-out music on {embedding} embeddings: {numbers} "
                         f"({intervals}): {words}.")
        outcomes.append(outcome)
    if not sentences:
        sentences.append("FAD was not measured (no embedding was available).")
    return sentences, outcomes


def _clap(report: dict) -> tp.Tuple[tp.Optional[str], tp.Optional[int]]:
    pair = _pair(report.get("clap"), "mean")
    if pair is None:
        return None, None  # optional: its absence is noted in the report's table
    ft, base = pair
    diff = ft["mean"] - base["mean"]
    outcome = BETTER if diff > CLAP_CLEAR else WORSE if diff < -CLAP_CLEAR else SAME
    words = {BETTER: "the fine-tune's clips match their prompts better",
             WORSE: "the fine-tune's clips match their prompts less well",
             SAME: "about the same"}[outcome]
    return (f"Text-audio agreement (CLAP) is {num(ft['mean'])} vs {num(base['mean'])} "
            f"(n={count(ft.get('n'))}): {words}.", outcome)


def verdict(report: dict) -> str:
    """One paragraph: warnings, then each measure with its numbers and sample sizes, then an
    overall sentence counting the clear differences. Missing sections are said, not guessed."""
    warnings = _warnings(report)
    parts = list(warnings)
    outcomes = []
    for sentence, outcome in (_ce(report), _genre(report)):
        parts.append(sentence)
        if outcome is not None:
            outcomes.append(outcome)
    fad_sentences, fad_outcomes = _fad(report)
    parts += fad_sentences
    outcomes += fad_outcomes
    sentence, outcome = _clap(report)
    if sentence:
        parts.append(sentence)
        outcomes.append(outcome)
    better, worse = outcomes.count(BETTER), outcomes.count(WORSE)
    measured = len(outcomes)
    if not measured:
        overall = "Overall: nothing could be compared, so there is no verdict."
    elif better and not worse:
        overall = (f"Overall: the fine-tune is clearly better on {better} of {measured} measures "
                   "and clearly worse on none.")
    elif worse and not better:
        overall = (f"Overall: the fine-tune is clearly worse on {worse} of {measured} measures "
                   "and clearly better on none.")
    elif better and worse:
        overall = (f"Overall: mixed; clearly better on {better} and clearly worse on {worse} "
                   f"of {measured} measures.")
    else:
        overall = f"Overall: no clear difference from the base on any of {measured} measures."
    if warnings:
        overall += " Listen to the flagged clips before trusting the figures."
    parts.append(overall + " The blind A/B test in report.html lets you judge by ear.")
    return " ".join(parts)
