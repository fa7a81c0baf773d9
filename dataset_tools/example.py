"""``build_example(out, options)``: a small, real music library from music21's corpus.

Writes a folder laid out like a user's library, ready for ``prepare``::

    OUT/chorale/      Bach chorales, played on church organ
    OUT/renaissance/  Palestrina mass movements, sung by a choir ("choir aahs")
    OUT/folk/         fiddle tunes from Ryan's Mammoth Collection, on fiddle
    OUT/classical/    Mozart / Haydn / Beethoven string quartet movements, on piano
    OUT/unknown/      a few more pieces of those kinds, without genre (for the classifier)
    OUT/example_sources.json   which corpus piece each file came from

Every piece is written to MIDI by music21 (offline: the corpus ships with music21), given
its genre's General MIDI instrument, cut to ``max_seconds`` and rendered with FluidSynth,
so the genres sound clearly different. Piece choice is deterministic for a given seed.
"""
from __future__ import annotations

import json
import random
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_path
from .cli import option
from .dataset_format import SAMPLE_RATE
from .files import safe_name, write_text_atomic
from .parallel import default_workers, run_tasks

SOURCES_FILE = "example_sources.json"
FORMATS = ("flac", "wav", "ogg", "mp3", "mid")
MAX_MEASURES = 48  # music21 writes only this many measures: enough for max_seconds, much faster


@dataclass(frozen=True)
class GenreSpec:
    composers: tuple[str, ...]   # music21 corpus composer / collection names
    pattern: str                 # regex a corpus path (relative, POSIX) must match
    program: int                 # General MIDI program (0-based) all parts are played with
    artist: str                  # used in file names ("Artist - Title")


GENRES = {
    "chorale": GenreSpec(("bach",), r"^bach/bwv[\d.]+\.mxl$", 19, "J.S. Bach"),              # church organ
    "renaissance": GenreSpec(("palestrina",), r"^palestrina/.*\.krn$", 52, "Palestrina"),    # choir aahs
    "folk": GenreSpec(("ryansMammoth",), r"^ryansMammoth/.*\.abc$", 110, "Traditional"),     # fiddle
    "classical": GenreSpec(("mozart", "haydn", "beethoven"), r"^(mozart|haydn|beethoven)/.*\.mxl$",
                           0, ""),                                                               # piano
}


@dataclass
class ExampleOptions:
    """Settings for ``example`` (each field is also its ``--flag``; see its help). ``None`` for
    ``soundfont`` finds one on the system, for ``workers`` uses every CPU core."""
    pieces_per_genre: int = option(3, "pieces written into each genre folder", metavar="N")
    unknown_pieces: int = option(2, "pieces put in unknown/", metavar="N")
    max_seconds: float = option(20.0, "cut each piece to this length", metavar="S")
    seed: int = option(0, "chooses the pieces (same seed, same library)")
    audio_format: str = option("flac", "file format; mid writes MIDI only (prepare renders it)",
                               choices=FORMATS, aliases=("--format",))
    soundfont: str | None = option(None, "General MIDI soundfont (default: found on the system)", metavar="SF2")
    instrument: int | None = option(None, "play every genre on this General MIDI program (0-127) instead of its "
                                    "own: a harder library where only the music tells the genres apart",
                                    metavar="PROGRAM")
    workers: int | None = option(None, "worker processes (default: all cores)", metavar="N")
    force: bool = option(False, "rebuild even if OUT already holds this exact example")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self):
        if not isinstance(self.pieces_per_genre, int) or not 1 <= self.pieces_per_genre <= 50:
            raise ValueError(f"pieces per genre must be between 1 and 50, got {self.pieces_per_genre}")
        if not isinstance(self.unknown_pieces, int) or not 0 <= self.unknown_pieces <= 50:
            raise ValueError(f"unknown pieces must be between 0 and 50, got {self.unknown_pieces}")
        if not 2.0 <= self.max_seconds <= 600.0:
            raise ValueError(f"max seconds per piece must be between 2 and 600, got {self.max_seconds}")
        self.audio_format = str(self.audio_format).lower().lstrip(".")
        if self.audio_format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.audio_format}")
        if self.instrument is not None and (not isinstance(self.instrument, int) or not 0 <= self.instrument <= 127):
            raise ValueError(f"instrument must be a General MIDI program between 0 and 127, got {self.instrument}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be a whole number >= 1, got {self.workers}")


@dataclass
class ExampleReport:
    out: str
    files: list = field(default_factory=list)     # [{"file", "genre", "corpus", "seconds"}]
    failed: list = field(default_factory=list)    # [{"genre", "reason"}]: slots left empty
    up_to_date: bool = False

    def summary(self) -> str:
        genres: dict[str, int] = {}
        for f in self.files:
            genres[f["genre"]] = genres.get(f["genre"], 0) + 1
        state = "already up to date" if self.up_to_date else "built"
        lines = [f"Example library {state} in {self.out}: {len(self.files)} pieces "
                 f"({', '.join(f'{g} {n}' for g, n in genres.items())})"]
        lines += [f"  could not make a {f['genre']} piece: {f['reason']}" for f in self.failed]
        lines.append(f"Next: python -m dataset_tools prepare {self.out} OUT_DATASET")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Slot:
    genre: str            # genre whose pieces/instrument it uses
    folder: str           # output folder (the genre, or "unknown")
    candidates: tuple     # corpus paths to try in order
    out: str
    options: ExampleOptions
    soundfont: str | None


def _candidates(spec: GenreSpec) -> list[str]:
    from music21 import corpus
    found = set()
    for composer in spec.composers:
        for path in corpus.getComposer(composer):
            rel = Path(path).as_posix().split("/corpus/", 1)[-1]
            if re.match(spec.pattern, rel):
                found.add(rel)
    return sorted(found)


def _title(rel: str) -> str:
    """A readable title from the corpus path (unique, unlike the scores' own titles):
    bach/bwv257.mxl -> "BWV 257", palestrina/Gloria_42.krn -> "Gloria 42",
    ryansMammoth/LarkInTheMorningJig.abc -> "Lark In The Morning Jig",
    haydn/opus74no1/movement2.mxl -> "Op. 74 No. 1 movement 2"."""
    title = " ".join(Path(rel).with_suffix("").parts[1:]).replace("_", " ")
    title = re.sub(r"(?<=[a-z])(?=[A-Z0-9])", " ", title)   # CamelCase -> words
    title = re.sub(r"^bwv\s*", "BWV ", title)
    title = re.sub(r"opus\s*(\d+)\s*no\s*(\d+)", r"Op. \1 No. \2", title)
    title = re.sub(r"opus\s*(\d+)", r"Op. \1", title)
    title = re.sub(r"movement\s*(\d+)", r"movement \1", title)
    title = re.sub(r"^k\s*(\d+)", r"K.\1", title)
    return re.sub(r"\s+", " ", title).strip()


def _make_piece(slot: _Slot) -> dict:
    """Try the slot's candidates until one parses, has notes and renders; never raises."""
    from music21 import corpus, stream

    from .audio_io import write_audio
    from .midi_render import MidiError, read_midi, render_midi, sanitize_midi
    from .segments import SILENCE_DB, trim_silence
    opts, spec = slot.options, GENRES[slot.genre]
    program = spec.program if opts.instrument is None else opts.instrument
    last_reason = "no candidate pieces in the music21 corpus"
    for rel in slot.candidates:
        try:
            score = corpus.parse(rel)
            if isinstance(score, stream.Opus):
                score = score.scores[0]
            title = _title(rel)
            with tempfile.TemporaryDirectory(prefix="dataset_tools_example_") as tmp:
                midi_path = Path(tmp) / "piece.mid"
                score.measures(0, MAX_MEASURES).write("midi", fp=str(midi_path))
                artist = spec.artist or rel.split("/")[0].capitalize()
                name = title if slot.folder == "unknown" else f"{artist} - {title}"
                target = Path(slot.out) / slot.folder / f"{safe_name(name)}.{opts.audio_format}"
                target.parent.mkdir(parents=True, exist_ok=True)
                if opts.audio_format == "mid":
                    clean, summary = sanitize_midi(read_midi(midi_path), force_program=program,
                                                   max_seconds=opts.max_seconds)
                    if summary.notes == 0:
                        raise MidiError("MIDI has no notes")
                    part = Path(tmp) / "out.mid"
                    clean.save(str(part))
                    _move(part, target)
                    seconds = summary.last_note_end
                else:
                    audio, rate, _ = render_midi(midi_path, SAMPLE_RATE, slot.soundfont,
                                                 force_program=program, max_seconds=opts.max_seconds)
                    start, end = trim_silence(audio, SILENCE_DB)
                    audio = audio[:, start:end]
                    part = Path(tmp) / f"out.{opts.audio_format}"
                    write_audio(part, audio.T, rate, format=opts.audio_format.upper())
                    _move(part, target)
                    seconds = audio.shape[1] / rate
            return {"file": target.relative_to(slot.out).as_posix(), "genre": slot.folder,
                    "played_as": slot.genre, "corpus": rel, "seconds": round(seconds, 3)}
        except Exception as exc:  # music21 chokes on some corpus files: try the next one
            last_reason = f"{rel}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return {"failed": True, "genre": slot.folder, "reason": last_reason}


def _move(part: Path, target: Path) -> None:
    """Copy into OUT via a temporary name and rename: no half-written file on interruption."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(part.read_bytes())


def _slots(out: Path, options: ExampleOptions, soundfont) -> list[_Slot]:
    rng = random.Random(options.seed)
    genres = list(GENRES)
    unknown_from = [genres[(i + options.seed) % len(genres)] for i in range(options.unknown_pieces)]
    slots = []
    for genre in genres:
        pool = _candidates(GENRES[genre])
        rng.shuffle(pool)
        folders = [genre] * options.pieces_per_genre + ["unknown"] * unknown_from.count(genre)
        # Slot k tries pool[k], pool[k + n], ...: disjoint candidates, so no piece repeats.
        for k, folder in enumerate(folders):
            slots.append(_Slot(genre, folder, tuple(pool[k::len(folders)][:6]), str(out), options,
                               str(soundfont) if soundfont else None))
    return slots


def build_example(out, options: ExampleOptions | None = None) -> ExampleReport:
    """Write the example library into ``out`` (see module doc) and return what was made."""
    from .midi_render import find_soundfont
    options = options or ExampleOptions()
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a folder: {out}")
    soundfont = find_soundfont(options.soundfont)
    if soundfont is None and options.audio_format != "mid":
        raise ValueError("no General MIDI soundfont found: install fluid-soundfont-gm (make setup) "
                         "or pass --soundfont FILE.sf2")
    key = {k: v for k, v in asdict(options).items() if k not in ("workers", "force", "progress")}
    sources_file = out / SOURCES_FILE
    if sources_file.is_file() and not options.force:
        try:
            previous = json.loads(sources_file.read_text(encoding="utf-8"))
            if previous.get("options") == key and all((out / f["file"]).is_file() for f in previous["files"]):
                return ExampleReport(str(out), previous["files"], previous.get("failed", []), up_to_date=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    slots = _slots(out, options, soundfont)
    report = ExampleReport(str(out))
    bar = None
    if options.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(slots), unit="piece", desc="example", dynamic_ncols=True)
    workers = min(options.workers or default_workers(), len(slots))

    def crashed(slot: _Slot) -> dict:
        return {"failed": True, "genre": slot.folder, "reason": "worker process died"}

    try:
        for _slot, result in run_tasks(_make_piece, slots, workers, on_crash=crashed):
            (report.failed if result.get("failed") else report.files).append(result)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    report.files.sort(key=lambda f: f["file"])
    for f in report.failed:
        f.pop("failed", None)
    write_text_atomic(sources_file, json.dumps({"options": key, "files": report.files,
                                                "failed": report.failed}, indent=2) + "\n")
    return report
