"""The report of a ``prepare`` run: what was converted, what was skipped and why.

Saved as ``OUT/prepare_report.json`` and printed as a short summary. Counts named
``*_this_run`` describe the run; everything else describes the whole dataset in OUT
(including tracks that were already up to date), so the report is complete on re-runs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .files import write_text_atomic

REPORT_FILE = "prepare_report.json"
NO_FOLDER = "(no genre folder)"


@dataclass
class PrepareReport:
    src: str
    out: str
    files_found: int = 0                 # audio and MIDI files in SRC
    converted_this_run: int = 0
    up_to_date: int = 0                  # already converted (or skipped) with these options
    segments_written_this_run: int = 0
    audio_seconds_this_run: float = 0.0  # decoded source audio converted by this run
    tracks: int = 0                      # converted tracks in the dataset
    segments: int = 0
    seconds: float = 0.0                 # total segment audio in the dataset
    genres: dict = field(default_factory=dict)      # folder -> {tracks, segments, seconds}
    split: dict = field(default_factory=dict)       # train/valid track and segment counts
    unlabelled: list = field(default_factory=list)  # source paths for the genre classifier
    skipped: list = field(default_factory=list)     # [{"source", "reason"}]: not converted
    failed: list = field(default_factory=list)      # [{"source", "reason"}]: our errors, retried next run
    ignored: list = field(default_factory=list)     # [{"source", "reason"}]: not music files
    repaired: list = field(default_factory=list)    # [{"source", "repairs"}]: MIDI fixes applied
    mono_copied: list = field(default_factory=list)  # mono sources copied to both sides (--channels 2)
    removed_outputs: int = 0             # files of vanished sources deleted from OUT
    manifests: dict = field(default_factory=dict)   # manifest file -> rows
    tagging: dict = field(default_factory=dict)     # --tagger: model, tracks tagged, embeddings computed/cached
    longest_caption: dict = field(default_factory=dict)  # {"path", "words", "caption"}: T5 reads it all
    workers: int = 1
    elapsed_seconds: float = 0.0
    options: dict = field(default_factory=dict)

    def save(self, out: Path) -> Path:
        return write_text_atomic(Path(out) / REPORT_FILE,
                                 json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    def summary(self, max_skipped: int = 20) -> str:
        """A few lines for the terminal."""
        lines = [f"Dataset: {self.tracks} tracks -> {self.segments} segments "
                 f"({self.seconds / 3600:.2f} h) in {self.out}; {self.files_found} audio/MIDI files found",
                 f"  this run: {self.converted_this_run} converted, {self.up_to_date} already up to date, "
                 f"{self.elapsed_seconds:.1f} s with {self.workers} worker(s)"]
        if self.genres:
            width = max(len(g) for g in self.genres) + 2
            lines.append(f"  {'genre':<{width}}{'tracks':>7}{'segments':>10}{'minutes':>10}")
            for genre, g in self.genres.items():
                lines.append(f"  {genre:<{width}}{g['tracks']:>7}{g['segments']:>10}{g['seconds'] / 60:>10.1f}")
        if self.split:
            lines.append(f"  split: {self.split['train_tracks']} train / {self.split['valid_tracks']} "
                         f"valid tracks; {len(self.unlabelled)} unlabelled track(s) in unlabelled.jsonl")
        skipped = [(item["source"], item["reason"]) for item in self.skipped]
        failed = [(item["source"], item["reason"]) for item in self.failed]
        t = self.tagging
        if t.get("error"):
            lines.append(f"  tags ({t.get('model') or 'none'}): the tag pass failed: {t['error']}")
        elif t.get("model"):
            lines.append(f"  tags ({t['model']}): {t['tracks_tagged_this_run']} track(s) tagged this run, "
                         f"{t['embeddings_computed']} embedding(s) computed, {t['embeddings_from_cache']} from "
                         f"the cache" + (f", {len(t['failed'])} failed" if t.get("failed") else ""))
        for item in t.get("untaggable", [])[:max_skipped]:
            lines.append(f"    left untagged: {item['source']}: {item['reason']}")
        if len(t.get("untaggable", [])) > max_skipped:
            lines.append(f"    ... and {len(t['untaggable']) - max_skipped} more left untagged (see {REPORT_FILE})")
        if t.get("untagged_this_run"):
            taggers = "|".join(sorted(t.get("removed_taggers") or ["clap", "musicnn"]))
            lines.append(f"  tags removed from {t['untagged_this_run']} track(s) (run with --tagger {taggers} to "
                         f"keep them)")
        if self.longest_caption:
            c = self.longest_caption
            lines.append(f"  longest caption ({c['words']} words, {c['path']}): {c['caption']}")
        if self.mono_copied:
            lines.append(f"  {len(self.mono_copied)} mono source(s) copied to both channels: identical left and "
                         f"right (listed under mono_copied in {REPORT_FILE})")
        lines += skipped_lines(skipped, max_skipped, Path(self.out) / REPORT_FILE, failed)
        return "\n".join(lines)


def skipped_lines(problems: list[tuple[str, str]], max_listed: int, report: Path,
                  failed: list[tuple[str, str]] = ()) -> list[str]:
    """The end of a printed summary: up to ``max_listed`` ``(source, reason)`` pairs of
    skipped inputs, then of ``failed`` ones (errors of ours or of the machine, not of the
    input: the next run retries them), then where the full report is."""
    lines = []
    for title, items in (("Skipped", list(problems)), ("Failed", list(failed))):
        if items:
            lines.append(f"{title} {len(items)}:")
            lines += [f"  {source}: {reason}" for source, reason in items[:max_listed]]
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed} more (see {report.name})")
    lines.append(f"Report: {report}")
    return lines


def build_report(*, src, out, options, workers, scan, records, results, up_to_date, valid,
                 removed_outputs, manifest_counts, elapsed, tagging=None) -> PrepareReport:
    """Assemble the report from the scan, the state records and this run's results."""
    report = PrepareReport(src=str(src), out=str(out), workers=workers,
                           files_found=len(scan.sources), up_to_date=len(up_to_date),
                           removed_outputs=removed_outputs, manifests=manifest_counts,
                           elapsed_seconds=round(elapsed, 3), options=asdict(options), tagging=tagging or {})
    for result in results:
        if result.status == "converted":
            report.converted_this_run += 1
            report.segments_written_this_run += len(result.segments)
            report.audio_seconds_this_run += result.track.get("decoded_seconds", 0.0)
    report.audio_seconds_this_run = round(report.audio_seconds_this_run, 3)
    report.skipped = [{"source": rel, "reason": reason} for rel, reason in scan.skipped]
    report.ignored = [{"source": rel, "reason": reason} for rel, reason in scan.ignored]
    train_tracks = valid_tracks = train_segments = valid_segments = 0
    for rel, rec in records.items():
        status = rec.get("status")
        if status == "skipped":
            report.skipped.append({"source": rel, "reason": rec.get("reason", "")})
            continue
        if status != "converted":
            report.failed.append({"source": rel, "reason": rec.get("reason", "")})
            continue
        track = rec["track"]
        genre = track.get("genre_dir") or NO_FOLDER
        g = report.genres.setdefault(genre, {"tracks": 0, "segments": 0, "seconds": 0.0})
        seconds = sum(seg["duration"] for seg in rec["segments"])
        g["tracks"] += 1
        g["segments"] += len(rec["segments"])
        g["seconds"] += seconds
        report.tracks += 1
        report.segments += len(rec["segments"])
        report.seconds += seconds
        if track.get("genre") is None:
            report.unlabelled.append(rel)
        if track.get("mono_copied"):
            report.mono_copied.append(rel)
        if track.get("midi_repairs"):
            report.repaired.append({"source": rel, "repairs": track["midi_repairs"]})
        for seg in rec["segments"]:
            caption = seg.get("caption") or ""
            if len(caption) > len(report.longest_caption.get("caption", "")):
                report.longest_caption = {"path": seg["path"], "words": len(caption.split()), "caption": caption}
        if rel in valid:
            valid_tracks += 1
            valid_segments += len(rec["segments"])
        else:
            train_tracks += 1
            train_segments += len(rec["segments"])
    report.seconds = round(report.seconds, 3)
    for g in report.genres.values():
        g["seconds"] = round(g["seconds"], 3)
    report.genres = dict(sorted(report.genres.items()))
    report.skipped.sort(key=lambda item: item["source"])
    report.split = {"train_tracks": train_tracks, "valid_tracks": valid_tracks,
                    "train_segments": train_segments, "valid_segments": valid_segments}
    return report

