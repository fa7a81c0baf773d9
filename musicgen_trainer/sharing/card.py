"""The model card of an export: ``README.md`` with a Hugging Face YAML header, what the fine-tune
was trained on and how, its evaluation, two or three samples and how to load it.

Two layers, so the text is easy to test:

- ``render_card(CardData) -> str``: pure, data in, Markdown out. Every string that comes from the
  user's data (genre names, captions, file names, options) goes through ``md_text`` (Markdown and
  HTML made inert, one line) or, in the YAML header and the code snippets, through ``json.dumps``
  (a JSON string is a valid YAML scalar and a valid Python literal).
- ``card_data.write_card(export_dir, run_dir=None, ...)``: the IO (what the card is made from:
  the export, the run's options and dataset, an evaluation report, the samples).

Training file names appear only with ``card_files=True`` (``--card-files``); the dataset's path
never does (it names the user's folders). A README.md this module did not write (no
``CARD_MARK``) is never replaced.
"""
from __future__ import annotations

import html
import json
import re
import typing as tp
from dataclasses import dataclass, field

from dataset_tools.cli import option

CARD_MARK = "<!-- model card written by musicgen_trainer (python -m musicgen_trainer card) -->"
REPO_PLACEHOLDER = "your-name/your-model"  # the snippets' repo; `push` fills in the real one
REPO_LINE = 'repo = "{}"  # the Hub repo, or a local copy of this folder'
RELEASED_LICENSE = "cc-by-nc-4.0"  # the released MusicGen weights' licence, which a fine-tune of them inherits
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")  # Hugging Face licence ids: mit, cc-by-nc-4.0, other
UNLABELLED = "(unlabelled)"
MAX_FILES = 500  # --card-files lists at most this many names
# A transformers-format export (sharing/transformers_format.py): its config and its weights, whole or sharded.
TRANSFORMERS_CONFIG, TRANSFORMERS_WEIGHTS = "config.json", ("model.safetensors", "model.safetensors.index.json")


@dataclass
class CardOptions:
    """Every option of ``python -m musicgen_trainer card``: each field one flag."""
    export: str = option(help="the export folder (a run's export/ or export-best/, or a transformers-format export)",
                         positional=True, metavar="EXPORT")
    license: tp.Optional[str] = option(None, "licence id in the card's header, e.g. mit, apache-2.0, cc-by-nc-4.0 "
                                       "(default: cc-by-nc-4.0, the released MusicGen weights' licence, for their "
                                       "fine-tunes; else other)", metavar="ID")
    card_files: bool = option(False, "list the training files' names (default: genres, hours and caption examples "
                              "only)")
    run: tp.Optional[str] = option(None, "the train.py run folder (default: the export's parent when it holds "
                                   "config.json)", metavar="RUN")
    report: tp.Optional[str] = option(None, "an evaluation report folder or report.json (default: the newest one "
                                      "in or beside the run folder that evaluated this export)", metavar="DIR")
    samples: int = option(3, "samples in the card: the run's newest training samples, else generated from this "
                          "export (0: none)", metavar="N")
    sample_seconds: float = option(5.0, "seconds per generated sample", metavar="S")
    device: tp.Optional[str] = option(None, "cpu or cuda, to generate samples (default: cuda when available)")

    def __post_init__(self):
        if not 0 <= self.samples <= 9:
            raise ValueError(f"--samples must be 0 to 9, got {self.samples}")
        if not 0 < self.sample_seconds <= 30:
            raise ValueError(f"--sample-seconds must be more than 0 and at most 30, got {self.sample_seconds:g}")


# --- the card's data ------------------------------------------------------------------------

@dataclass
class GenreRow:
    """One genre of the training data (``genre`` "" = unlabelled); ``seconds`` None when the
    files' durations could not be read."""
    genre: str
    tracks: int
    clips: int
    seconds: tp.Optional[float]
    held_out_tracks: int = 0


@dataclass
class Sample:
    """A sample linked from the card: paths relative to the export folder."""
    wav: str
    png: tp.Optional[str]
    prompt: str


@dataclass
class CardData:
    """Everything ``render_card`` shows; absent facts are empty and their section says so."""
    title: str
    license: str
    base_model: str = ""                 # a hub name, else "" and:
    base_kind: str = ""                  # "test" (random weights), "local" (a folder, not named) or "" (unknown)
    trained_steps: int = 0
    best: tp.Optional[dict] = None       # export-best: {"step", "valid_ce"}
    formats: tp.List[str] = field(default_factory=lambda: ["audiocraft"])  # "audiocraft", "transformers"
    melody: bool = False
    genres: tp.List[GenreRow] = field(default_factory=list)
    dataset_note: str = ""               # why the genre table is missing or partial
    caption_examples: tp.List[str] = field(default_factory=list)
    files: tp.List[str] = field(default_factory=list)  # training file names (only with --card-files)
    files_total: int = 0
    settings: tp.List[tp.Tuple[str, tp.Any]] = field(default_factory=list)  # (option, value) in display order
    evaluation: tp.Optional[dict] = None  # an evaluation report.json
    samples: tp.List[Sample] = field(default_factory=list)
    samples_note: str = ""
    window_seconds: float = 30.0
    evaluation_note: str = ""            # why no evaluation is shown (e.g. a report of earlier weights)
    repo_id: str = REPO_PLACEHOLDER


# --- escaping -------------------------------------------------------------------------------

_MD_INLINE = re.compile(r"([\\`*_\[\]|~$])")
_MD_LINE_START = re.compile(r"^([#>+=-]|\d+[.)])")


def md_text(value, limit: int = 300, start: bool = False) -> str:
    """``value`` as inert Markdown on one line: HTML escaped (``<script>`` shows as text), the
    inline Markdown characters backslash-escaped (no emphasis, links, code or table cells from
    data), cut at ``limit`` characters. ``start``: the text begins a block (a list item's
    text): a leading ``#``, ``>``, ``-`` or ``1.`` is escaped too."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    text = html.escape(text, quote=False)
    text = _MD_INLINE.sub(r"\\\1", text)
    if not start:
        return text
    return _MD_LINE_START.sub(lambda m: "\\" + m.group(1) if not m.group(1)[0].isdigit()
                              else m.group(1)[:-1] + "\\" + m.group(1)[-1], text)


def py_string(value) -> str:
    """A Python string literal of ``value`` that cannot close a Markdown code fence."""
    return json.dumps(str(value), ensure_ascii=False).replace("`", "\\u0060")


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "(default)" if value is None else str(value)


def _duration(seconds: tp.Optional[float]) -> str:
    """1.25 h, 12.5 min or 3.9 s ("?" when unknown)."""
    if seconds is None:
        return "?"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


# --- rendering ------------------------------------------------------------------------------

def render_card(data: CardData) -> str:
    """The README.md text of ``data`` (pure: no file is read)."""
    parts = [_header(data), CARD_MARK, "", f"# {md_text(data.title)}", "", _intro(data), _data_section(data),
             _settings_section(data), _evaluation_section(data), _samples_section(data), _usage_section(data)]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


def _header(data: CardData) -> str:
    library = "transformers" if "transformers" in data.formats else "audiocraft"
    lines = ["---", f"license: {data.license}", f"library_name: {library}", "pipeline_tag: text-to-audio"]
    if data.base_model:
        lines.append(f"base_model: {json.dumps(data.base_model)}")
    tags = ["musicgen", "text-to-audio", "music", "audiocraft", "musicgen-finetune"]
    tags += [g.genre.replace("_", " ") for g in data.genres if g.genre]
    lines += ["tags:"] + [f"- {json.dumps(t, ensure_ascii=False)}" for t in dict.fromkeys(tags)]
    return "\n".join(lines + ["---", ""])


def _intro(data: CardData) -> str:
    base = f"MusicGen (`{md_text(data.base_model)}`)" if data.base_model else {
        "test": "an offline MusicGen test model (random weights)",
        "local": "a local MusicGen model (another fine-tune)"}.get(data.base_kind, "a MusicGen model")
    steps = f" for {data.trained_steps:,} steps" if data.trained_steps else ""
    text = f"A fine-tune of {base}{steps} on a music dataset, made with musicgen_trainer."
    if data.best:
        text += (f" These are the weights with the lowest held-out cross-entropy of the run: "
                 f"{float(data.best.get('valid_ce', float('nan'))):.4f} at step {int(data.best.get('step', 0)):,}.")
    formats = " and ".join({"audiocraft": "audiocraft's export layout", "transformers": "Hugging Face "
                            "transformers' format"}.get(f, f) for f in data.formats)
    text += f" This folder holds it in {formats}."
    if data.license == RELEASED_LICENSE and data.base_model.startswith("facebook/"):
        text += (" The released MusicGen weights are licensed CC-BY-NC 4.0, and so is a fine-tune of them. ")
    text += " The training music's own rights are the uploader's to respect."
    return text + "\n"


def _data_section(data: CardData) -> str:
    out = ["## Training data", ""]
    if data.genres:
        total_tracks = sum(g.tracks for g in data.genres)
        known = [g.seconds for g in data.genres if g.seconds is not None]
        total = _duration(sum(known)) if len(known) == len(data.genres) else "?"
        out += [f"{total_tracks:,} tracks, {total} of audio, "
                f"{sum(g.clips for g in data.genres):,} files.", "",
                "| genre | tracks | files | duration | held-out tracks |", "| --- | ---: | ---: | ---: | ---: |"]
        out += [f"| {md_text(g.genre.replace('_', ' ') or UNLABELLED)} | {g.tracks:,} | {g.clips:,} | "
                f"{_duration(g.seconds)} | {g.held_out_tracks:,} |" for g in data.genres]
        out.append("")
        out.append("Held-out tracks were never trained on: they measure the held-out cross-entropy.")
        out.append("")
    if data.dataset_note:
        out += [f"*{md_text(data.dataset_note)}*", ""]
    if data.caption_examples:
        out += ["Caption examples (the text the model learnt to follow):", ""]
        out += [f"- {md_text(c, start=True)}" for c in data.caption_examples] + [""]
    if data.files:
        out += ["<details><summary>Training files</summary>", ""] + [f"- {md_text(f, start=True)}" for f in data.files]
        if data.files_total > len(data.files):
            out.append(f"- ... and {data.files_total - len(data.files):,} more")
        out += ["", "</details>", ""]
    return "\n".join(out)


def _settings_section(data: CardData) -> str:
    if not data.settings:
        return ""
    out = ["## Training settings", "", "| option | value |", "| --- | --- |"]
    out += [f"| `--{md_text(k.replace('_', '-'))}` | {md_text(_shown(v))} |" for k, v in data.settings]
    return "\n".join(out + [""])


def _evaluation_section(data: CardData) -> str:
    report = data.evaluation
    if not report:
        return f"## Evaluation\n\n*{md_text(data.evaluation_note)}*\n" if data.evaluation_note else ""
    from ..evaluation.report_schema import BASE, FINETUNE, count, model_figures, note_of, num, pct, tokens
    rows = []
    ce = model_figures(report.get("held_out_ce"))
    if ce:
        rows.append(("held-out cross-entropy (lower is better)", *(num((ce.get(m) or {}).get("mean"), 3)
                     for m in (FINETUNE, BASE)), tokens(ce.get(FINETUNE) or next(iter(ce.values())))))
    adherence = model_figures(report.get("genre_adherence"))
    if adherence:
        rows.append(("genre adherence (classifier accuracy)", *(pct((adherence.get(m) or {}).get("accuracy"))
                     for m in (FINETUNE, BASE)), f"{count((adherence.get(FINETUNE) or {}).get('n'))} clips"))
    for embedding, section in (report.get("fad") or {}).items():
        figures = model_figures(section)
        if figures:
            def fad(m):
                f = figures.get(m) or {}
                interval = f" [{num(f['low'])}, {num(f['high'])}]" if "low" in f and "high" in f else ""
                return num(f.get("fad")) + interval
            first = figures.get(FINETUNE) or next(iter(figures.values()))
            rows.append((f"FAD, {embedding} (lower is better)", fad(FINETUNE), fad(BASE),
                         f"{count(first.get('n_a'))} generated / {count(first.get('n_b'))} real clips"))
    clap = model_figures(report.get("clap"))
    if clap:
        rows.append(("CLAP text-audio similarity", *(num((clap.get(m) or {}).get("mean"), 3) for m in (FINETUNE, BASE)),
                     f"{count((clap.get(FINETUNE) or {}).get('n'))} clips"))
    out = ["## Evaluation", "", "From `python -m musicgen_trainer evaluate` on the held-out tracks, against the "
           "base model with the same prompts and seeds.", ""]
    if rows:
        out += ["| measure | fine-tune | base | rests on |", "| --- | ---: | ---: | --- |"]
        out += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows] + [""]
    else:
        why = note_of(report.get("held_out_ce")) or "no figures in the report"
        out += [f"*{md_text(why)}*", ""]
    if report.get("verdict"):
        out += [f"**Verdict:** {md_text(report['verdict'], limit=2000)}", ""]
    return "\n".join(out)


def _samples_section(data: CardData) -> str:
    out = ["## Samples", ""]
    for i, s in enumerate(data.samples, 1):
        out += [f"**{i}.** {md_text(s.prompt) if s.prompt else '(no text)'}", "",
                f'<audio controls src="{html.escape(s.wav)}"></audio>', "",
                f"[{md_text(s.wav)}]({s.wav})", ""]
        if s.png:
            out += [f"![mel spectrogram of sample {i}]({s.png})", ""]
    if data.samples_note:
        out += [f"*{md_text(data.samples_note)}*", ""]
    return "\n".join(out) if len(out) > 2 else ""


def _usage_section(data: CardData) -> str:
    caption = data.caption_examples[0] if data.caption_examples else "music"
    seconds = min(8.0, data.window_seconds)
    repo = REPO_LINE.format(data.repo_id)
    audiocraft = ["```python", "from audiocraft.data.audio import audio_write",
                  "from audiocraft.models import MusicGen",
                  "from huggingface_hub import snapshot_download", "", repo,
                  "model = MusicGen.get_pretrained(snapshot_download(repo))",
                  f"model.set_generation_params(duration={seconds:g})",
                  f"wav = model.generate([{py_string(caption)}])  # [batch, channels, samples]",
                  'audio_write("sample", wav[0].cpu(), model.sample_rate, strategy="loudness")', "```"]
    cls = "MusicgenMelodyForConditionalGeneration" if data.melody else "MusicgenForConditionalGeneration"
    transformers = ["```python", "import scipy.io.wavfile",
                    f"from transformers import AutoProcessor, {cls}", "", repo,
                    "processor = AutoProcessor.from_pretrained(repo)", f"model = {cls}.from_pretrained(repo)",
                    f"inputs = processor(text=[{py_string(caption)}], padding=True, return_tensors=\"pt\")",
                    "audio = model.generate(**inputs, max_new_tokens=256)  # [batch, channels, samples]; 256 "
                    "tokens: ~5 s at 50 frames/s",
                    "rate = model.config.audio_encoder.sampling_rate",
                    "scipy.io.wavfile.write(\"sample.wav\", rate=rate, data=audio[0].T.numpy())", "```"]
    out = ["## Use it", ""]
    if "audiocraft" in data.formats:
        out += ["With audiocraft:", ""] + audiocraft + [""]
    if "transformers" in data.formats:
        out += ["With transformers:", ""] + transformers
    else:
        out += ["With transformers: this folder is in audiocraft's layout; convert it first with "
                "`python -m musicgen_trainer export EXPORT --format transformers --out DIR`, then load that "
                "folder:", ""] + transformers
    out += ["", "Or with musicgen_trainer: `python generate.py --model DIR --prompts \"...\"` "
                "(DIR: a local copy of this folder)."]
    if data.base_kind == "test":
        out += ["", "*The base is an offline test model: its text encoder is stored in this export, which "
                    "musicgen_trainer's loader reads; audiocraft's own loader would download T5.*"]
    return "\n".join(out) + "\n"


def fill_repo(card_text: str, repo_id: str) -> str:
    """The card with the snippets' repo line naming ``repo_id`` (what ``push`` uploads)."""
    placeholder = REPO_LINE.format(REPO_PLACEHOLDER)
    return "\n".join(REPO_LINE.format(repo_id) if line == placeholder else line for line in card_text.split("\n"))

