"""The evaluation report's schema: one JSON-able dict that the ``evaluate`` pipeline fills and
``report.write_report`` renders. The TypedDicts below document it (they are plain dicts at
run time); ``validate`` checks a filled report and ``jsonable`` makes numpy values JSON values.

Conventions:

* Per-model sections are keyed by ``"finetune"`` and ``"base"`` (``MODELS``).
* **Every number carries its sample size**: a figure's dict holds ``n`` (clips), ``n_tokens``
  (held-out tokens, all codebooks) or ``n_a``/``n_b`` (the two clip sets of a FAD) next to the value.
* Extra keys (e.g. the metrics' ``per_clip`` lists) are kept in report.json and ignored by the renderer.
* **A section that could not be measured is ``{"note": "why not"}``** (or simply absent; the
  renderer then says "not measured"). ``fad`` holds one entry per embedding, each either the
  per-model figures or a note. Missing data gives a note in the report, never an error.
* Clip paths (``clips[i]["files"]``) are relative to the report folder, so the folder can be
  moved or zipped; absolute paths inside it are accepted and made relative.
"""
from __future__ import annotations

import math
import typing as tp

FINETUNE, BASE = "finetune", "base"
MODELS = (FINETUNE, BASE)
MODEL_LABELS = {FINETUNE: "fine-tune", BASE: "base"}


class ModelInfo(tp.TypedDict, total=False):
    name: str           # shown in the report: the run's name, "facebook/musicgen-small"
    path: str           # the folder or hub name it was loaded from
    source: str         # base only: how it was chosen ("recorded in the export", "--base")


class GenreCounts(tp.TypedDict):
    tracks: int         # held-out tracks of this genre
    clips: int          # held-out clips (segments) cut from them


class DataInfo(tp.TypedDict, total=False):
    path: str           # the prepared dataset
    split: str          # "valid": the held-out tracks, never trained on
    genres: tp.Dict[str, GenreCounts]


class Settings(tp.TypedDict, total=False):
    duration: float     # seconds per generated clip
    per_genre: int      # generated clips per genre and model
    seeds: tp.List[int]  # the seeds used (clip i: seed + i), identical for both models
    generic_prompt: str  # the "unconditional-ish" prompt, if any
    blind_seed: int     # seeds the A/B order of the blind test (default 0)


class CrossEntropy(tp.TypedDict):
    per_codebook: tp.List[float]  # [K] nats per token on the held-out clips, as the training objective
    mean: float                   # mean of the K per-codebook values (the training loss)
    perplexity: float             # exp(mean)
    n_tokens: int                 # valid tokens the figures rest on, all codebooks together
    n_tokens_per_codebook: tp.List[int]  # [K] (optional; the delay pattern makes them differ slightly)


class Adherence(tp.TypedDict):
    accuracy: float               # fraction of clips heard as the genre their prompt asked for
    n: int                        # clips classified
    labels: tp.List[str]          # the classifier's genres: rows and columns of ``confusion``
    confusion: tp.List[tp.List[int]]  # [asked][heard] clip counts, len(labels) x len(labels)
    mean_confidence: float        # mean probability of the predicted genre


class Ceiling(tp.TypedDict):
    accuracy: float               # the classifier's accuracy on the real held-out clips
    n: int


class FadFigure(tp.TypedDict, total=False):
    fad: float                    # Fréchet distance, generated clips (a) vs real held-out clips (b)
    low: float                    # bootstrap interval of ``fad``
    high: float
    n_a: int                      # generated clips
    n_b: int                      # real clips
    level: float                  # the interval's confidence level, e.g. 0.9 (optional)


class ClapScore(tp.TypedDict):
    mean: float                   # mean cosine similarity of prompt and clip embeddings
    n: int


class Memorisation(tp.TypedDict, total=False):
    flagged: int                  # generated clips whose nearest training clip shares too many tokens
    n: int
    max_overlap: float            # the highest overlap seen (0..1)
    threshold: float              # overlap at or above which a clip is flagged


class Prediction(tp.TypedDict):
    label: str                    # the genre the classifier heard
    confidence: float


class ClipRow(tp.TypedDict, total=False):
    prompt: str
    genre: tp.Optional[str]       # the genre asked for (None for the generic prompt)
    seed: int                     # the clip's own seed (its prompt alone with it gives the clip)
    files: tp.Dict[str, str]      # model -> WAV path relative to the report folder
    predictions: tp.Dict[str, Prediction]
    flags: tp.Dict[str, tp.List[str]]  # model -> sanity flags raised on this clip


class Report(tp.TypedDict, total=False):
    models: tp.Dict[str, ModelInfo]
    data: DataInfo
    settings: Settings
    held_out_ce: tp.Dict[str, CrossEntropy]
    genre_adherence: tp.Dict[str, Adherence]
    classifier_ceiling: Ceiling
    fad: tp.Dict[str, tp.Dict[str, FadFigure]]                # embedding -> model -> figure
    fad_per_genre: tp.Dict[str, tp.Dict[str, tp.Dict[str, FadFigure]]]  # embedding -> genre -> model
    clap: tp.Dict[str, ClapScore]
    sanity: tp.Dict[str, tp.Any]   # model -> {flag: count, ..., "n": clips}; "memorisation": model -> Memorisation
    clips: tp.List[ClipRow]
    notes: tp.List[str]
    verdict: str                   # written by ``write_report`` (report_verdict.verdict)


# Which key holds the sample size of each per-model section's figures.
SAMPLE_SIZE = {"held_out_ce": ("n_tokens",), "genre_adherence": ("n",), "clap": ("n",),
               "fad": ("n_a", "n_b"), "fad_per_genre": ("n_a", "n_b")}


def note_of(section) -> tp.Optional[str]:
    """The reason a section was not measured, or None when it holds figures."""
    if section is None:
        return "not measured"
    if isinstance(section, dict) and "note" in section:
        return str(section["note"])
    return None


def model_figures(section) -> tp.Dict[str, dict]:
    """``{model: figure}`` of a per-model section, in MODELS order, skipping absent models."""
    if not isinstance(section, dict) or "note" in section:
        return {}
    return {m: section[m] for m in MODELS if isinstance(section.get(m), dict)}


def validate(report: dict) -> None:
    """Raise ValueError (one line) when a present section breaks the schema: a figure without
    its sample size, a confusion matrix that does not match its labels, a clip path that
    leaves the report folder. Absent sections and notes are fine."""
    if not isinstance(report, dict):
        raise ValueError(f"the report must be a dict, not {type(report).__name__}")
    for section, keys in SAMPLE_SIZE.items():
        value = report.get(section)
        if section.startswith("fad"):
            groups = value.values() if isinstance(value, dict) else []
            if section == "fad_per_genre":
                groups = [g for emb in groups if isinstance(emb, dict) and "note" not in emb
                          for g in emb.values()]
        else:
            groups = [value]
        for group in groups:
            for model, figure in model_figures(group).items():
                missing = [k for k in keys if k not in figure]
                if missing:
                    raise ValueError(f"report[{section!r}] figure for {model!r} lacks its sample size "
                                     f"{', '.join(missing)}")
    for model, adh in model_figures(report.get("genre_adherence")).items():
        labels, confusion = adh.get("labels", []), adh.get("confusion", [])
        if len(confusion) != len(labels) or any(len(row) != len(labels) for row in confusion):
            raise ValueError(f"report['genre_adherence'][{model!r}]: the confusion matrix must be "
                             f"{len(labels)} x {len(labels)} (one row and column per label)")
    ceiling = report.get("classifier_ceiling")
    if isinstance(ceiling, dict) and note_of(ceiling) is None and "n" not in ceiling:
        raise ValueError("report['classifier_ceiling'] lacks its sample size n")
    for i, clip in enumerate(report.get("clips") or []):
        for model, path in (clip.get("files") or {}).items():
            if str(path).startswith("/") or ".." in str(path).replace("\\", "/").split("/"):
                raise ValueError(f"clip {i} ({model}): {path!r} is not a path inside the report folder")


def jsonable(value):
    """``value`` with numpy scalars and arrays turned into Python numbers and lists, tuples
    into lists, and NaN/inf into None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy array or scalar
        return jsonable(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


# --- number formatting shared by the markdown, the HTML and the verdict ----------------------

def num(x, digits: int = 2) -> str:
    """A figure for people: 2 decimals below 10, 1 below 100, none above; two significant digits
    below 0.01 (a FAD on a small embedding scale, 1.2e-05, is not "0.00"); "n/a" for None."""
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    if 0 < abs(x) < 0.5 * 10 ** -digits:
        return f"{x:.2g}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{1 if abs(x) >= 10 else digits}f}"


def pct(x) -> str:
    """0.625 -> "62 %" (rounded half to even, as Python rounds)."""
    return "n/a" if x is None else f"{100 * float(x):.0f} %"


def count(n) -> str:
    """1234 -> "1,234"."""
    return "n/a" if n is None else f"{int(n):,}"


def tokens(figure: dict) -> str:
    """What a cross-entropy figure rests on: "4,936 tokens (1,234 per codebook)"."""
    per = figure.get("n_tokens_per_codebook") or []
    if not per:
        return f"{count(figure.get('n_tokens'))} tokens"
    each = count(min(per)) if min(per) == max(per) else f"{count(min(per))}-{count(max(per))}"
    return f"{count(figure.get('n_tokens'))} tokens ({each} per codebook)"
