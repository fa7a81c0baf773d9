"""Text prompts in the words the training captions used.

``dataset_tools`` writes each segment's caption from a template (``dataset_tools.captions``),
e.g. ``"Jazz music, Blue in Green, 96 bpm..."``. A fine-tune learns that phrasing, so a
prompt built from a genre list here goes through the very same template code::

    genre_caption(["jazz", "hip_hop"], bpm=90)  ->  "Jazz and hip hop music, medium tempo at 90 bpm"

Genres are folder names as the dataset tools see them (``hip_hop`` reads "hip hop").
"""
from __future__ import annotations

import typing as tp

from dataset_tools.captions import (DEFAULT_TEMPLATE, caption_values, genre_words,
                                    render_caption)


def parse_genres(text: tp.Union[str, tp.Sequence[str], None]) -> tp.List[str]:
    """``"jazz, rock"`` or ``["jazz", "rock"]`` -> ``["jazz", "rock"]`` (blanks and repeats dropped)."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    out: tp.List[str] = []
    for part in parts:
        part = " ".join(part.split())
        if part and part.lower() not in (p.lower() for p in out):
            out.append(part)
    return out


def genre_caption(genres: tp.Sequence[str], bpm: tp.Optional[float] = None, key: tp.Optional[str] = None,
                  title: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """A caption as ``dataset_tools`` writes them, for one or more genres (joined with "and")."""
    words = [genre_words(g, unlabelled=False) for g in genres]
    words = [w for w in words if w]
    genre = " and ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " and " + words[-1]
    values = caption_values(genre=genre, title=title, artist="", bpm=bpm, key=key, instrument="", name="")
    return render_caption(template, values)


def build_prompts(prompts: tp.Sequence[str], genres: tp.Sequence[str] = (), bpm: tp.Optional[float] = None,
                  key: tp.Optional[str] = None) -> tp.List[str]:
    """The text for each output: the genre caption, then the user's own words.

    No prompts and no genres gives one empty prompt (generation without text).
    """
    head = genre_caption(genres, bpm=bpm, key=key) if (genres or bpm or key) else ""
    prompts = [" ".join(str(p).split()) for p in prompts] or [""]
    return [", ".join(part for part in (head, p) if part) for p in prompts]


def unknown_genres(genres: tp.Sequence[str], known: tp.Sequence[str]) -> tp.List[str]:
    """The requested genres a fine-tune never saw (compared as caption words)."""
    seen = {genre_words(k, False) for k in known}
    return [g for g in genres if genre_words(g, False) not in seen]
