"""The report's tables, built once as plain text cells and rendered by both report.md and
report.html: ``tables(report) -> [Table]``. A section that was not measured becomes a table
with no rows and a note saying why.
"""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass, field

from .report_schema import (MODEL_LABELS, MODELS, count, model_figures, note_of, tokens,
                            num, pct)


@dataclass
class Table:
    key: str                      # the report section it shows (also the HTML id)
    title: str
    header: tp.List[str]
    rows: tp.List[tp.List[str]] = field(default_factory=list)
    notes: tp.List[str] = field(default_factory=list)   # shown under the table
    about: str = ""               # one line on how to read it


def _label(model: str, report: dict) -> str:
    name = ((report.get("models") or {}).get(model) or {}).get("name")
    return f"{MODEL_LABELS[model]} ({name})" if name else MODEL_LABELS[model]


def _why(section) -> str:
    """": why" for a note, "" for an absent section (whose note would only say "not measured")."""
    return "" if section is None else f": {note_of(section) or 'no figures'}"


def _not_measured(table: Table, section) -> Table:
    table.notes.append(f"Not measured{_why(section)}.")
    return table


def _models(report: dict) -> Table:
    t = Table("models", "Models", ["role", "name", "path", "chosen by"])
    for m in MODELS:
        info = (report.get("models") or {}).get(m)
        if isinstance(info, dict):
            t.rows.append([MODEL_LABELS[m], str(info.get("name", "")), str(info.get("path", "")),
                           str(info.get("source", ""))])
    if not t.rows:
        t.notes.append("The models were not recorded.")
    return t


def _data(report: dict) -> Table:
    data = report.get("data") or {}
    about = f"The dataset's {data.get('split', 'valid')} split: tracks never trained on."
    if data.get("path"):
        about += f" Dataset: {data['path']}."
    t = Table("data", "Held-out data", ["genre", "tracks", "clips"], about=about)
    genres = data.get("genres") or {}
    for genre, c in genres.items():
        t.rows.append([str(genre), count(c.get("tracks")), count(c.get("clips"))])
    if genres:
        t.rows.append(["all", count(sum(c.get("tracks") or 0 for c in genres.values())),
                       count(sum(c.get("clips") or 0 for c in genres.values()))])
    else:
        t.notes.append("The held-out data was not recorded.")
    return t


def _settings(report: dict) -> Table:
    t = Table("settings", "Settings", ["setting", "value"])
    words = {"duration": "seconds per generated clip", "per_genre": "clips per genre and model",
             "seeds": "seeds (clip i: --seed + i, the same for both models)", "generic_prompt": "generic prompt",
             "blind_seed": "seed of the blind test's order", "generic_clips": "generic-prompt clips per model",
             "batch_size": "clips per generation batch (each clip with its own seed: the batch size changes no "
                           "clip)",
             "genres": "genres prompted", "classifier": "genre classifier", "clap": "CLAP model"}
    for key, value in (report.get("settings") or {}).items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else \
            "none" if value is None else str(value)
        if key == "seeds" and isinstance(value, list) and len(value) > 2 \
                and value == list(range(value[0], value[0] + len(value))):
            shown = f"{value[0]} to {value[-1]}"  # one per clip: a run of consecutive seeds
        t.rows.append([words.get(key, str(key)), shown])
    return t


def _ce(report: dict) -> Table:
    section = report.get("held_out_ce")
    figs = model_figures(section)
    k = max((len(f.get("per_codebook") or []) for f in figs.values()), default=0)
    t = Table("held_out_ce", "Held-out cross-entropy",
              ["model"] + [f"codebook {i + 1}" for i in range(k)] + ["mean", "perplexity", "tokens"],
              about="Nats per token on the held-out clips, exactly as the training loss; lower is better.")
    if not figs:
        return _not_measured(t, section)
    for m, f in figs.items():
        per = [num(v) for v in f.get("per_codebook") or []]
        t.rows.append([_label(m, report)] + per + [""] * (k - len(per)) +
                      [num(f.get("mean")), num(f.get("perplexity")), tokens(f)])
    return t


def _genre(report: dict) -> Table:
    section = report.get("genre_adherence")
    figs = model_figures(section)
    t = Table("genre_adherence", "Genre adherence", ["clips of", "heard as the genre asked for",
                                                     "mean confidence", "clips"],
              about="The genre classifier labels every generated clip; the real held-out clips give "
                    "the classifier's own accuracy (the ceiling).")
    if not figs:
        return _not_measured(t, section)
    for m, f in figs.items():
        t.rows.append([_label(m, report), pct(f.get("accuracy")), pct(f.get("mean_confidence")),
                       count(f.get("n"))])
    ceiling = report.get("classifier_ceiling")
    if isinstance(ceiling, dict) and note_of(ceiling) is None:
        t.rows.append(["real held-out clips (ceiling)", pct(ceiling.get("accuracy")), "",
                       count(ceiling.get("n"))])
    else:
        t.notes.append(f"The classifier's accuracy on real clips (the ceiling) was not measured{_why(ceiling)}.")
    return t


def _interval(f: dict) -> str:
    if f.get("low") is None or f.get("high") is None:
        return "n/a"
    level = f" ({pct(f['level'])})" if f.get("level") is not None else ""
    return f"{num(f['low'])} - {num(f['high'])}{level}"


def _fad(report: dict) -> Table:
    section = report.get("fad")
    t = Table("fad", "Fréchet Audio Distance", ["embedding", "model", "FAD", "bootstrap interval",
                                                 "generated clips", "real clips"],
              about="Distance between each model's clips and the real held-out clips; lower is closer. "
                    "Overlapping intervals mean no clear difference.")
    if not isinstance(section, dict) or note_of(section) is not None:
        return _not_measured(t, section)
    for embedding, per_model in section.items():
        figs = model_figures(per_model)
        if not figs:
            t.notes.append(f"{embedding}: {note_of(per_model) or 'no figures'}.")
        for m, f in figs.items():
            t.rows.append([str(embedding), _label(m, report), num(f.get("fad")), _interval(f),
                           count(f.get("n_a")), count(f.get("n_b"))])
    return t


def _fad_per_genre(report: dict) -> tp.Optional[Table]:
    section = report.get("fad_per_genre")
    if not isinstance(section, dict) or note_of(section) is not None:
        return None
    t = Table("fad_per_genre", "FAD per genre", ["embedding", "genre", "model", "FAD",
                                                 "bootstrap interval", "generated clips", "real clips"])
    for embedding, genres in section.items():
        if not isinstance(genres, dict) or note_of(genres) is not None:
            t.notes.append(f"{embedding}: {note_of(genres)}.")
            continue
        for genre, per_model in genres.items():
            for m, f in model_figures(per_model).items():
                t.rows.append([str(embedding), str(genre), MODEL_LABELS[m], num(f.get("fad")), _interval(f),
                               count(f.get("n_a")), count(f.get("n_b"))])
    return t


def _clap(report: dict) -> Table:
    section = report.get("clap")
    figs = model_figures(section)
    t = Table("clap", "Text-audio agreement (CLAP)", ["model", "mean CLAP score", "clips"],
              about="Cosine similarity between each prompt and its clip in CLAP's space; higher is closer.")
    if not figs:
        return _not_measured(t, section)
    for m, f in figs.items():
        t.rows.append([_label(m, report), num(f.get("mean")), count(f.get("n"))])
    return t


def _sanity(report: dict) -> Table:
    section = report.get("sanity")
    figs = model_figures(section)
    flags = [k for f in figs.values() for k in f if k != "n"]
    flags = list(dict.fromkeys(flags))
    t = Table("sanity", "Sanity flags", ["model"] + flags,
              about="Clips flagged for the classic failures, as 'flagged of clips'.")
    if not figs:
        _not_measured(t, section)
    for m, f in figs.items():
        t.rows.append([_label(m, report)] + [f"{count(f[k])} of {count(f.get('n'))}" if k in f else ""
                                             for k in flags])
    memo = section.get("memorisation") if isinstance(section, dict) else None
    memo_figs = model_figures(memo)
    for m, f in memo_figs.items():
        t.notes.append(f"Memorisation, {MODEL_LABELS[m]}: {count(f.get('flagged'))} of {count(f.get('n'))} "
                       f"clips at or above {pct(f.get('threshold'))} token overlap with a training clip "
                       f"(highest {pct(f.get('max_overlap'))}).")
    if not memo_figs:
        t.notes.append(f"Memorisation not measured{_why(memo)}.")
    return t


def clip_cells(clip: dict, model: str) -> str:
    """"jazz 81 %; flags: silence" for one model's clip."""
    pred = (clip.get("predictions") or {}).get(model) or {}
    parts = [f"heard as {pred.get('label')} ({pct(pred.get('confidence'))})"] if pred else []
    flags = (clip.get("flags") or {}).get(model) or []
    if flags:
        parts.append("flags: " + ", ".join(str(f) for f in flags))
    return "; ".join(parts)


def _clips(report: dict) -> Table:
    clips = report.get("clips") or []
    t = Table("clips", "Generated clips", ["prompt", "genre", "seed"] +
              [f"{MODEL_LABELS[m]} file" for m in MODELS] + [MODEL_LABELS[m] for m in MODELS])
    for clip in clips:
        files = clip.get("files") or {}
        t.rows.append([str(clip.get("prompt", "")), str(clip.get("genre") or "(generic)"),
                       str(clip.get("seed", ""))] + [str(files.get(m, "")) for m in MODELS] +
                      [clip_cells(clip, m) for m in MODELS])
    if not clips:
        t.notes.append("No clips were generated.")
    return t


def tables(report: dict) -> tp.List[Table]:
    """Every table of the report, in reading order."""
    out = [_models(report), _data(report), _settings(report), _ce(report), _genre(report), _fad(report)]
    per_genre = _fad_per_genre(report)
    if per_genre is not None:
        out.append(per_genre)
    return out + [_clap(report), _sanity(report), _clips(report)]

