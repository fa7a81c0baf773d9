"""Which files the page may touch: everything it reads, lists or writes lies under one of its roots.

The studio has two roots: the data root (``--data-root``, default ``datasets/``: music
libraries and prepared datasets) and the checkpoints root (``--checkpoints``: classifiers,
training runs, exports). The page and API callers name a place by a path *relative to a root*
(``mine``, ``mine-prepared/jazz``); :func:`confined` turns that into a server path only when the
real location (symlinks followed) is still inside the root, so ``..``, absolute paths, drive
letters and links pointing out are refused with one line, and the page never learns where the
roots are on the server (:func:`public` names a path relative to its root again).
"""
from __future__ import annotations

import json
import os
import stat
import typing as tp
from pathlib import Path, PurePosixPath

MAX_RELATIVE_CHARS = 400  # longest relative path accepted from the page
MAX_LISTED = 500          # most folders a listing returns (a huge root stays responsive)


class OutsideRootError(ValueError):
    """A path from the page that is not inside its root (or not a relative path at all)."""


def _clean(relative: str) -> PurePosixPath:
    """``relative`` as a pure relative path, refusing anything that could name a place outside:
    absolute paths, ``..``, drive letters, backslashes, NUL and control characters."""
    if not isinstance(relative, str):
        raise OutsideRootError("a path must be text")
    text = relative.strip()
    if len(text) > MAX_RELATIVE_CHARS:
        raise OutsideRootError(f"path too long (over {MAX_RELATIVE_CHARS} characters)")
    if any(ord(ch) < 32 for ch in text) or "\\" in text:
        raise OutsideRootError(f"not a plain relative path: {text!r}")
    path = PurePosixPath(text)
    if path.is_absolute() or text.startswith("~") or (len(text) > 1 and text[1] == ":"):
        raise OutsideRootError(f"give a folder relative to the root, not {text!r}")
    if any(part == ".." for part in path.parts):
        raise OutsideRootError(f"'..' is not allowed in a path: {text!r}")
    return path


def confined(root: tp.Union[str, os.PathLike], relative: str = "", must_exist: bool = False) -> Path:
    """The server path of ``relative`` under ``root``, its real location checked to be inside.

    ``""`` and ``"."`` name the root itself. Symlinks are followed before the check, so a link
    inside the root that points out is refused like ``..`` is; a path that does not exist yet
    is checked through its nearest existing parent (a later write cannot escape either).

    Raises:
        OutsideRootError: one line, for anything not inside ``root`` (or missing, with ``must_exist``).
    """
    root_real = Path(os.path.realpath(root))
    path = _clean(relative)
    target = root_real.joinpath(*path.parts) if path.parts else root_real
    real = Path(os.path.realpath(target))
    if real != root_real and root_real not in real.parents:
        raise OutsideRootError(f"{relative!r} is outside the folder the page may use")
    if must_exist and not real.exists():
        raise OutsideRootError(f"{relative or '.'!r} does not exist")
    return real


def public(root: tp.Union[str, os.PathLike], path: tp.Union[str, os.PathLike]) -> str:
    """``path`` named relative to ``root`` (what the page shows); ``""`` for the root itself."""
    rel = Path(os.path.realpath(path)).relative_to(Path(os.path.realpath(root)))
    return "" if str(rel) == "." else rel.as_posix()


def list_folders(root: tp.Union[str, os.PathLike], relative: str = "", depth: int = 1) -> tp.List[str]:
    """Folders under ``relative`` (``depth`` levels down), relative to ``root``, sorted; hidden
    folders and links that point out of the root are left out."""
    root_real = Path(os.path.realpath(root))
    if not root_real.is_dir():
        return []
    start = confined(root_real, relative)
    found: tp.List[str] = []
    level = [start]
    for _ in range(max(1, depth)):
        nxt = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                try:
                    real = confined(root_real, public(root_real, folder) + "/" + entry.name
                                    if folder != root_real else entry.name)
                except (OutsideRootError, ValueError):
                    continue  # a link out of the root
                found.append(public(root_real, real))
                nxt.append(real)
                if len(found) >= MAX_LISTED:
                    return sorted(set(found))
        level = nxt
    return sorted(set(found))


MAX_RECORD_BYTES = 1 << 20  # JSON records the page reads (job, run, report, proposals): ours are KBs


def read_regular_file(path: tp.Union[str, os.PathLike], max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``max_bytes``, opened without
    following a link at its last component (a folder may be confined while a file in it is a link
    out), never blocking on a FIFO and never reading a device such as /dev/zero.

    Raises:
        OSError: one line, for anything else (missing, a link, not a regular file, too large).
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise OSError(f"{path.name}: cannot be read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name}: not a regular file")
        if info.st_size > max_bytes:
            raise OSError(f"{path.name}: larger than {max_bytes} bytes")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise OSError(f"{path.name}: larger than {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def read_json_record(path: tp.Union[str, os.PathLike], max_bytes: int = MAX_RECORD_BYTES) -> tp.Optional[dict]:
    """A JSON object from ``path`` read as :func:`read_regular_file` does; None when it is not one."""
    try:
        data = json.loads(read_regular_file(path, max_bytes).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_regular_file(path: tp.Union[str, os.PathLike]) -> bool:
    """Whether ``path`` itself (not a link's target) is a regular file: what the page may serve."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
