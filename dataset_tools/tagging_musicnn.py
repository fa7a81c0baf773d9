"""``prepare --tagger musicnn``: the tag pass's musicnn backend (``tagging.py`` runs the pass,
reads the windows and caches the vectors).

A track's "embedding" is its mean tag probabilities, ``[100]`` (``musicnn.Musicnn``: MTT's 50
tags then MSD's 50), over the 3 s patches of up to ``tagging.WINDOWS`` windows of
``WINDOW_SECONDS`` spread over its prepared segments. It is cached like CLAP's embeddings, so a
new vocabulary, threshold or template re-scores without reading audio.

The vocabulary (``musicnn_vocabulary.yaml``, or the user's with ``--tag-vocabulary``) maps each
field (instrument, mood, style) to caption words, each with the model tags it stands for::

    style:
      electronic: [mtt:electronic, msd:electronic, msd:electronica]
      classical: [classical, classic]      # no prefix: that tag in every model that has it

A word scores the highest probability of its model tags; words scoring at least the threshold
are kept, best first, at most ``--max-tags-per-field``. The probabilities are independent
sigmoids (several tags can be near 1, or none), not shares of a softmax as CLAP's are, so the
threshold is an absolute level of confidence (``options.DEFAULT_TAG_THRESHOLDS``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .captions import TAG_FIELDS
from .clap import ClapUnavailableError, tiny_seed
from .musicnn import MODELS, PREPROCESSING_VERSION, TAGS, weight_paths

DEFAULT_MUSICNN_VOCABULARY = Path(__file__).with_name("musicnn_vocabulary.yaml")
WINDOW_SECONDS = 15.0       # 5 patches of 3 s per window
# Below this much audio a track is left untagged: one patch repeated from a blip of sound gets
# confident made-up tags (a 0.1 s tone: "techno" 0.69).
MIN_TAG_SECONDS = 1.0


class UntaggableError(ValueError):
    """A track musicnn cannot tag meaningfully (too short, or silent): left untagged, the reason
    listed in the summary."""


@dataclass(frozen=True)
class MusicnnVocabulary:
    """Field -> ``{caption word: [indices into the 100 probabilities]}``."""
    fields: dict

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()[:16]


def all_tags() -> list[str]:
    """``["mtt:guitar", ..., "msd:happy"]``: the order of the 100 probabilities."""
    return [f"{m}:{t}" for m in MODELS for t in TAGS[m]]


def _indices(tag: str) -> list[int]:
    """Indices of ``tag`` (``mtt:x``, ``msd:x`` or ``x`` for every model having it; any case)."""
    model, _, name = tag.rpartition(":")
    model, name = model.strip().lower(), name.strip().lower()
    return [i for i, full in enumerate(all_tags())
            if full.partition(":")[2].lower() == name and (not model or full.startswith(model + ":"))]


def load_musicnn_vocabulary(path=None) -> MusicnnVocabulary:
    """The musicnn vocabulary in the YAML file ``path`` (default: the shipped one); one-line
    ValueError for a missing or malformed file, or a model tag musicnn does not have."""
    import yaml
    path = Path(path) if path else DEFAULT_MUSICNN_VOCABULARY
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_keys_loader())
    except OSError as exc:
        raise ValueError(f"cannot read the tag vocabulary {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"tag vocabulary {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    shape = (f"tag vocabulary {path} must map fields ({', '.join(TAG_FIELDS)}) to caption words and their "
             f"musicnn tags, e.g. 'style: {{electronic: [mtt:electronic, msd:electronica]}}'")
    if not isinstance(data, dict) or not data:
        raise ValueError(shape)
    clap_keys = {"prompt", "tags", "background"}
    if any(isinstance(v, dict) and set(v) & clap_keys for v in data.values()) \
            or any(isinstance(v, list) for v in data.values()):
        raise ValueError(f"tag vocabulary {path} is a CLAP vocabulary (lists of words, prompt/tags/background); "
                         f"musicnn needs caption words mapped to its model tags, e.g. "
                         f"'style: {{electronic: [mtt:electronic, msd:electronica]}}' "
                         f"(see {DEFAULT_MUSICNN_VOCABULARY.name})")
    fields = {}
    for name, words in data.items():
        if name not in TAG_FIELDS:
            raise ValueError(f"tag vocabulary {path}: unknown field {name!r}; use {', '.join(TAG_FIELDS)}")
        if not isinstance(words, dict) or not words:
            raise ValueError(shape)
        fields[name] = {}
        seen = {}
        for word, tags in words.items():
            tags = [tags] if isinstance(tags, str) else tags
            if not isinstance(word, str) or not word.strip() or not isinstance(tags, list) or not tags \
                    or not all(isinstance(t, str) for t in tags):
                raise ValueError(shape)
            if word.strip().lower() in seen:   # one caption word twice: the second would silently win
                raise ValueError(f"tag vocabulary {path}: {name!r} has the caption word {word.strip()!r} twice "
                                 f"({seen[word.strip().lower()]!r} and {word!r}); list it once with all its tags")
            seen[word.strip().lower()] = word
            indices = []
            for tag in tags:
                found = _indices(tag)
                if not found:
                    raise ValueError(f"tag vocabulary {path}: {word!r} names {tag!r}, which musicnn does not "
                                     f"have; its tags are {', '.join(all_tags())}")
                indices += [i for i in found if i not in indices]
            fields[name][word.strip()] = indices
    return MusicnnVocabulary(fields)


def _unique_keys_loader():
    """A yaml SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last
    silently: a word's first list of tags would be lost)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str) and key in keys:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})",
                        key_node.start_mark)
                keys.add(key)
            return super().construct_mapping(node, deep)
    return UniqueKeys


@dataclass
class MusicnnBackend:
    """musicnn's side of the tag pass (see ``tagging.ClapBackend``)."""
    model: object           # musicnn.Musicnn
    vocabulary: MusicnnVocabulary
    dim: int = 2 * 50
    window_seconds: float = WINDOW_SECONDS

    def embed(self, windows: list[tuple[np.ndarray, int]]) -> np.ndarray:
        """``[100]``: the mean tag probabilities over the 3 s patches of the track's windows
        (``(wave [n], rate)``) that are not near silence. ``UntaggableError`` for under
        ``MIN_TAG_SECONDS`` of audio or when every patch is near silence."""
        seconds = sum(len(w) / rate for w, rate in windows)
        if seconds < MIN_TAG_SECONDS:
            raise UntaggableError(f"too short to tag ({seconds:.2f} s of audio, musicnn needs at least "
                                  f"{MIN_TAG_SECONDS:g} s)")
        probs = np.concatenate([self.model.patch_probabilities(w, rate) for w, rate in windows])
        if not len(probs):
            raise UntaggableError("silent: no 3 s patch above -60 dBFS, nothing to tag")
        return probs.mean(axis=0)

    def score(self, embedding: np.ndarray, threshold: float, max_tags: int) -> dict:
        """``{field: {word: score}}``, best first: a word's score is the highest probability of its
        model tags; kept when at least ``threshold``, at most ``max_tags`` per field."""
        tags = {}
        for name, words in self.vocabulary.fields.items():
            scores = {word: float(max(embedding[i] for i in indices)) for word, indices in words.items()}
            order = sorted(scores, key=lambda w: -scores[w])
            tags[name] = {w: round(scores[w], 4) for w in order[:max_tags] if scores[w] >= threshold}
        return tags


def unavailable(folder: Path) -> ClapUnavailableError:
    return ClapUnavailableError(
        f"musicnn weights for --tagger musicnn are not in {folder}: run `python -m dataset_tools fetch-tagger "
        f"musicnn` once (needs PyPI access), or pass --tagger-model DIR, or leave out --tagger")


def resolve_musicnn(name: str | None) -> tuple[str, str]:
    """``(tiny:SEED or the weights folder, identity)``, checking the files are there (none is read)."""
    from .musicnn_fetch import default_dir
    seed = tiny_seed(name, "musicnn") if name else None
    if seed is not None:
        return f"tiny:{seed}", f"tiny-musicnn:{seed}/p{PREPROCESSING_VERSION}"
    folder = Path(name).expanduser() if name else default_dir()
    paths = weight_paths(folder)
    if not all(p.is_file() for p in paths.values()):
        raise unavailable(folder)
    digest = hashlib.sha256(":".join(_content_hash(p) for p in paths.values()).encode()).hexdigest()[:8]
    # The preprocessing version: a change of resampler or spectrogram re-embeds cached tracks.
    return str(folder.resolve()), f"musicnn:{folder.resolve()}@{digest}/p{PREPROCESSING_VERSION}"


_HASHES: dict = {}


def _content_hash(path: Path) -> str:
    """sha256 of the file's bytes (weights rewritten with the same size within the clock's
    resolution must still change the identity), remembered per (path, size, mtime_ns) in this
    process: the two weight files are 3 MB each."""
    from .musicnn_fetch import sha256_file
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def load_musicnn_backend(options) -> tuple[str, str, MusicnnVocabulary, MusicnnBackend]:
    """``(model, identity, vocabulary, backend)`` of ``--tagger musicnn`` (``tagging.check_tagger``
    makes its setup of them): vocabulary and both nets loaded before any work; one-line
    ``ValueError``/``ClapUnavailableError``."""
    from .musicnn import load_musicnn, tiny_musicnn
    model, model_id = resolve_musicnn(options.tagger_model)
    vocabulary = load_musicnn_vocabulary(options.tag_vocabulary)
    seed = tiny_seed(model)
    try:
        musicnn = tiny_musicnn(seed) if seed is not None else load_musicnn(model)
    except Exception as exc:  # safetensors/torch raise many kinds for broken or foreign files
        raise ClapUnavailableError(
            f"musicnn weights in {model} cannot be loaded ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]}); run `python -m dataset_tools fetch-tagger musicnn "
            f"--to {model}` again") from None
    return model, model_id, vocabulary, MusicnnBackend(musicnn, vocabulary)
