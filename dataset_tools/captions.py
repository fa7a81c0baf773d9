"""Captions and audiocraft metadata for prepared segments.

A caption is built from a template of comma-separated parts, e.g. the default::

    "{genre} music, {style}, {title}, by {artist}, played on {instrument}, {mood} mood, {tempo} tempo at {bpm} bpm, in {key}"

A part whose fields are all known is kept; a part with any unknown (empty) field is
dropped whole. So a track in ``unknown/`` gets no genre words at all, a drone with no
measurable tempo gets no tempo words, and nothing reads "None music". Fields:

    genre       the genre folder's name in words ("hip_hop" -> "hip hop"); empty for unknown/
    title       cleaned from the file name (see ``parse_filename``)
    artist      from "Artist - Title" file names, else empty
    bpm, tempo  estimated tempo (e.g. "96") and a word for it ("slow", "medium", "fast")
    key         estimated key, e.g. "A minor"
    instrument  instruments of a rendered MIDI file (e.g. "church organ"); for audio, the
                instrument tags of ``prepare --tagger clap`` ("piano and double bass"), else empty
    mood        mood tags of the tagger ("relaxed and dreamy"), else empty
    style       genre/style tags of the tagger ("piano trio"), else empty
    name        the output file name (without extension)

``music_info`` fills every field audiocraft's ``MusicInfo`` requires, with ``description``
set to the caption: it is the only field MusicGen's text encoder sees. Tags (``tagging.py``)
also go into its ``instrument``, ``moods`` and ``keywords`` fields, with their scores in a
side field ``tags`` (audiocraft ignores fields it does not know); ``info_values`` reads the
caption fields back from such a JSON, so captions can be re-rendered without the audio.
"""
from __future__ import annotations

import math
import re
import string

DEFAULT_TEMPLATE = ("{genre} music, {style}, {title}, by {artist}, played on {instrument}, {mood} mood, "
                    "{tempo} tempo at {bpm} bpm, in {key}")
CAPTION_FIELDS = ("genre", "title", "artist", "bpm", "tempo", "key", "instrument", "mood", "style", "name")
# The tag fields of ``tagging.py`` (vocabulary field -> caption field).
TAG_FIELDS = ("instrument", "mood", "style")

# Leading track numbers: "01 ", "01 - ", "1. ", "1-03 ", "(04) ", "[12] ", "Track 05 - ".
_TRACK_NUMBER = re.compile(
    r"""^\s*(?:track\s*)?
        (?:[\[(]\d{1,3}[\])]\s*[-–._:]?\s*         # (04) / [12]
          |\d-\d{2}\s*(?:[-–_:.]\s*)?               # 1-03 (disc-track)
          |\d{1,3}\s*[-–_:.]\s*(?!\d)               # 01 - / 1. / 07_ (not "1.5", "2-4-6-8")
          |0\d{1,2}\s+                                # 01 Title (leading zero)
          |track\s*\d{1,3}\s+)                        # Track 5 Title
    """, re.IGNORECASE | re.VERBOSE)


def template_fields(template: str) -> list[str]:
    """The ``{field}`` names used in ``template``; ValueError for malformed templates and for
    a format spec or conversion (``{genre:>9}``, ``{genre!r}``: fields are plain words, and a
    spec may hold further fields)."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"caption template is malformed ({exc}): {template!r}") from None
    names = [f for f, _, _ in parsed]
    for name, spec, conversion in parsed:
        if spec or conversion:
            raise ValueError(f"caption field {{{name}}} in the template has a format spec or conversion "
                             f"({'!' + conversion if conversion else ''}{':' + spec if spec else ''}); "
                             f"write plain fields like {{genre}}")
        if name not in CAPTION_FIELDS:
            raise ValueError(f"unknown caption field {{{name}}} in template; "
                             f"use any of: {', '.join('{' + f + '}' for f in CAPTION_FIELDS)}")
    return names


def parse_filename(stem: str) -> tuple[str, str]:
    """``(title, artist)`` from a file name without its extension.

    Underscores become spaces, leading track numbers go, runs of spaces collapse; dots
    inside names ("No.3", "Op. 27") stay. "Artist - Title" splits at the first " - ".
    Numbers that are part of a title ("99 Luftballons", "1979") are kept: a number is
    only taken for a track number with a leading zero or a separator after it.
    """
    text = stem.replace("_", " ")
    text = re.sub(r"\s+", " ", text).strip()
    cleaned = _TRACK_NUMBER.sub("", text, count=1).strip(" -–.")
    if cleaned:
        text = cleaned
    artist = ""
    if " - " in text:
        left, right = (part.strip(" -–") for part in text.split(" - ", 1))
        if left and right:
            artist, text = left, right
    return text or stem, artist


def genre_words(genre_dir: str | None, unlabelled: bool) -> str:
    """The genre as caption words: folder name, lower case, separators as spaces."""
    if genre_dir is None or unlabelled:
        return ""
    return re.sub(r"\s+", " ", genre_dir.replace("_", " ")).strip().lower()


def tempo_word(bpm: float | None) -> str:
    if bpm is None:
        return ""
    return "slow" if bpm < 80 else "medium" if bpm < 120 else "fast"


def render_caption(template: str, values: dict) -> str:
    """Fill ``template``, dropping each comma-separated part that has an empty field."""
    kept = []
    for part in template.split(","):
        names = [f for _, f, _, _ in string.Formatter().parse(part) if f]
        if all(str(values.get(n) or "").strip() for n in names):
            text = part.format(**{n: str(values[n]).strip() for n in names}).strip()
            if text:
                kept.append(text)
    caption = ", ".join(kept)
    return caption[:1].upper() + caption[1:] if caption else caption


def caption_values(*, genre: str, title: str, artist: str, bpm: float | None,
                   key: str | None, instrument: str, name: str, mood: str = "", style: str = "") -> dict:
    return {"genre": genre, "title": title, "artist": artist,
            "bpm": "" if bpm is None else f"{bpm:g}", "tempo": tempo_word(bpm),
            "key": key or "", "instrument": instrument, "mood": mood, "style": style, "name": name}


def join_words(words) -> str:
    """``["a"]`` -> "a", ``["a", "b"]`` -> "a and b", ``["a", "b", "c"]`` -> "a, b and c"."""
    words = [str(w) for w in words if str(w).strip()]
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def with_tags(values: dict, tags: dict | None) -> dict:
    """``values`` with the tagger's tags (``{field: {tag: score}}``, best first) as words.
    Instruments a MIDI file names exactly are kept; the tagged ones fill in for audio."""
    if not tags:
        return dict(values)
    return dict(values, mood=join_words(tags.get("mood", {})), style=join_words(tags.get("style", {})),
                instrument=values["instrument"] or join_words(tags.get("instrument", {})))


def music_info(values: dict, caption: str, bpm: float | None, tags: dict | None = None) -> dict:
    """The audiocraft ``MusicInfo`` JSON for one segment (every field present); with ``tags``
    (see ``with_tags``) also their words in ``moods``/``keywords`` and their scores in ``tags``."""
    tempo = f'{values["tempo"]} tempo' if values["tempo"] else ""
    keywords = [w for w in (values["genre"], tempo, values["key"].lower()) if w]
    info = {
        "title": values["title"],
        "artist": values["artist"],
        "key": values["key"],
        "bpm": bpm,
        "genre": values["genre"],
        "moods": [],
        "description": caption,
        "name": values["name"],
        "instrument": values["instrument"],
        "keywords": keywords,
    }
    if tags:
        info["moods"] = list(tags.get("mood", {}))
        info["keywords"] = keywords + [w for w in tags.get("style", {}) if w not in keywords]
        info["tags"] = {field: dict(tags.get(field, {})) for field in TAG_FIELDS}
    return info


_TEXT_INFO = ("genre", "title", "artist", "key", "name", "instrument", "description")


def info_problem(info) -> str | None:
    """Why a segment's ``music_info`` JSON cannot give back its caption fields (e.g. edited by
    hand: ``"bpm": "fast"``, ``"moods": "relaxed"``), or None when it can."""
    if not isinstance(info, dict):
        return "not a JSON object"
    for name in _TEXT_INFO:
        if info.get(name) is not None and not isinstance(info[name], str):
            return f'"{name}" is not text'
    bpm = info.get("bpm")
    if bpm is not None and (isinstance(bpm, bool) or not isinstance(bpm, (int, float))
                            or not math.isfinite(bpm) or bpm <= 0):
        return '"bpm" is not a positive number'
    moods = info.get("moods")
    if moods is not None and not (isinstance(moods, list) and all(isinstance(m, str) for m in moods)):
        return '"moods" is not a list of words'
    tags = info.get("tags")
    if tags is not None:
        if not isinstance(tags, dict):
            return '"tags" is not an object'
        for name in TAG_FIELDS:
            scores = tags.get(name)
            if scores is not None and not (isinstance(scores, dict) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values())):
                return f'"tags"."{name}" is not an object of tag scores'
    return None


def info_values(info: dict) -> dict:
    """The caption fields of a segment, read back from its ``music_info`` JSON; ValueError
    (``info_problem``) for fields of the wrong type."""
    problem = info_problem(info)
    if problem:
        raise ValueError(problem)
    tags = info.get("tags") or {}
    bpm = info.get("bpm")
    return caption_values(genre=info.get("genre") or "", title=info.get("title") or "",
                          artist=info.get("artist") or "", bpm=None if bpm is None else float(bpm),
                          key=info.get("key") or None, instrument=info.get("instrument") or "",
                          name=info.get("name") or "", mood=join_words(info.get("moods") or []),
                          style=join_words(tags.get("style") or {}))
