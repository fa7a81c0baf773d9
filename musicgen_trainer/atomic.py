"""Write files so that a crash never leaves a half-written one in place."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".part"):
    """Yield a temporary path next to ``path``; on success it is synced and renamed over
    ``path``, on error it is removed. Readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj, path) -> None:
    import torch
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            # torch reports a failed write as "[enforce fail at inline_container.cc] unexpected
            # pos ..."; a full disk must read as one (OSError ENOSPC), not as a bug.
            raise _as_disk_error(exc, tmp.parent) from None


LOW_SPACE_BYTES = 16 << 20


def _as_disk_error(exc: BaseException, folder: Path) -> BaseException:
    try:
        full = shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        full = False
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) if full else exc


def os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: ``No space left on device: /out/run``."""
    reason = exc.strerror or exc.__class__.__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason
