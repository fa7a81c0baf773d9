"""Write files so that a crash never leaves a half-written one in place: the project's one
"temporary file, then rename" helper (every package writes through it).

The temporary file is ``.<name>.<8 random characters><suffix>`` beside the target (same file
system, so the rename is atomic; ``suffix`` is ``.part`` unless a caller needs another);
``dataset_tools.files.remove_partial_files`` recognises exactly these names as left-overs of
a killed run.

* ``atomic_path(path)``: a temporary path to write; renamed over ``path`` when complete.
* ``write_text_atomic`` / ``write_json_atomic``: the common cases of that.
* ``temp_path(path)``: just the temporary file (always removed afterwards), for callers that
  put it in place some other way (e.g. a hard link that must never replace a file).
* ``finish_temp(tmp)``: the usual permissions and fsync, as ``atomic_path`` does before renaming.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

PART_SUFFIX = ".part"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes files readable by their owner only; finished files get the usual permissions.
# Read once: flipping the umask at every write would race with other threads creating files.
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def temp_path(path, suffix: str = PART_SUFFIX) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path`` (which must have an existing parent
    folder), named as above and readable by its owner only; it is removed on the way out,
    whatever happens, unless it was renamed away."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def finish_temp(tmp) -> None:
    """Give a completely written temporary file the usual permissions and flush it to disk."""
    os.chmod(tmp, FILE_MODE)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path, suffix: str = PART_SUFFIX) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is synced and renamed over
    ``path``, on error it is removed. Readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temp_path(path, suffix) as tmp:
        yield tmp
        finish_temp(tmp)
        os.replace(tmp, path)


def write_text_atomic(path, text: str, errors: str = "strict") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``.
    ``errors="backslashreplace"`` writes lone surrogates (non-UTF-8 file names) as escapes."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
    return path


def write_json_atomic(path, data, errors: str = "backslashreplace") -> Path:
    """``data`` as indented UTF-8 JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", errors=errors)


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: ``No space left on device: /out/run``
    (an OSError raised with only a message gives that message)."""
    reason = exc.strerror or (str(exc).strip().splitlines() or [""])[0] or exc.__class__.__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason
