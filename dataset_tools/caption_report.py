"""``python -m dataset_tools captions OUT``: what the captions of a prepared dataset say.

``caption_report(out, options) -> CaptionReport`` reads every segment's ``.json`` that
``prepare`` wrote (the state lists them; nothing else in OUT is read or written) and counts
the most common tags per genre (``prepare --tagger clap``), the segments without tags, the
captions that segments of different tracks share (MusicGen cannot tell those tracks apart by
their text; a track's own segments share its caption by design) and the longest caption.

With ``--template``, every caption is first re-rendered from its ``.json`` fields
(``captions.info_values``): the ``.txt`` and the ``.json``'s ``description``, each written
atomically; the audio is not read. Every caption is rendered before any is written, so a
``.json`` edited into the wrong types is reported (unreadable, by path) and never leaves the
dataset half re-rendered. The template is recorded on each track (the state's
``caption_template``): a later ``prepare`` that re-tags or removes tags keeps it, until the
track is reconverted (e.g. by another ``--caption-template``). OUT is locked against a
concurrent ``prepare``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .captions import TAG_FIELDS, info_problem, info_values, render_caption, template_fields
from .cli import option
from .files import write_text_atomic
from .state import PrepareState

NO_GENRE = "(no genre)"


@dataclass
class CaptionsOptions:
    """Settings for ``captions`` (each field is also its ``--flag``; see its help)."""
    template: str | None = option(None, "first re-render every caption (.txt and the .json's description) "
                                  "from the .json fields with this template; the audio is not touched "
                                  "(fields as for prepare --caption-template)", metavar="TEXT")
    top: int = option(5, "tags listed per genre, and duplicated captions listed", metavar="N")

    def __post_init__(self):
        if not isinstance(self.top, int) or self.top < 0:
            raise ValueError(f"number of listed tags must be 0 or more, got {self.top}")
        if self.template is not None:
            if not template_fields(self.template) and not self.template.strip():
                raise ValueError("caption template is empty")


@dataclass
class CaptionReport:
    out: str
    segments: int = 0
    rerendered: int = 0                                   # captions rewritten by --template
    missing: list = field(default_factory=list)           # segments whose .json is missing or unreadable
    reasons: dict = field(default_factory=dict)           # segment -> why its .json is unreadable
    untagged: dict = field(default_factory=dict)          # genre -> segments without any tag
    tags: dict = field(default_factory=dict)              # genre -> [(tag, segments), ...] most common first
    duplicates: list = field(default_factory=list)        # [(caption, tracks)]: shared by 2+ source tracks
    duplicated_tracks: int = 0                            # tracks whose caption another track has too
    longest: dict = field(default_factory=dict)           # {"path", "words", "caption"}
    mean_words: float = 0.0

    def summary(self, top: int = 5) -> str:
        lines = [f"{self.out}: {self.segments} captioned segments, {self.mean_words:.1f} words on average"]
        if self.rerendered:
            lines.append(f"  re-rendered {self.rerendered} caption(s) with the new template")
        untagged = sum(self.untagged.values())
        lines.append(f"  untagged segments: {untagged}" + (
            " (" + ", ".join(f"{g} {n}" for g, n in self.untagged.items() if n) + ")" if untagged else ""))
        if any(self.tags.values()):
            lines.append("  most common tags per genre (segments):")
            for genre, counts in self.tags.items():
                if counts:
                    lines.append(f"    {genre}: " + ", ".join(f"{t} {n}" for t, n in counts[:top]))
        lines.append(f"  duplicated captions: {len(self.duplicates)} caption(s) shared by segments of "
                     f"{self.duplicated_tracks} different tracks")
        for caption, count in self.duplicates[:top]:
            lines.append(f"    {count} tracks: {caption}")
        if self.longest:
            lines.append(f"  longest caption ({self.longest['words']} words, {self.longest['path']}): "
                         f"{self.longest['caption']}")
        if self.missing:
            first = self.missing[0]
            lines.append(f"  {len(self.missing)} segment(s) without a readable .json, e.g. {first} "
                         f"({self.reasons.get(first, 'missing')}): delete those .json files and run prepare "
                         f"again, which reconverts their tracks")
        return "\n".join(lines)


def _segment_paths(out: Path) -> list[tuple[str, dict]]:
    """(source, segment record) of every segment prepare wrote in ``out``."""
    state = PrepareState(out)
    if state.foreign or not state.path.exists():
        raise ValueError(f"{out} has no prepare state ({state.path.name}): not a dataset made by "
                         f"`python -m dataset_tools prepare`")
    return [(rel, seg) for rel, rec in sorted(state.records.items()) if rec.get("status") == "converted"
            for seg in rec["segments"]]


def _read_info(path: Path) -> tuple[dict | None, str]:
    """(the segment's .json, "") or (None, why it cannot be used)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, "not valid JSON" if isinstance(exc, ValueError) else (exc.strerror or "unreadable")
    problem = info_problem(info)
    return (None, problem) if problem else (info, "")


def rerender(out: Path, template: str) -> tuple[int, dict[str, str]]:
    """Rewrite every caption prepare wrote in ``out`` from its .json fields with ``template``
    (.txt and .json ``description``, atomically); also in the state, with ``template`` as
    each track's ``caption_template``. All captions are rendered first, then written; the
    state is saved even if a write fails. Returns (rewritten, {segment: why its .json is
    unreadable}). OUT is locked against a concurrent ``prepare``."""
    from .prepare import _acquire_lock
    template_fields(template)
    lock = _acquire_lock(out)
    try:
        state = PrepareState(out)
        converted = [rec for rec in state.records.values() if rec.get("status") == "converted"]
        changes, unreadable = [], {}
        for rec in converted:
            for seg in rec["segments"]:
                info, problem = _read_info((out / seg["path"]).with_suffix(".json"))
                if info is None:
                    unreadable[seg["path"]] = problem
                    continue
                caption = render_caption(template, info_values(info))
                if caption != info.get("description") or seg.get("caption") != caption:
                    changes.append((seg, info, caption))
        for rec in converted:
            rec["caption_template"] = template
        try:
            for seg, info, caption in changes:
                wav = out / seg["path"]
                info["description"] = caption
                write_text_atomic(wav.with_suffix(".txt"), caption)
                write_text_atomic(wav.with_suffix(".json"), json.dumps(info, ensure_ascii=False, indent=2) + "\n")
                seg["caption"] = caption
        finally:
            state.save()
    finally:
        lock.unlink(missing_ok=True)
    return len(changes), unreadable


def caption_report(out, options: CaptionsOptions | None = None) -> CaptionReport:
    """Statistics of the captions in ``out`` (module doc), after re-rendering them with
    ``options.template`` when given."""
    options = options or CaptionsOptions()
    out = Path(out).expanduser()
    if not out.is_dir():
        raise ValueError(f"{out} is not a folder")
    segments = _segment_paths(out)  # ValueError for a folder prepare did not make
    report = CaptionReport(out=str(out))
    if options.template is not None:
        report.rerendered, _ = rerender(out, options.template)
    tag_counts: dict[str, Counter] = {}
    captions: dict[str, set] = {}
    words = 0
    for source, seg in segments:
        info, problem = _read_info((out / seg["path"]).with_suffix(".json"))
        if info is None:
            report.missing.append(seg["path"])
            report.reasons[seg["path"]] = problem
            continue
        genre = info.get("genre") or NO_GENRE
        caption = str(info.get("description") or "")
        report.segments += 1
        captions.setdefault(caption, set()).add(source)
        words += len(caption.split())
        if len(caption) > len(report.longest.get("caption", "")):
            report.longest = {"path": seg["path"], "words": len(caption.split()), "caption": caption}
        tags = [t for f in TAG_FIELDS for t in ((info.get("tags") or {}).get(f) or {})]
        counts = tag_counts.setdefault(genre, Counter())
        report.untagged.setdefault(genre, 0)
        if tags:
            counts.update(tags)
        else:
            report.untagged[genre] += 1
    report.mean_words = words / report.segments if report.segments else 0.0
    report.tags = {g: counts.most_common() for g, counts in sorted(tag_counts.items())}
    report.untagged = dict(sorted(report.untagged.items()))
    shared = sorted(((c, len(s)) for c, s in captions.items() if len(s) > 1), key=lambda x: (-x[1], x[0]))
    report.duplicates = shared
    report.duplicated_tracks = sum(n for _, n in shared)
    return report
