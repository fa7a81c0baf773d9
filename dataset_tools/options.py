"""``PrepareOptions``: every setting of ``dataset_tools prepare``, checked up front."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from musicgen_trainer.constants import (SEPARATION_MODEL, DATASET_CHANNELS, DATASET_SAMPLE_RATE, DATASET_SUBTYPE,
                                        MIDI_RELEASE_SECONDS, MIN_SEGMENT_SECONDS, SEGMENT_SECONDS,
                                        SILENCE_DB, VALID_FRACTION)

from .captions import DEFAULT_TEMPLATE, template_fields

SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
# Options that do not change any WAV/caption/JSON: changing them never reconverts.
NOT_HASHED = ("workers", "valid_fraction", "seed", "absolute_paths", "progress", "separation_device")


@dataclass
class PrepareOptions:
    """Settings for ``prepare`` (defaults: 44.1 kHz mono 16-bit, 30 s segments, no overlap).

    Attributes:
        sample_rate: output rate in Hz.
        channels: 1 (mono) or 2 (stereo).
        subtype: WAV sample format: PCM_16, PCM_24 or FLOAT.
        segment_seconds: length of the training segments long tracks are cut into.
        overlap_seconds: how much consecutive segments share (0 = back to back).
        min_seconds: a final remainder shorter than this is dropped (never a whole track).
        trim_db: leading/trailing audio quieter than this (dBFS) is cut; None keeps it.
        loudness_lufs: normalise each track to this loudness (e.g. -14); None leaves levels.
        analyze: estimate tempo and key for the captions (librosa).
        caption_template: see ``captions.py``; parts with an unknown field are dropped.
        soundfont: General MIDI .sf2 for MIDI files; None finds one on the system.
        midi_release_seconds: audio kept after a MIDI file's last note-off.
        valid_fraction: share of each genre's tracks put in the validation split.
        seed: seed of the split.
        workers: worker processes; None uses every CPU core, 1 runs in this process.
        absolute_paths: write absolute WAV paths in the manifests (default: relative to OUT).
        progress: show a progress bar.
        remove_vocals: replace each audio track by its instrumental (demucs) before the rest;
            separation_model is a demucs name or model file, separation_device auto/cpu/cuda.
    """
    sample_rate: int = DATASET_SAMPLE_RATE
    channels: int = DATASET_CHANNELS
    subtype: str = DATASET_SUBTYPE
    segment_seconds: float = SEGMENT_SECONDS
    overlap_seconds: float = 0.0
    min_seconds: float = MIN_SEGMENT_SECONDS
    trim_db: float | None = SILENCE_DB
    loudness_lufs: float | None = None
    analyze: bool = True
    caption_template: str = DEFAULT_TEMPLATE
    soundfont: str | None = None
    midi_release_seconds: float = MIDI_RELEASE_SECONDS
    valid_fraction: float = VALID_FRACTION
    seed: int = 0
    workers: int | None = None
    absolute_paths: bool = False
    progress: bool = True
    remove_vocals: bool = False           # train on instrumentals: demucs removes the vocals
    separation_model: str = SEPARATION_MODEL
    separation_device: str = "auto"

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
        fields = template_fields(self.caption_template)
        need(bool(fields) or bool(self.caption_template.strip()), "caption template is empty")

    def output_fields(self) -> dict:
        """The options that change outputs (hashed to decide what is up to date)."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_HASHED}
