"""Settings of ``separate`` and the separation defaults (bottom of the package: no torch).

The ``SEPARATION_*`` numbers are the defaults of ``python -m dataset_tools separate`` and
``prepare --remove-vocals``; they live here, beside the code that uses them.

Each ``SeparateOptions`` field is also the command-line flag of the same name (``--stems``,
``--subtype``...), with its help text and default here (``dataset_tools.cli``); two flags keep
their older names as aliases (``--instrumental``, ``--wav-format``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..cli import option
from .stems import INSTRUMENTAL_MODES, stem_picker

SEPARATION_MODEL = "htdemucs"     # demucs' default pretrained model (4 stems, 44.1 kHz stereo)
SEPARATION_STEMS = ("instrumental", "vocals")  # default stems; instrumental = mix - vocals
SEPARATION_OVERLAP = 0.25         # share of each model window overlapping the next (as demucs)
SEPARATION_MAX_SHIFT_SECONDS = 0.5  # random window offsets of the "shift trick" (as demucs)
SEPARATION_BLOCK_FRAMES = 65_536  # input frames decoded per read: memory stays flat with length
SEPARATION_DOWNLOAD_TIMEOUT_S = 60  # a pretrained download whose connection stalls this long fails

WAV_FORMATS = ("PCM_16", "PCM_24", "FLOAT")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_STEM = re.compile(r"^[a-z0-9_]+$")
_GROUP = "separation"  # the --help section of the flags


class StemList(tuple):
    """Stem names; a comma-separated string is split (``--stems instrumental,vocals``). Only
    splits: ``SeparateOptions`` checks the names (one ``error:`` line, not an argparse usage error)."""

    def __new__(cls, stems=()):
        return super().__new__(cls, stems.split(",") if isinstance(stems, str) else stems)


@dataclass
class SeparateOptions:
    """Settings of ``separate`` (defaults: htdemucs, instrumental + vocals, 16-bit WAVs).

    Attributes:
        stems: stems to write: ``instrumental`` and/or the model's sources (htdemucs: drums,
            bass, other, vocals); ``all`` means every model source. A comma-separated string
            is accepted.
        model: pretrained demucs name (downloaded once, then cached) or a model file path.
        device: ``auto`` (GPU when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        segment: model window in seconds; None uses the model's own (7.8 s for htdemucs).
        overlap: share of each window shared with the next, cross-faded (0 to 0.9).
        shifts: extra randomly offset passes averaged in (demucs' shift trick; N+1 x slower).
        instrumental_mode: ``difference`` (mix - vocals) or ``sum`` (the other sources).
        subtype: WAV sample format: PCM_16, PCM_24 or FLOAT (FLOAT never clips).
        force: separate again even when the outputs are up to date.
        progress: show progress bars.
        trust_model_file: load a model file with full pickle (only for files you trust).
        seed: seed of the shift offsets (same seed, same output).
    """
    stems: StemList = option(SEPARATION_STEMS, "comma-separated stems: instrumental (everything but vocals) "
                             "and/or the model's sources (htdemucs: drums,bass,other,vocals); 'all' = every "
                             "source", metavar="LIST", group=_GROUP)
    model: str = option(SEPARATION_MODEL, "pretrained demucs model (downloaded once, then cached: htdemucs, "
                        "htdemucs_ft, htdemucs_6s, mdx_extra...) or a local model file (.th)",
                        metavar="NAME|FILE", group=_GROUP)
    device: str = option("auto", "auto (GPU if available), cpu, cuda, cuda:N, mps", group=_GROUP)
    segment: float | None = option(None, "model window in seconds (default: the model's, 7.8 for htdemucs, "
                                   "which pads shorter windows to that; shorter ones save memory with the "
                                   "mdx models)", metavar="S", group=_GROUP)
    overlap: float = option(SEPARATION_OVERLAP, "share of each window overlapping the next", metavar="F",
                            group=_GROUP)
    shifts: int = option(0, "average N extra randomly offset passes: slightly better, N+1 times slower",
                         metavar="N", group=_GROUP)
    instrumental_mode: str = option("difference", "difference: mix minus vocals (exact complement); sum: the "
                                    "other stems added", choices=INSTRUMENTAL_MODES,
                                    aliases=("--instrumental",), group=_GROUP)
    subtype: str = option("PCM_16", "WAV sample format; FLOAT never clips", choices=WAV_FORMATS,
                          aliases=("--wav-format",), group=_GROUP)
    force: bool = option(False, "separate again songs already done with these settings", group=_GROUP)
    progress: bool = option(True, "show progress bars", group=_GROUP)
    trust_model_file: bool = option(False, "load a --model file that holds arbitrary Python objects (only "
                                    "files you trust)", group=_GROUP)
    seed: int = option(0, "seed of the --shifts window offsets (same seed, same output)", metavar="N",
                       group=_GROUP)

    def __post_init__(self):
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)
        stems = [str(s).strip().lower() for s in StemList(self.stems) if str(s).strip()]
        need(bool(stems), "no stems requested: e.g. --stems instrumental,vocals")
        bad = [s for s in stems if not _STEM.match(s)]
        need(not bad, f"stem names are words like vocals or drums, got {bad[0]!r}" if bad else "")
        need(len(set(stems)) == len(stems), f"a stem is requested twice in {','.join(stems)}")
        self.stems = tuple(stems)
        self.model = str(self.model).strip()
        need(bool(self.model), "model is empty: give a pretrained name (htdemucs) or a model file")
        self.device = str(self.device or "auto").strip().lower()
        need(bool(_DEVICE.match(self.device)), f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        need(self.segment is None or 0.5 <= self.segment <= 600,
             f"segment must be between 0.5 and 600 seconds, got {self.segment}")
        need(0.0 <= self.overlap <= 0.9, f"overlap must be between 0 and 0.9, got {self.overlap}")
        need(isinstance(self.shifts, int) and 0 <= self.shifts <= 20,
             f"shifts must be a whole number from 0 to 20, got {self.shifts}")
        need(self.instrumental_mode in INSTRUMENTAL_MODES,
             f"instrumental mode must be one of {', '.join(INSTRUMENTAL_MODES)}, got {self.instrumental_mode!r}")
        self.subtype = str(self.subtype).upper()
        need(self.subtype in WAV_FORMATS, f"WAV format must be one of {', '.join(WAV_FORMATS)}, got {self.subtype}")

    def stems_for(self, separator) -> list[str]:
        """The requested stems with ``all`` expanded (``separator``: a loaded ``Separator``);
        ValueError for a stem the model lacks."""
        stems: list[str] = []
        for stem in self.stems:
            for s in (separator.sources if stem == "all" else [stem]):
                if s not in stems:
                    stems.append(s)
        stem_picker(separator.sources, stems, self.instrumental_mode)  # validates
        return stems
