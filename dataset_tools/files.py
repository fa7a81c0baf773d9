"""Find the music in a source folder and decide where each file's outputs go.

``scan_source(src)`` walks SRC once (following symlinks, but never twice into the same
folder, so symlink loops end) and sorts every entry into: sources to convert, entries to
skip with a reason (broken links, loops, pipes, folders named like audio files...) and
ignored files (covers, playlists, text). ``assign_output_stems`` gives every source a
filesystem-safe, recognisable output name, unique within its output folder.

Nothing here writes to SRC; outputs are written via temp file + rename (``dataset_tools.atomic``),
and ``remove_partial_files`` deletes the temporary files a killed run left behind.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import atomic
from .atomic import PART_SUFFIX
from .dataset_format import AUDIO_EXTENSIONS, MIDI_EXTENSIONS, UNKNOWN_GENRE_DIRS

# Segment files are named "<stem>__<index>"; safe_name() never produces "__", so a
# track's segments can never be mistaken for another track's file.
SEGMENT_SEPARATOR = "__"
# The temporary names our writers use: ".<name>.<8 random characters>.part" from
# dataset_tools.atomic (the mkstemp names of every output, WAVs included), and the older
# ".<stem>.<8 random characters>.wav.part" of stem WAVs. Only these are ever cleaned up as
# left-overs of a killed run.
_OUR_PART_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}(?:\.wav)?" + re.escape(PART_SUFFIX) + "$")
MAX_NAME_CHARS = 120
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}


@dataclass(frozen=True)
class SourceFile:
    """One audio or MIDI file found under SRC.

    ``rel`` is the POSIX path relative to SRC (the file's identity in reports and state);
    ``genre_dir`` its top-level folder (None for files directly in SRC).
    """
    path: Path
    rel: str
    genre_dir: str | None
    kind: str  # "audio" or "midi"
    size: int
    mtime_ns: int

    @property
    def unlabelled(self) -> bool:
        """True for files in ``unknown/`` (or ``unknow/``) or directly in SRC."""
        return self.genre_dir is None or self.genre_dir.lower() in UNKNOWN_GENRE_DIRS


@dataclass
class ScanResult:
    sources: list[SourceFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (rel path, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)   # (rel path, reason)


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (``hashlib.file_digest`` is Python 3.11+)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_kind(name: str) -> str | None:
    """``"audio"``, ``"midi"`` or None, from the extension (any case)."""
    ext = os.path.splitext(name)[1].lower()
    if ext in MIDI_EXTENSIONS:
        return "midi"
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    return None


def check_paths(src, out) -> tuple[Path, Path]:
    """Resolve SRC and OUT; raise ValueError (a user-facing sentence) if they cannot work."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise ValueError(f"source folder not found: {src}")
    if not src.is_dir():
        raise ValueError(f"source is not a folder: {src}")
    real_src, real_out = src.resolve(), out.resolve()
    if real_out == real_src or real_src in real_out.parents:
        raise ValueError(f"output folder {out} is inside the source folder {src}; "
                         "choose an OUT outside SRC (SRC is never modified)")
    if real_out in real_src.parents:
        raise ValueError(f"source folder {src} is inside the output folder {out}; "
                         "choose an OUT that does not contain SRC")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a folder: {out}")
    return src, out


def text_name(name: str, siblings: set[str] = frozenset()) -> str:
    """A file or folder name as text that JSON, captions and reports can hold.

    Names that are not valid UTF-8 (files from old Windows machines or zip archives, in
    Latin-1/cp1252) reach Python with each bad byte as a lone surrogate, which no UTF-8
    file can store. Each such byte is read as cp1252 instead ("Caf\xe9" -> "Café"); if
    that equals the real name of a sibling in ``siblings``, the bytes are spelled out
    ("Caf\\xe9"), so every file keeps a name of its own.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    fixed = "".join(bytes([ord(ch) - 0xDC00]).decode("cp1252", errors="replace")
                    if 0xDC80 <= ord(ch) <= 0xDCFF else ch for ch in name)
    try:
        fixed.encode("utf-8")  # any other lone surrogate (not from a byte) is not text
        unique = fixed not in siblings
    except UnicodeEncodeError:
        unique = False
    return fixed if unique else name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def tolerant_output() -> None:
    """Let stdout/stderr print any file name: names that are not UTF-8 (see ``text_name``)
    come out as \\xNN escapes instead of ending a command with UnicodeEncodeError (the
    streams are strict under a UTF-8 locale)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def scan_source(src: Path, exclude: Path | None = None) -> ScanResult:
    """Walk ``src`` and classify every entry (see module doc). Sorted, deterministic."""
    result = ScanResult()
    visited: set[tuple[int, int]] = set()
    if exclude is not None and exclude.exists():
        st = exclude.stat()
        visited.add((st.st_dev, st.st_ino))  # never scan our own output through a symlink

    def walk(folder: Path, rel_parts: tuple[str, ...]) -> None:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        rel_folder = "/".join(rel_parts) or "."
        if key in visited:
            result.skipped.append((rel_folder + "/", "symbolic link loop (folder already scanned)"))
            return
        visited.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            result.skipped.append((rel_folder + "/", f"folder not readable ({exc.strerror})"))
            return
        names = {e.name for e in entries}
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files and folders (.DS_Store, ._AppleDouble, .git)
            name = text_name(entry.name, names)  # entry.path stays the real path
            rel = "/".join(rel_parts + (name,))
            kind = file_kind(entry.name)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                st = os.stat(entry.path)  # follows symlinks: ELOOP / ENOENT for bad ones
            except OSError as exc:
                if entry.is_symlink():
                    reason = ("symbolic link loop" if exc.errno == errno.ELOOP
                              else "broken symbolic link (target missing)")
                else:
                    reason = f"cannot read file information ({exc.strerror})"
                (result.skipped if kind else result.ignored).append((rel, reason))
                continue
            if is_dir:
                if kind is not None:
                    result.skipped.append((rel + "/", "is a folder named like an audio file "
                                                       "(its contents are scanned)"))
                walk(Path(entry.path), rel_parts + (name,))
                continue
            if kind is None:
                result.ignored.append((rel, "not an audio or MIDI file extension"))
                continue
            if not os.path.isfile(entry.path):
                result.skipped.append((rel, "not a regular file (device, pipe or socket)"))
                continue
            genre_dir = rel_parts[0] if rel_parts else None
            result.sources.append(SourceFile(Path(entry.path), rel, genre_dir, kind,
                                             st.st_size, st.st_mtime_ns))

    walk(src, ())
    return result


def safe_name(text: str) -> str:
    """A recognisable name safe on Linux, macOS and Windows file systems.

    Keeps letters (any script), digits, spaces and common punctuation; replaces path
    separators and characters Windows forbids with ``_``; never produces ``__``.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join("_" if (ch in '<>:"/\\|?*' or ord(ch) < 32 or ch == "\x7f") else ch for ch in text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"_{2,}", "_", text).strip(" .")
    if len(text) > MAX_NAME_CHARS:
        text = text[:MAX_NAME_CHARS].rstrip(" ._")
    if not text or text.strip("_") == "":
        text = "untitled"
    if text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def assign_output_stems(sources: list[SourceFile]) -> dict[str, str]:
    """Map each source's ``rel`` to its output stem (POSIX, relative to OUT, no extension).

    Folders mirror SRC (made safe); the name is the file's own name without extension.
    Collisions (``Song.mp3`` + ``Song.flac``, or names equal once made safe or compared
    case-insensitively) are resolved without overwriting and stably across runs: the first
    in sorted order keeps the plain name, the others get their extension appended
    (``Song-flac``) or, if that is taken too, a short hash of their source path.
    """
    stems: dict[str, str] = {}
    taken: set[str] = set()
    for src in sorted(sources, key=lambda s: s.rel):
        rel = PurePosixPath(src.rel)
        folder = "/".join(safe_name(p) for p in rel.parts[:-1])
        base = safe_name(os.path.splitext(rel.name)[0])
        ext = os.path.splitext(rel.name)[1].lstrip(".").lower()
        digest = hashlib.sha1(src.rel.encode("utf-8", "surrogatepass")).hexdigest()[:6]
        for candidate in (base, f"{base}-{ext}", f"{base}-{digest}"):
            stem = f"{folder}/{candidate}" if folder else candidate
            if stem.lower() not in taken:
                break
        taken.add(stem.lower())
        stems[src.rel] = stem
    return stems


def segment_stem(stem: str, index: int, count: int) -> str:
    """Output stem of segment ``index`` of ``count``: the plain stem when there is only one."""
    return stem if count == 1 else f"{stem}{SEGMENT_SEPARATOR}{index:03d}"


def segment_file_pattern(stem_name: str) -> re.Pattern:
    """Matches the file names (in the stem's folder) that belong to a track's outputs."""
    return re.compile(rf"^{re.escape(stem_name)}(?:{SEGMENT_SEPARATOR}\d{{3,}})?\.(?:wav|txt|json)$")


def write_text_atomic(path, text: str) -> Path:
    """Write UTF-8 text via a temporary file + rename (never a half-written file at ``path``):
    ``dataset_tools.atomic.write_text_atomic`` with ``errors="backslashreplace"``, so a name that
    is not valid UTF-8 (see text_name) and got through anyway, e.g. in SRC's own path, is
    written as a \\udcXX escape, not a crash."""
    return atomic.write_text_atomic(path, text, errors="backslashreplace")


def remove_partial_files(out: Path) -> int:
    """Delete temporary files left in OUT by an interrupted run; returns how many.
    Only names our writers give their temporary files are touched (see ``_OUR_PART_FILE``)."""
    removed = 0
    if not out.is_dir():
        return 0
    for dirpath, _dirs, files in os.walk(out):
        for name in files:
            if _OUR_PART_FILE.match(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed


class RunFailedError(RuntimeError):
    """The machine failed a run (disk full, read-only): every further file would fail the
    same way, so the run stopped after saving its progress. ``str()`` is one line."""


# --- files in OUT that we did not write ------------------------------------------------------

class ForeignFileError(ValueError):
    """A file a command would write (or delete) exists and that command did not write it:
    commands only ever replace or delete their own outputs. ``str()`` is one line."""


def refuse_foreign(paths: list, tool: str, where: str = "OUT") -> None:
    """Raise ``ForeignFileError`` naming the first of ``paths`` (if any): files in the way
    of ``tool`` that it did not write, found before it does any work."""
    if not paths:
        return
    more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
    them = "them" if more else "it"
    raise ForeignFileError(f"{paths[0]} exists and was not written by {tool}{more}; "
                           f"move {them} or choose another {where}")


def entry_exists(path: Path) -> bool:
    """True for anything at ``path``, a broken symbolic link included."""
    return os.path.lexists(path)


def blocking_file(out: Path, folder: Path) -> Path | None:
    """The first path from ``out`` down to ``folder`` that exists and is not a folder (a file
    where a command needs a folder), or None."""
    path = out
    for part in folder.relative_to(out).parts:
        path = path / part
        if entry_exists(path) and not path.is_dir():
            return path
        if not entry_exists(path):
            return None
    return None
