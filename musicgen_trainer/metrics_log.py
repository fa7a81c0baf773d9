"""``OUT/metrics.jsonl``: the run's losses as plain JSON lines, for the studio's live curve.

One line per logged step (every ``--log-every`` steps, the last step, and every step with a
held-out evaluation), written by the main process and flushed line by line, so a reader sees
each step as soon as it is done without parsing TensorBoard's event files::

    {"step": 20, "loss": 5.91, "lr": 1e-05, "tokens_per_s": 812.4, "elapsed": 31.2, "epoch": 0.8}
    {"step": 200, "loss": 4.80, ..., "valid_loss": 5.02}

``elapsed`` counts the seconds of training (from the first step, the stops between a Ctrl-C and
its --resume left out). A resumed run keeps the lines up to the step it resumes from and drops
those beyond it (steps done after the state it resumes from were not kept), so the curve is the
run's, never doubled. Values that are not finite are written as ``null`` (strict JSON).
"""
from __future__ import annotations

import json
import math
import os
import time
import typing as tp
from pathlib import Path

from dataset_tools.atomic import atomic_path

METRICS_FILE = "metrics.jsonl"
FIELDS = ("step", "loss", "lr", "tokens_per_s", "epoch", "grad_norm", "valid_loss")
MAX_READ_BYTES = 16 << 20  # what a reader takes of the file (1M steps at log_every 10 is ~10 MB)


def _number(value) -> tp.Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_metrics(path: tp.Union[str, os.PathLike], max_bytes: int = MAX_READ_BYTES) -> tp.List[dict]:
    """The lines of a metrics file, in order, as dicts (a damaged or half-written line skipped);
    ``[]`` when there is no file. Reads at most the last ``max_bytes``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            raw = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = raw.split("\n")
    if size > max_bytes:
        lines = lines[1:]  # the first one is cut
    return [row for row in map(_row, lines) if row is not None]


def _row(line: tp.Union[str, bytes]) -> tp.Optional[dict]:
    """One line as a dict with an integer step; None for a damaged or half-written line."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def _kept_lines(path: Path, resumed_step: int) -> tp.Iterator[str]:
    """The whole file's lines up to ``resumed_step``, streamed (a long run's file may be larger
    than what a reader takes: a resume must not cut its beginning)."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        for raw in f:
            row = _row(raw.decode("utf-8", errors="replace"))
            if row is not None and row["step"] <= resumed_step:
                yield json.dumps(row) + "\n"


class MetricsLog:
    """Appends the run's lines to ``path``; ``resumed_step``: the step the run starts from (0: a
    new run, which starts the file afresh; otherwise the lines after that step are dropped)."""

    def __init__(self, path: Path, resumed_step: int = 0):
        self.path = Path(path)
        last = None
        with atomic_path(self.path) as tmp:  # rewritten whole, then appended to
            with open(tmp, "w", encoding="utf-8") as f:
                for line in (_kept_lines(self.path, resumed_step) if resumed_step else ()):
                    f.write(line)
                    last = line
        self.offset = float(_number(json.loads(last).get("elapsed")) or 0.0) if last else 0.0
        self.started = time.monotonic()
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, entry: dict) -> dict:
        """One line from a step's metrics (``state.history``'s entry); returns what was written."""
        row = {"step": int(entry["step"])}
        for key in FIELDS[1:]:
            if key in entry:
                row[key] = _number(entry[key])
        row["elapsed"] = round(self.offset + time.monotonic() - self.started, 3)
        self.file.write(json.dumps(row, allow_nan=False) + "\n")
        self.file.flush()
        return row

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
