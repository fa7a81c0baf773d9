"""What a ``separate`` run did, file by file: written stems, skipped files and why.

Saved as ``OUT/separate_report.json`` and printed as a short summary.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import write_json_atomic
from ..report import skipped_lines

REPORT_FILE = "separate_report.json"
MARKER_FILE = "separation.json"  # in each song's folder: what made its stems (re-runs skip it)


@dataclass
class SeparatedFile:
    """One input. ``status``: ``separated``, ``up_to_date`` (same stems already made with the
    same settings), ``skipped`` (bad input: ``reason`` says why) or ``failed`` (an error of
    ours or of the machine, e.g. disk full or GPU out of memory)."""
    source: str
    status: str
    reason: str = ""
    outputs: dict = field(default_factory=dict)   # stem -> WAV path
    seconds: float = 0.0                          # input duration
    sample_rate: int = 0                          # of the input and of every stem
    channels: int = 0                             # of the stems (1 for mono input, else 2)
    elapsed: float = 0.0                          # wall-clock seconds spent on this file
    clipped: dict = field(default_factory=dict)   # stem -> samples clipped to [-1, 1] (PCM WAVs)
    fatal: bool = False                           # failed for the machine (disk full): the batch stops

    @property
    def realtime_factor(self) -> float | None:
        """Processing time / audio duration (below 1: faster than real time)."""
        return self.elapsed / self.seconds if self.seconds > 0 and self.status == "separated" else None

    def line(self) -> str:
        """One line for the terminal."""
        if self.status == "separated":
            rtf = self.realtime_factor
            text = f"{self.source}: {len(self.outputs)} stem(s), {self.seconds:.1f} s of audio in " \
                   f"{self.elapsed:.1f} s" + (f" (x{rtf:.2f} real time)" if rtf is not None else "")
            if any(self.clipped.values()):
                text += "; clipped: " + ", ".join(f"{k} {v}" for k, v in self.clipped.items() if v)
            return text
        if self.status == "up_to_date":
            return f"{self.source}: already separated with these settings"
        return f"{self.source}: {self.status}: {self.reason}"


def is_report(path: Path) -> bool:
    """True when ``path`` is a report separate wrote (it may replace only those)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"out", "model", "stems", "files"} <= set(data)


@dataclass
class SeparateReport:
    out: str
    model: str
    device: str
    stems: list
    options: dict
    files: list = field(default_factory=list)     # SeparatedFile, in input order
    elapsed_seconds: float = 0.0

    def by_status(self, status: str) -> list:
        return [f for f in self.files if f.status == status]

    @property
    def separated(self) -> list:
        return self.by_status("separated")

    @property
    def skipped(self) -> list:
        return self.by_status("skipped")

    @property
    def failed(self) -> list:
        return self.by_status("failed")

    def to_dict(self) -> dict:
        data = asdict(self)
        for item, f in zip(data["files"], self.files):
            rtf = f.realtime_factor
            item["realtime_factor"] = None if rtf is None else round(rtf, 4)
            del item["fatal"]  # the reason says it
        return data

    def save(self, out: Path | None = None) -> Path:
        path = Path(out or self.out) / REPORT_FILE
        return write_json_atomic(path, self.to_dict())

    def summary(self, max_listed: int = 20) -> str:
        """A few lines for the terminal."""
        done = self.separated
        audio = sum(f.seconds for f in done)
        work = sum(f.elapsed for f in done)
        lines = [f"Separated {len(done)} of {len(self.files)} file(s) with {self.model} on {self.device} "
                 f"({', '.join(self.stems)}) into {self.out}"]
        if done:
            lines.append(f"  {audio / 60:.1f} min of audio in {work:.1f} s (x{work / max(audio, 1e-9):.2f} real time)")
        if self.by_status("up_to_date"):
            lines.append(f"  {len(self.by_status('up_to_date'))} already separated with these settings "
                         "(--force redoes them)")
        clipped = [f for f in done if any(f.clipped.values())]
        if clipped:
            lines.append(f"  {len(clipped)} file(s) had stem samples beyond full scale, clipped in the WAV "
                         "(--subtype FLOAT keeps them)")
        lines += skipped_lines([(f.source, f.reason) for f in self.skipped], max_listed,
                               Path(self.out) / REPORT_FILE, [(f.source, f.reason) for f in self.failed])
        return "\n".join(lines)
