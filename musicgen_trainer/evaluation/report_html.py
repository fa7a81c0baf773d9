"""report.html: one self-contained page (inline CSS, a few lines of inline JS, no network) with
the verdict, the blind A/B listening test, the tables and the plots.

Everything it links (clips, plots) is a relative path inside the report folder, so the folder
can be moved or zipped. Every string that comes from the data (captions are user text) is
HTML-escaped.

The blind test: for each prompt with both models' clips, the two clips are shown as "A" and
"B" in an order drawn by ``blind_order`` (seeded: the same report gives the same page). The
listener ticks the one that sounds more like their music; ticking "Reveal" (pure CSS) shows
which is which and the tally of picks that went to the fine-tune (counted by the inline JS).
It is a casual blind test: the page's source and the file names give the answer away to
anyone who looks.
"""
from __future__ import annotations

import html
import random
import typing as tp
import urllib.parse
from pathlib import Path

from .report_schema import BASE, FINETUNE, MODEL_LABELS, MODELS
from .report_tables import Table, clip_cells

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.sub, .about { color: #555; } .note { color: #8a5a00; }
#verdict p { font-size: 1.1em; line-height: 1.5; background: #f4f6fa; padding: 0.8em 1em; border-radius: 6px; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; }
th { background: #f0f0f0; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
audio { width: 240px; } .blind td { vertical-align: middle; }
.answer { display: none; } .sealed { color: #999; }
#reveal:checked ~ .blind .answer { display: inline; } #reveal:checked ~ .blind .sealed { display: none; }
#reveal:checked ~ .blind p.answer { display: block; font-weight: bold; }
.pick label { margin-right: 0.8em; white-space: nowrap; }
"""

# Counts, for each scored row, whether the pick was the fine-tune (data-finetune holds its letter).
JS = """
function tally() {
  var rows = document.querySelectorAll('tr[data-finetune]'), scored = 0, finetune = 0;
  rows.forEach(function (row) {
    var pick = row.querySelector('input[type=radio]:checked');
    if (pick) { scored += 1; if (pick.value === row.dataset.finetune) { finetune += 1; } }
  });
  document.getElementById('tally-finetune').textContent = finetune;
  document.getElementById('tally-scored').textContent = scored;
}
document.addEventListener('change', tally);
document.addEventListener('DOMContentLoaded', tally);
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def url(path: str) -> str:
    """A relative file path as an attribute value: percent-encoded, then HTML-escaped."""
    return esc(urllib.parse.quote(str(path).replace("\\", "/")))


def blind_order(n_rows: int, seed: int = 0) -> tp.List[bool]:
    """For each row, whether the fine-tune is "A" (True) or "B"; seeded, so stable per report."""
    rng = random.Random(seed)
    return [rng.random() < 0.5 for _ in range(n_rows)]


def blind_rows(report: dict, folder: Path) -> tp.Tuple[tp.List[dict], tp.List[str]]:
    """The clips that can go into the blind test (both models' files present) and notes on
    those that cannot."""
    rows, notes = [], []
    for i, clip in enumerate(report.get("clips") or []):
        files = clip.get("files") or {}
        missing = [m for m in MODELS if not files.get(m) or not (Path(folder) / files[m]).is_file()]
        if missing:
            notes.append(f"Clip {i + 1} ({clip.get('prompt', '')!s}) is left out of the blind test: no "
                         f"{' or '.join(MODEL_LABELS[m] for m in missing)} file in the report folder.")
            continue
        rows.append(clip)
    return rows, notes


def _figures(plots: tp.List[tp.Tuple[str, str]]) -> str:
    return "".join(f'<figure><img src="{url(path)}" alt="{esc(title)}"><figcaption>{esc(title)}</figcaption>'
                   "</figure>" for title, path in plots)


def _table_html(table: Table, plots: tp.Sequence[tp.Tuple[str, str]] = ()) -> str:
    out = [f'<section id="{esc(table.key)}"><h2>{esc(table.title)}</h2>']
    if table.about:
        out.append(f'<p class="about">{esc(table.about)}</p>')
    if table.rows:
        out.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.header) +
                   "</tr></thead><tbody>")
        for row in table.rows:
            out.append("<tr>" + "".join(f'<td{_num_class(c)}>{esc(c)}</td>' for c in row) + "</tr>")
        out.append("</tbody></table>")
    out += [f'<p class="note">{esc(n)}</p>' for n in table.notes]
    if plots:
        out.append(f'<div class="plots">{_figures(plots)}</div>')
    return "\n".join(out) + "</section>"


def _num_class(cell: str) -> str:
    return ' class="num"' if cell and cell.replace(",", "").replace(".", "").replace(" %", "")\
        .replace("-", "").strip().isdigit() else ""


def _audio(path: str) -> str:
    return f'<audio controls preload="metadata" src="{url(path)}"></audio>'


def _answer(clip: dict, model: str, letter: str) -> str:
    """"A = fine-tune: heard as jazz (81 %)", escaped."""
    details = clip_cells(clip, model)
    return esc(f"{letter} = {MODEL_LABELS[model]}" + (f": {details}" if details else ""))


def _blind_html(rows: tp.List[dict], order: tp.List[bool], notes: tp.List[str]) -> str:
    out = ['<section id="blind"><h2>Blind A/B test</h2>',
           '<p class="about">Each row plays the same prompt and seed through both models, in a random '
           'order. Tick the clip that sounds more like your music, then tick "Reveal".</p>']
    if not rows:
        out.append('<p class="note">No prompt has clips of both models: nothing to compare.</p>')
    else:
        out.append('<input type="checkbox" id="reveal"> <label for="reveal">Reveal which is which</label>')
        out.append('<div class="blind"><p class="answer" id="tally">You picked the fine-tune in '
                   '<span id="tally-finetune">0</span> of the <span id="tally-scored">0</span> rows you '
                   f'scored ({len(rows)} rows).</p>')
        out.append("<table><thead><tr><th>#</th><th>prompt</th><th>A</th><th>B</th><th>more like my music"
                   "</th><th>which is which</th></tr></thead><tbody>")
        for i, (clip, finetune_first) in enumerate(zip(rows, order)):
            a, b = (FINETUNE, BASE) if finetune_first else (BASE, FINETUNE)
            genre = clip.get("genre") or "generic"
            answer = "<br>".join(_answer(clip, m, letter) for letter, m in (("A", a), ("B", b)))
            out.append(
                f'<tr data-finetune="{"A" if finetune_first else "B"}"><td>{i + 1}</td>'
                f'<td>{esc(clip.get("prompt", ""))}<br><small>{esc(genre)}, seed {esc(clip.get("seed", ""))}'
                f'</small></td><td>{_audio(clip["files"][a])}</td><td>{_audio(clip["files"][b])}</td>'
                f'<td class="pick"><label><input type="radio" name="pick-{i}" value="A"> A</label>'
                f'<label><input type="radio" name="pick-{i}" value="B"> B</label></td>'
                f'<td><span class="sealed">hidden</span><span class="answer">{answer}</span></td></tr>')
        out.append("</tbody></table></div>")
    out += [f'<p class="note">{esc(n)}</p>' for n in notes]
    return "\n".join(out) + "</section>"


def render_html(report: dict, tables: tp.List[Table], plots: tp.List[tp.Tuple[str, str, str]],
                notes: tp.List[str], folder: Path) -> str:
    """The whole page as a string. ``plots`` are (table key, title, relative path), shown under
    their table; ``notes`` are the
    report's notes plus the renderer's own."""
    models = report.get("models") or {}
    names = {m: (models.get(m) or {}).get("name") or MODEL_LABELS[m] for m in MODELS}
    rows, blind_notes = blind_rows(report, folder)
    order = blind_order(len(rows), int((report.get("settings") or {}).get("blind_seed", 0)))
    clips_table = next((t for t in tables if t.key == "clips"), None)
    body = ["<h1>Does the fine-tune sound like your music?</h1>",
            f'<p class="sub">{esc(names[FINETUNE])} (fine-tune) against {esc(names[BASE])} (base)</p>',
            f'<section id="verdict"><h2>Verdict</h2><p>{esc(report.get("verdict", ""))}</p></section>',
            _blind_html(rows, order, blind_notes)]
    keys = {t.key for t in tables if t.key != "clips"}
    body += [_table_html(t, [(title, path) for key, title, path in plots if key == t.key])
             for t in tables if t.key != "clips"]
    stray = [(title, path) for key, title, path in plots if key not in keys]
    if stray:
        body.append('<section id="plots"><h2>Plots</h2>' + _figures(stray) + "</section>")
    if clips_table is not None:
        body.append('<details id="clip-details"><summary>Clip details (spoils the blind test)</summary>'
                    + _table_html(clips_table) + "</details>")
    if notes:
        body.append('<section id="notes"><h2>Notes</h2><ul>' +
                    "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></section>")
    title = f"Evaluation: {names[FINETUNE]} vs {names[BASE]}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) +
            f"\n<script>{JS}</script>\n</body></html>\n")
