"""Automatic tags for the captions: ``prepare --tagger clap`` (and ``--tagger musicnn``).

Two taggers share this pass through one small interface, a *backend* (``dim``,
``window_seconds``, ``embed`` of a track's windows, ``score``): CLAP here, musicnn in
``tagging_musicnn.py`` (a pretrained tagger of 2 x 50 fixed
tags whose weights come from PyPI; its "embedding" is the track's mean tag probabilities).

A music CLAP (transformers' ``ClapModel``, default ``laion/larger_clap_music``) embeds each
SOURCE track once: the mean of up to ``WINDOWS`` windows of CLAP's length (10 s) spread over
the track's prepared segments, i.e. the audio MusicGen will train on (vocals removed, trimmed,
MIDI rendered). Each field of the vocabulary (``tag_vocabulary.yaml``: instrument, mood, style)
is scored zero-shot: a softmax of CLAP's logits (its trained temperature times the cosine) over
the field's prompts plus a background prompt ("music": none of the tags), so a score is the
tag's share. Tags scoring at least ``--tag-threshold`` and more than the background are kept,
best first, at most ``--max-tags-per-field``: a track may get no tag in a field, and a field of
one tag is not kept by default. They go into every segment's caption and ``.json``
(``captions.with_tags``/``music_info``).

Why CLAP rather than essentia's discogs/MTG-Jamendo heads: CLAP runs on the torch and
transformers this project already installs, on every platform, and scores any words a user
writes in a vocabulary; essentia has no Windows wheels on PyPI, its classifier heads need
essentia-tensorflow and model files from essentia's own site, and they score fixed label sets.

Caching: the track embedding is stored in ``OUT/.prepare_tag_cache/<key>.npy``, keyed by the
source's path, size and mtime, the conversion options that change the audio (not the caption
template or ``--no-analyze``) and the CLAP model's identity. A record remembers the key of its
tags (embedding key, vocabulary, threshold, count, caption template): a re-run with nothing
changed does nothing, a new vocabulary, threshold or template re-scores and re-captions from
the cached embeddings without reading audio, and a reconverted track is tagged again. Turning
the tagger off re-renders tagged captions without tags. A template set by ``captions
--template`` (the record's ``caption_template``) is kept by these re-renders until the track
is reconverted.

``check_tagger`` loads the model (and, for CLAP, embeds the prompts) before any work, so a model
that cannot load is a one-line error before conversion, not after it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .atomic import atomic_path
from .captions import TAG_FIELDS, caption_values, genre_words, music_info, render_caption, with_tags
from .clap import ClapUnavailableError, tiny_seed
from .files import write_text_atomic
from .options import DEFAULT_TAGGER_MODEL, DEFAULT_TAG_THRESHOLDS

DEFAULT_VOCABULARY = Path(__file__).with_name("tag_vocabulary.yaml")
DEFAULT_PROMPT = "{} music"
DEFAULT_BACKGROUND = "music"   # "none of these tags": a tag must beat it to be kept
CACHE_DIR = ".prepare_tag_cache"
WINDOWS = 3               # CLAP windows averaged per track
SAVE_EVERY_SECONDS = 3.0


@dataclass(frozen=True)
class Vocabulary:
    """Field (instrument, mood, style) -> (prompt with ``{}``, tags, background prompt)."""
    fields: dict

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()[:16]

    def tags(self, name: str) -> list[str]:
        return self.fields[name][1]

    def prompts(self, name: str) -> list[str]:
        """The field's prompts, its tags' then the background's last. ``{}`` is replaced as plain
        text (not ``str.format``: other braces in a prompt are just characters)."""
        prompt, tags, background = self.fields[name]
        return [prompt.replace("{}", tag) for tag in tags] + [background]


def load_vocabulary(path=None) -> Vocabulary:
    """The vocabulary in the YAML (or JSON) file ``path`` (default: the shipped one); one-line
    ValueError for a missing or malformed file."""
    import yaml
    path = Path(path) if path else DEFAULT_VOCABULARY
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read the tag vocabulary {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"tag vocabulary {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"tag vocabulary {path} must map fields ({', '.join(TAG_FIELDS)}) to tags")
    fields = {}
    for name, spec in data.items():
        if name not in TAG_FIELDS:
            raise ValueError(f"tag vocabulary {path}: unknown field {name!r}; use {', '.join(TAG_FIELDS)}")
        prompt, tags, background = DEFAULT_PROMPT, spec, DEFAULT_BACKGROUND
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {"prompt", "tags", "background"})
            if unknown:
                raise ValueError(f"tag vocabulary {path}: unknown key {unknown[0]!r} in {name!r}; "
                                 f"use prompt, tags, background")
            prompt = spec.get("prompt", DEFAULT_PROMPT)
            tags, background = spec.get("tags"), spec.get("background", DEFAULT_BACKGROUND)
        if not isinstance(prompt, str) or prompt.count("{}") != 1:
            raise ValueError(f"tag vocabulary {path}: the prompt of {name!r} must hold one '{{}}' for the tag")
        if not isinstance(background, str) or not background.strip():
            raise ValueError(f"tag vocabulary {path}: the background of {name!r} must be a phrase (e.g. 'music')")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
            raise ValueError(f"tag vocabulary {path}: {name!r} needs a non-empty list of tags (words)")
        fields[name] = (prompt, list(dict.fromkeys(t.strip() for t in tags)), background.strip())
    return Vocabulary(fields)


@dataclass
class ClapBackend:
    """CLAP's side of the tag pass: ``clap`` and the prompts' embeddings (``text[field] =
    (tags, [T + 1, P] unit-norm rows, the background's last)``)."""
    clap: object
    text: dict

    @property
    def dim(self) -> int:
        """Size of a track's embedding (CLAP's projection)."""
        return next(iter(self.text.values()))[1].shape[1]

    @property
    def window_seconds(self) -> float:
        return self.clap.window_seconds

    def embed(self, windows: list[tuple[np.ndarray, int]]) -> np.ndarray:
        """``[P]`` unit-norm: the mean CLAP embedding of the track's windows (``(wave, rate)``)."""
        from .clap import clap_audio_embeddings
        rows = np.concatenate([clap_audio_embeddings(self.clap, [w], rate) for w, rate in windows])  # [k, P]
        mean = rows.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def score(self, embedding: np.ndarray, threshold: float, max_tags: int) -> dict:
        return score_tags(embedding, self.text, self.clap.logit_scale, threshold, max_tags)


@dataclass
class TaggerSetup:
    """What ``check_tagger`` loaded before any work: the model, its identity, the vocabulary and
    the backend that embeds tracks and scores them (``ClapBackend``, ``tagging_musicnn.MusicnnBackend``)."""
    model: str            # what was loaded: "tiny:SEED", a folder or a hub name
    model_id: str         # identity in the cache keys (folder/weights stat, hub commit)
    vocabulary: object    # Vocabulary (CLAP) or tagging_musicnn.MusicnnVocabulary: has key()
    threshold: float
    max_tags: int
    backend: object = field(default=None, repr=False)
    tagger: str = "clap"  # --tagger: recorded on the tracks it tags (the summary names it if they lose the tags)

    def tag_key(self, embedding_key: str, template: str) -> str:
        """What a record's tags and captions depend on (besides its facts)."""
        text = json.dumps([embedding_key, self.vocabulary.key(), self.threshold, self.max_tags, template])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unavailable(name: str) -> ClapUnavailableError:
    return ClapUnavailableError(
        f"CLAP model {name!r} for --tagger clap is not on this machine (no download is attempted): "
        f"fetch it once where there is network (`hf download {DEFAULT_TAGGER_MODEL}` puts it in the Hugging "
        f"Face cache), or pass --tagger-model DIR (a folder with its config.json, weights and tokenizer), "
        f"or leave out --tagger")


def resolve_model(name: str) -> tuple[str, str]:
    """``(name to load, identity)``, checking that the weights are here (nothing is loaded).

    Raises:
        ClapUnavailableError: one line saying how to provide them.
    """
    seed = tiny_seed(name)
    if seed is not None:
        return f"tiny:{seed}", f"tiny-clap:{seed}"
    folder = Path(name).expanduser()
    if folder.is_dir():
        weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (folder / p).is_file()]
        if not (folder / "config.json").is_file() or not weights:
            raise ClapUnavailableError(f"{folder} is not a CLAP model folder (needs config.json and "
                                       f"model.safetensors or pytorch_model.bin, as save_pretrained writes)")
        st = (folder / weights[0]).stat()
        return str(folder.resolve()), f"{folder.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise _unavailable(name)  # a path that does not exist
    try:
        from huggingface_hub import snapshot_download
        snapshot = snapshot_download(name, local_files_only=True)
    except Exception:  # huggingface_hub: LocalEntryNotFoundError, bad repo ids (HFValidationError)...
        raise _unavailable(name) from None
    return name, f"{name}@{Path(snapshot).name}"


def tag_threshold(options) -> float:
    """``--tag-threshold``, or the tagger's own default when it was not given."""
    if options.tag_threshold is not None:
        return float(options.tag_threshold)
    return DEFAULT_TAG_THRESHOLDS[options.tagger]


def check_tagger(options, device: str | None = None) -> TaggerSetup:
    """Everything ``--tagger clap``/``musicnn`` needs, loaded before any work: the vocabulary,
    the model (a cache or folder with only part of its files fails here, not after converting)
    and, for CLAP, its prompts' embeddings. One-line ``ValueError``/``ClapUnavailableError``."""
    if options.tagger == "musicnn":
        from .tagging_musicnn import load_musicnn_backend
        model, model_id, vocabulary, backend = load_musicnn_backend(options)
        return TaggerSetup(model, model_id, vocabulary, tag_threshold(options), int(options.max_tags_per_field),
                           backend, "musicnn")
    tagger_model = options.tagger_model or DEFAULT_TAGGER_MODEL
    model, model_id = resolve_model(tagger_model)
    vocabulary = load_vocabulary(options.tag_vocabulary)
    from .clap import clap_text_embeddings, load_clap
    try:
        if device is None:
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        clap = load_clap(model, device=device)
        text = {name: (vocabulary.tags(name), clap_text_embeddings(clap, vocabulary.prompts(name)))
                for name in vocabulary.fields}
    except Exception as exc:  # transformers/safetensors/torch raise many kinds for broken weights
        reason = "files missing or incomplete" if isinstance(exc, ClapUnavailableError) else \
            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        raise ClapUnavailableError(
            f"CLAP model {tagger_model!r} for --tagger clap cannot be loaded ({reason}): it needs config.json, the weights and the processor files (tokenizer, "
            f"preprocessor_config.json) as ClapModel and ClapProcessor save_pretrained write them; "
            f"`hf download {DEFAULT_TAGGER_MODEL}` fetches them all, or leave out --tagger") from None
    return TaggerSetup(model, model_id, vocabulary, tag_threshold(options), int(options.max_tags_per_field),
                       ClapBackend(clap, text))


# --- audio of a track ------------------------------------------------------------------------
def window_spans(segments: list[dict], window: float, count: int = WINDOWS) -> list[tuple[str, float, float]]:
    """``(segment path, offset in it, seconds)`` of up to ``count`` windows of ``window``
    seconds, centred at even spacing over the track's span (its segments' ``start``/``duration``)."""
    first = min(seg["start"] for seg in segments)
    length = max(seg["start"] + seg["duration"] for seg in segments) - first
    count = max(1, min(count, math.ceil(length / window - 1e-9)))
    spans = []
    for i in range(count):
        centre = first + length * (i + 0.5) / count

        def room(seg):  # how far the centre is from the segment's nearer edge (negative: outside)
            return min(centre - seg["start"], seg["start"] + seg["duration"] - centre)
        seg = max(segments, key=room)
        seconds = min(window, seg["duration"])
        begin = min(max(centre - seconds / 2, seg["start"]), seg["start"] + seg["duration"] - seconds)
        spans.append((seg["path"], max(0.0, begin - seg["start"]), seconds))
    return spans


def read_window(path: Path, offset: float, seconds: float) -> tuple[np.ndarray, int]:
    """``([n] float32 mono, rate)``: ``seconds`` of a prepared WAV from ``offset``. The only
    place tagging reads audio (the tests count its calls)."""
    import soundfile as sf
    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        f.seek(min(int(round(offset * rate)), max(0, f.frames - 1)))
        audio = f.read(int(round(seconds * rate)), dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


def track_windows(out: Path, segments: list[dict], window: float) -> list[tuple[np.ndarray, int]]:
    """``[(wave [n], rate)]``: the audio of the track's windows (``window_spans``) that its
    embedding is made of."""
    return [read_window(out / path, offset, seconds) for path, offset, seconds in window_spans(segments, window)]


class EmbeddingCache:
    """``OUT/.prepare_tag_cache/<key>.npy``: one ``[P]`` float64 embedding per track (musicnn:
    its ``[100]`` mean tag probabilities)."""

    def __init__(self, out: Path):
        self.folder = Path(out) / CACHE_DIR

    def get(self, key: str, dim: int) -> np.ndarray | None:
        """The cached ``[dim]`` embedding, or None (missing, unreadable, wrong shape or not finite)."""
        try:
            embedding = np.load(self.folder / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if embedding.shape != (dim,) or embedding.dtype.kind != "f" or not np.isfinite(embedding).all():
            return None
        return embedding

    def put(self, key: str, embedding: np.ndarray) -> None:
        self.folder.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(embedding, dtype=np.float64), allow_pickle=False)
        with atomic_path(self.folder / f"{key}.npy") as tmp:
            tmp.write_bytes(buffer.getvalue())


def embedding_key(rel: str, rec: dict, audio_options: str, model_id: str) -> str:
    """Key of a track's embedding: its source and the options its audio depends on
    (``audio_options``, a hash of ``PrepareOptions.audio_fields``)."""
    text = json.dumps([rel, rec.get("size"), rec.get("mtime_ns"), audio_options, model_id])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def score_tags(embedding: np.ndarray, text: dict, logit_scale: float, threshold: float,
               max_tags: int) -> dict:
    """``{field: {tag: score}}``, best first: per field, the softmax over its prompts and the
    background prompt of ``logit_scale`` times their cosines with ``embedding`` ``[P]``
    (``text[field] = (T tags, [T + 1, P] unit-norm rows, the background's last)``). A tag is
    kept when its score is >= ``threshold`` and above the background's (else "none of these"),
    at most ``max_tags``."""
    tags = {}
    for name, (words, rows) in text.items():
        logits = logit_scale * (rows @ embedding)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        background = probs[len(words)]
        order = sorted(range(len(words)), key=lambda i: (-probs[i], i))
        tags[name] = {words[i]: round(float(probs[i]), 4) for i in order[:max_tags]
                      if probs[i] >= threshold and probs[i] > background}
    return tags


# --- the pass over a dataset -----------------------------------------------------------------
@dataclass
class TagSummary:
    model: str = ""
    tracks_tagged_this_run: int = 0
    embeddings_computed: int = 0
    embeddings_from_cache: int = 0
    untagged_this_run: int = 0       # tags removed (tagger off after a tagged run)
    removed_taggers: list = field(default_factory=list)   # the --tagger values those tags came from
    error: str = ""                  # the pass stopped (conversion, manifests and report are kept)
    failed: list = field(default_factory=list)   # [{"source", "reason"}]
    untaggable: list = field(default_factory=list)   # [{"source", "reason"}]: left untagged (too short, silent)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def rewrite_captions(out: Path, rec: dict, template: str, tags: dict | None) -> None:
    """Write every segment's caption (.txt) and .json of record ``rec`` from its facts and ``tags``."""
    track = rec["track"]
    genre = genre_words(track.get("genre_dir"), track.get("genre") is None)
    for seg in rec["segments"]:
        values = caption_values(genre=genre, title=track.get("title", ""), artist=track.get("artist", ""),
                                bpm=track.get("bpm"), key=track.get("key"),
                                instrument=track.get("instrument", ""),
                                name=PurePosixPath(seg["path"]).name[:-len(".wav")])
        values = with_tags(values, tags)
        seg["caption"] = render_caption(template, values)
        wav = out / seg["path"]
        write_text_atomic(wav.with_suffix(".txt"), seg["caption"])
        write_text_atomic(wav.with_suffix(".json"), json.dumps(music_info(values, seg["caption"], track.get("bpm"), tags),
                                                               ensure_ascii=False, indent=2) + "\n")


def record_template(rec: dict, template: str) -> str:
    """The template of a record's captions: the one ``captions --template`` set on it (kept
    until the track is reconverted, which makes a new record), else prepare's ``template``."""
    return rec.get("caption_template") or template


def tag_tracks(out: Path, state, setup: TaggerSetup | None, template: str, audio_options: dict | None = None,
               progress: bool = False) -> TagSummary:
    """Bring the tags of every converted record in ``state`` in line with ``setup`` (None:
    no tags) and ``template``, rewriting the captions and .json files of the tracks whose tags
    or template change and saving the state as it goes. ``audio_options``: source -> hash of
    the options its audio depends on (the embedding cache's key; default: the record's
    conversion options)."""
    summary = TagSummary(model=setup.model_id if setup else "")
    converted = [(rel, rec) for rel, rec in sorted(state.records.items()) if rec.get("status") == "converted"]
    if setup is None:
        changed = False
        for rel, rec in converted:
            if rec.get("tag_key"):
                rewrite_captions(out, rec, record_template(rec, template), None)
                rec.pop("tag_key")
                tagger = rec.pop("tagger", "clap|musicnn")   # older records: either could have tagged them
                changed = True
                if rec["track"].pop("tags", None) is None:
                    continue   # left untagged by its tagger (too short, silent): no tags to lose
                for name in tagger.split("|"):
                    if name not in summary.removed_taggers:
                        summary.removed_taggers.append(name)
                summary.untagged_this_run += 1
        if changed:
            state.save()
        return summary
    audio_options = audio_options or {}
    keys = {rel: embedding_key(rel, rec, audio_options.get(rel, rec.get("options")), setup.model_id)
            for rel, rec in converted}
    tag_keys = {rel: setup.tag_key(keys[rel], record_template(rec, template)) for rel, rec in converted}
    todo = [(rel, rec) for rel, rec in converted if rec.get("tag_key") != tag_keys[rel]]
    if not todo:
        return summary
    backend = setup.backend
    dim = backend.dim
    cache = EmbeddingCache(out)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="track", desc="tags", dynamic_ncols=True)
    last_save = time.monotonic()
    from .tagging_musicnn import UntaggableError
    try:
        for rel, rec in todo:
            embedding = cache.get(keys[rel], dim)
            if embedding is None:
                try:
                    embedding = backend.embed(track_windows(out, rec["segments"], backend.window_seconds))
                except UntaggableError as exc:   # no tags rather than made-up ones; settled until its key changes
                    summary.untaggable.append({"source": rel, "reason": str(exc)})
                    rewrite_captions(out, rec, record_template(rec, template), None)
                    rec["track"].pop("tags", None)
                    rec["tag_key"] = tag_keys[rel]
                    rec["tagger"] = setup.tagger
                    continue
                except (OSError, RuntimeError, ValueError) as exc:  # e.g. a segment deleted by hand
                    summary.failed.append({"source": rel, "reason": str(exc).splitlines()[0] if str(exc) else
                                           type(exc).__name__})
                    continue
                cache.put(keys[rel], embedding)
                summary.embeddings_computed += 1
            else:
                summary.embeddings_from_cache += 1
            tags = backend.score(embedding, setup.threshold, setup.max_tags)
            rewrite_captions(out, rec, record_template(rec, template), tags)
            rec["track"]["tags"] = tags
            rec["tag_key"] = tag_keys[rel]
            rec["tagger"] = setup.tagger
            summary.tracks_tagged_this_run += 1
            if bar is not None:
                bar.update(1)
            if time.monotonic() - last_save > SAVE_EVERY_SECONDS:
                state.save()
                last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        state.save()
    return summary
