"""``dataset_stats(out) -> DatasetStats``: what a prepared dataset holds, per genre.

Reads ``OUT/manifest.jsonl`` (written by ``prepare``) and the captions next to the WAVs;
prints counts, durations and caption examples, and draws a PNG bar chart of the hours of
audio per genre (``OUT/stats_hours_per_genre.png`` by default).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .cli import option
from .manifest import MANIFEST, read_manifest

CHART_FILE = "stats_hours_per_genre.png"
UNLABELLED = "(unlabelled)"


@dataclass
class StatsOptions:
    """Settings for ``stats`` (each field is also its ``--flag``; see its help).
    ``chart``: None writes ``OUT/stats_hours_per_genre.png``, ``""`` no chart."""
    examples: int = option(3, "caption examples shown per genre", metavar="N")
    chart: str | None = option(None, f"chart file (default: OUT/{CHART_FILE})", metavar="PNG",
                               const_flags={"--no-chart": ("", "do not draw the chart")})

    def __post_init__(self):
        if not isinstance(self.examples, int) or self.examples < 0:
            raise ValueError(f"number of caption examples must be 0 or more, got {self.examples}")


@dataclass
class DatasetStats:
    out: str
    genres: dict = field(default_factory=dict)    # genre -> {tracks, segments, seconds, train, valid}
    tracks: int = 0
    segments: int = 0
    seconds: float = 0.0
    captions: dict = field(default_factory=dict)  # genre -> [caption, ...]
    chart: str | None = None

    def summary(self) -> str:
        lines = [f"{self.out}: {self.tracks} tracks, {self.segments} segments, "
                 f"{self.seconds / 3600:.2f} hours"]
        width = max([len(g) for g in self.genres] + [5]) + 2
        lines.append(f"  {'genre':<{width}}{'tracks':>7}{'segments':>10}{'train':>7}{'valid':>7}"
                     f"{'minutes':>10}{'hours':>8}")
        for genre, g in self.genres.items():
            lines.append(f"  {genre:<{width}}{g['tracks']:>7}{g['segments']:>10}{g['train']:>7}"
                         f"{g['valid']:>7}{g['seconds'] / 60:>10.1f}{g['seconds'] / 3600:>8.2f}")
        if any(self.captions.values()):
            lines.append("Caption examples:")
            for genre, captions in self.captions.items():
                for caption in captions:
                    lines.append(f"  [{genre}] {caption}")
        if self.chart:
            lines.append(f"Chart: {self.chart}")
        return "\n".join(lines)


def dataset_stats(out, options: StatsOptions | None = None) -> DatasetStats:
    """Summarise the dataset in ``out``. ValueError if it has no manifest."""
    options = options or StatsOptions()
    out = Path(out).expanduser()
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"no {MANIFEST} in {out}: run `python -m dataset_tools prepare SRC {out}` first")
    try:
        rows = read_manifest(manifest)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {manifest}: {exc}") from None
    stats = DatasetStats(out=str(out))
    sources: dict[str, set] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        genre = row.get("genre") or UNLABELLED
        g = stats.genres.setdefault(genre, {"tracks": 0, "segments": 0, "seconds": 0.0, "train": 0, "valid": 0})
        g["segments"] += 1
        g["seconds"] += float(row["duration"])
        g[row.get("split", "train")] = g.get(row.get("split", "train"), 0) + 1
        sources.setdefault(genre, set()).add(row.get("source", row["path"]))
        captions = stats.captions.setdefault(genre, [])
        if len(captions) < options.examples:
            txt = (out / row["path"]).with_suffix(".txt")
            if txt.is_file():
                text = txt.read_text(encoding="utf-8").strip()
                if text and text not in captions:
                    captions.append(text)
    for genre, g in stats.genres.items():
        g["tracks"] = len(sources[genre])
        g["seconds"] = round(g["seconds"], 3)
    stats.genres = dict(sorted(stats.genres.items(), key=lambda kv: (kv[0] == UNLABELLED, kv[0])))
    stats.captions = {g: stats.captions[g] for g in stats.genres}
    stats.tracks = sum(g["tracks"] for g in stats.genres.values())
    stats.segments = len(rows)
    stats.seconds = round(sum(g["seconds"] for g in stats.genres.values()), 3)
    if options.chart != "" and stats.genres:
        stats.chart = str(draw_chart(stats, Path(options.chart) if options.chart else out / CHART_FILE))
    return stats


def draw_chart(stats: DatasetStats, path: Path) -> Path:
    """Horizontal bar chart of hours per genre, each bar labelled with its duration."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    genres = list(stats.genres)
    hours = [stats.genres[g]["seconds"] / 3600 for g in genres]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(genres) + 1.5))
    bars = ax.barh(genres, hours, color="#4C72B0")
    ax.invert_yaxis()
    ax.set_xlabel("hours of audio")
    ax.set_title(f"{stats.tracks} tracks, {stats.segments} segments, {stats.seconds / 3600:.2f} h")
    for bar, g in zip(bars, genres):
        seconds = stats.genres[g]["seconds"]
        label = f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {label}", va="center")
    ax.set_xlim(0, max(hours) * 1.25 if max(hours) > 0 else 1)
    fig.tight_layout()
    from .atomic import atomic_path
    try:  # a new file renamed into place: a link at ``path`` is replaced, never written through
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
