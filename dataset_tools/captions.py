"""Captions and audiocraft metadata for prepared segments.

A caption is built from a template of comma-separated parts, e.g. the default::

    "{genre} music, {title}, by {artist}, played on {instrument}, {tempo} tempo at {bpm} bpm, in {key}"

A part whose fields are all known is kept; a part with any unknown (empty) field is
dropped whole. So a track in ``unknown/`` gets no genre words at all, a drone with no
measurable tempo gets no tempo words, and nothing reads "None music". Fields:

    genre       the genre folder's name in words ("hip_hop" -> "hip hop"); empty for unknown/
    title       cleaned from the file name (see ``parse_filename``)
    artist      from "Artist - Title" file names, else empty
    bpm, tempo  estimated tempo (e.g. "96") and a word for it ("slow", "medium", "fast")
    key         estimated key, e.g. "A minor"
    instrument  instruments of a rendered MIDI file (e.g. "church organ"); empty for audio
    name        the output file name (without extension)

``music_info`` fills every field audiocraft's ``MusicInfo`` requires, with ``description``
set to the caption: it is the only field MusicGen's text encoder sees.
"""
from __future__ import annotations

import re
import string

DEFAULT_TEMPLATE = ("{genre} music, {title}, by {artist}, played on {instrument}, "
                    "{tempo} tempo at {bpm} bpm, in {key}")
CAPTION_FIELDS = ("genre", "title", "artist", "bpm", "tempo", "key", "instrument", "name")

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
    """The ``{field}`` names used in ``template``; ValueError for malformed templates."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"caption template is malformed ({exc}): {template!r}") from None
    for name in names:
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
                   key: str | None, instrument: str, name: str) -> dict:
    return {"genre": genre, "title": title, "artist": artist,
            "bpm": "" if bpm is None else f"{bpm:g}", "tempo": tempo_word(bpm),
            "key": key or "", "instrument": instrument, "name": name}


def music_info(values: dict, caption: str, bpm: float | None) -> dict:
    """The audiocraft ``MusicInfo`` JSON for one segment (every field present)."""
    tempo = f'{values["tempo"]} tempo' if values["tempo"] else ""
    keywords = [w for w in (values["genre"], tempo, values["key"].lower()) if w]
    return {
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
