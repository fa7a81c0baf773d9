"""``PrepareOptions``: every setting of ``dataset_tools prepare``, checked up front.

Each field is also the command-line flag of the same name (``--segment-seconds``...), with
its help text and default here (``dataset_tools.cli``); a few flags keep their older names
as aliases (``--wav-format``, ``--silence-db``/``--no-trim``, ``--loudness``,
``--no-analysis``, ``--midi-release``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .captions import DEFAULT_TEMPLATE, template_fields
from .cli import option
from .dataset_format import (CHANNELS, MIN_SEGMENT_SECONDS, SAMPLE_RATE, SEGMENT_SECONDS, SUBTYPE,
                             VALID_FRACTION)
from .midi_render import MIDI_RELEASE_SECONDS
from .segments import SILENCE_DB
from .separation.options import SEPARATION_MODEL

SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
# Options that do not change any WAV/caption/JSON: changing them never reconverts.
NOT_HASHED = ("workers", "valid_fraction", "seed", "absolute_paths", "progress", "separation_device")
# Tag options: the tag pass after conversion keeps its own keys (tagging.py), so changing them
# re-scores or re-captions without converting (or decoding) anything again.
TAG_OPTIONS = ("tagger", "tagger_model", "tag_vocabulary", "tag_threshold", "max_tags_per_field")
# Options that change only the captions, not the audio (the tag pass's embedding cache ignores them).
CAPTION_OPTIONS = ("analyze", "caption_template")
TAGGERS = ("none", "clap", "musicnn")
DEFAULT_TAGGER_MODEL = "laion/larger_clap_music"
# --tag-threshold when not given. CLAP: a tag's share of a softmax over its field (not calibrated
# on real weights); musicnn: a mean sigmoid probability, chosen on real music (docs/dataset_tools.md).
DEFAULT_TAG_THRESHOLDS = {"clap": 0.15, "musicnn": 0.2}
# The default template before it gained {style} and {mood}. Those are empty without --tagger, so
# both give the same captions: hashing the new default as the former one keeps datasets made
# before up to date instead of reconverting them all (the tag pass adds tags when asked).
FORMER_DEFAULT_TEMPLATE = ("{genre} music, {title}, by {artist}, played on {instrument}, "
                           "{tempo} tempo at {bpm} bpm, in {key}")


@dataclass
class PrepareOptions:
    """Settings for ``prepare`` (defaults: 44.1 kHz mono 16-bit, 30 s segments, no overlap).
    Each field's help text (``prepare --help``) says what it does; ``None`` for ``trim_db``
    keeps the silence, for ``loudness_lufs`` leaves levels, for ``soundfont`` finds one on
    the system, for ``workers`` uses every CPU core (1 runs in this process)."""
    # audio
    sample_rate: int = option(SAMPLE_RATE, "output sample rate", metavar="HZ", group="audio")
    channels: int = option(CHANNELS, "1 = mono, 2 = stereo", choices=(1, 2), group="audio")
    subtype: str = option(SUBTYPE, "WAV sample format", choices=SUBTYPES, aliases=("--wav-format",),
                          group="audio")
    segment_seconds: float = option(SEGMENT_SECONDS, "cut long tracks into segments this long", metavar="S",
                                    group="audio")
    overlap_seconds: float = option(0.0, "overlap between consecutive segments", metavar="S", group="audio")
    min_seconds: float = option(MIN_SEGMENT_SECONDS, "drop a final remainder shorter than this; a short "
                                "track is always kept", metavar="S", group="audio")
    trim_db: float | None = option(SILENCE_DB, "trim leading/trailing audio below this level in dBFS",
                                   metavar="DB", aliases=("--silence-db",), group="audio",
                                   const_flags={"--no-trim": (None, "keep leading/trailing silence")})
    loudness_lufs: float | None = option(None, "normalise each track to this loudness, e.g. -14 "
                                         "(default: off)", metavar="LUFS", aliases=("--loudness",),
                                         group="audio")
    # captions
    analyze: bool = option(True, "estimate tempo and key for the captions (off: faster)",
                           aliases=("--no-analysis",), group="captions")
    caption_template: str = option(DEFAULT_TEMPLATE, 'caption template (default: "%(default)s"); '
                                   "parts with an unknown field are dropped", metavar="TEXT", group="captions")
    # automatic tags
    tagger: str = option("none", "tag instruments, moods and styles for the captions: clap = zero-shot "
                         "scores of a music CLAP; musicnn = musicnn's pretrained MagnaTagATune and "
                         "Million-Song tags (weights: `python -m dataset_tools fetch-tagger musicnn`; see "
                         "docs/dataset_tools.md)", choices=TAGGERS, group="tags")
    tagger_model: str | None = option(None, f"clap: a hub name in the local cache or a local folder (default: "
                                      f"{DEFAULT_TAGGER_MODEL}); musicnn: the folder fetch-tagger wrote "
                                      "(default: $XDG_CACHE_HOME/musicgen-finetune/musicnn, $XDG_CACHE_HOME "
                                      "defaulting to ~/.cache); either: tiny[:SEED] "
                                      "(random weights, for tests)", metavar="NAME|DIR", group="tags")
    tag_vocabulary: str | None = option(None, "YAML file of the tags to score (default: the shipped "
                                        "dataset_tools/tag_vocabulary.yaml for clap, "
                                        "dataset_tools/musicnn_vocabulary.yaml for musicnn)", metavar="YAML",
                                        group="tags")
    tag_threshold: float | None = option(None, "keep a tag whose score is at least this (default: "
                                         + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_TAG_THRESHOLDS.items())
                                         + "); clap: a tag's share of the softmax over its field's tags and a "
                                         "background prompt, which it must also beat; musicnn: a word scores the "
                                         "highest of its model tags' mean probabilities over the track",
                                         metavar="P", group="tags")
    max_tags_per_field: int = option(2, "at most this many tags per field (instrument, mood, style)",
                                     metavar="N", group="tags")
    # MIDI
    soundfont: str | None = option(None, "General MIDI soundfont (default: found on the system, e.g. "
                                   "FluidR3_GM.sf2)", metavar="SF2", group="MIDI")
    midi_release_seconds: float = option(MIDI_RELEASE_SECONDS, "seconds kept after the last note-off",
                                         metavar="S", aliases=("--midi-release",), group="MIDI")
    # split and run
    valid_fraction: float = option(VALID_FRACTION, "share of each genre's tracks used for validation",
                                   metavar="F", group="split and run")
    seed: int = option(0, "seed of the train/valid split", group="split and run")
    workers: int | None = option(None, "worker processes (default: all CPU cores; 1 = no subprocesses)",
                                 metavar="N", group="split and run")
    absolute_paths: bool = option(False, "write absolute WAV paths in the manifests (default: relative "
                                  "to OUT)", group="split and run")
    progress: bool = option(True, "show a progress bar", group="split and run")
    # vocal removal
    remove_vocals: bool = option(False, "train on instrumentals: remove vocals with demucs before the "
                                 "rest (slow on CPU; see docs/separation.md)", group="vocal removal")
    separation_model: str = option(SEPARATION_MODEL, "demucs pretrained name or local model file",
                                   metavar="NAME|FILE", group="vocal removal")
    separation_device: str = option("auto", "where demucs runs (auto = GPU when available)",
                                    choices=("auto", "cpu", "cuda"), group="vocal removal")

    def __post_init__(self):
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)
        need(isinstance(self.sample_rate, int) and 8000 <= self.sample_rate <= 192000,
             f"sample rate must be a whole number of Hz between 8000 and 192000, got {self.sample_rate}")
        need(self.channels in (1, 2), f"channels must be 1 (mono) or 2 (stereo), got {self.channels}")
        self.subtype = str(self.subtype).upper()
        need(self.subtype in SUBTYPES, f"WAV format must be one of {', '.join(SUBTYPES)}, got {self.subtype}")
        need(self.segment_seconds >= 1.0,
             f"segment length must be at least 1 second, got {self.segment_seconds}")
        need(0.0 <= self.overlap_seconds < self.segment_seconds,
             f"overlap must be at least 0 and shorter than a segment ({self.segment_seconds} s), "
             f"got {self.overlap_seconds}")
        need(0.0 <= self.min_seconds <= self.segment_seconds,
             f"minimum segment length must be between 0 and the segment length, got {self.min_seconds}")
        need(self.trim_db is None or -120.0 <= self.trim_db < 0.0,
             f"silence threshold must be a negative dBFS level (e.g. -60), got {self.trim_db}")
        need(self.loudness_lufs is None or -70.0 <= self.loudness_lufs <= -1.0,
             f"loudness target must be between -70 and -1 LUFS (e.g. -14), got {self.loudness_lufs}")
        need(self.midi_release_seconds >= 0.0,
             f"MIDI release time cannot be negative, got {self.midi_release_seconds}")
        need(0.0 <= self.valid_fraction < 1.0,
             f"validation fraction must be at least 0 and below 1, got {self.valid_fraction}")
        need(self.workers is None or (isinstance(self.workers, int) and self.workers >= 1),
             f"workers must be a whole number >= 1, got {self.workers}")
        need(self.tagger in TAGGERS, f"tagger must be one of {', '.join(TAGGERS)}, got {self.tagger!r}")
        need(self.tag_threshold is None or 0.0 <= self.tag_threshold <= 1.0,
             f"tag threshold must be between 0 and 1, got {self.tag_threshold}")
        need(isinstance(self.max_tags_per_field, int) and self.max_tags_per_field >= 1,
             f"max tags per field must be a whole number >= 1, got {self.max_tags_per_field}")
        fields = template_fields(self.caption_template)
        need(bool(fields) or bool(self.caption_template.strip()), "caption template is empty")

    def output_fields(self) -> dict:
        """The options that change outputs (hashed to decide what is up to date)."""
        fields = {k: v for k, v in asdict(self).items() if k not in NOT_HASHED + TAG_OPTIONS}
        if fields["caption_template"] == DEFAULT_TEMPLATE:
            fields["caption_template"] = FORMER_DEFAULT_TEMPLATE
        return fields

    def audio_fields(self) -> dict:
        """The options that change the segments' audio (the key of the tag pass's embeddings)."""
        return {k: v for k, v in self.output_fields().items() if k not in CAPTION_OPTIONS}
