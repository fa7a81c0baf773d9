"""Long work from the page in its own process: one job per folder, a log beside it, found again later.

The page starts a job (prepare a library, train the classifier, fine-tune MusicGen) as the
project's own command line in a new process session, so it outlives a page reload, a closed
browser and even the app itself, and never blocks the page's event loop. Everything about a
job lives in the folder it writes:

- ``.studio_job.lock``: held (``flock``) by the job for as long as it runs. Whether a job runs
  is asked of the lock, not of a pid that the system may have reused: a crashed job
  releases it, and two clicks (or two users) cannot start two jobs in one folder;
- ``studio_job.json``: what runs (kind, command, start time; the exit status once done);
- ``studio_job.log``: the output of every job run there, each after a header line (the progress
  bars included: :func:`progress_of` reads them); :func:`read_log` returns the latest job's part.

Stopping sends SIGINT to the job's process group, as Ctrl-C in a terminal would: train.py
then saves a resumable state before it exits. The stop is recorded and sent once (a second
SIGINT would make train.py abandon its save); ``force`` kills. ``python -m
musicgen_trainer.app.jobs FOLDER JOB_ID LOCK_FD -- COMMAND...`` is the small wrapper that runs
the command (handing it the locked descriptor too) and records its exit status (it ignores
SIGINT itself so that it is still there to record it). The lock, log and record have fixed
names in a folder anyone may have copied in: none is followed through a link or read unbounded.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import stat
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

from dataset_tools.atomic import write_json_atomic

from .paths import read_json_record

JOB_FILE = "studio_job.json"
LOG_FILE = "studio_job.log"
LOCK_FILE = ".studio_job.lock"
JOB_FORMAT = "musicgen_trainer.studio_job"
LOG_TAIL_BYTES = 64 * 1024  # what the page reads of a log at a time
LOG_MAX_BYTES = 16 << 20    # a longer log is set aside (studio_job.log.1) when the next job starts
LOG_HEADER = "=== studio job "  # starts the line that opens each job's part of the log


class JobBusyError(ValueError):
    """A job already runs in this folder (one line: which one, since when)."""


@dataclasses.dataclass
class JobInfo:
    kind: str                 # "prepare", "classifier", "train", ...
    folder: str               # the folder the job writes (its output folder)
    argv: tp.List[str]
    started: float
    pid: int = 0              # the wrapper's pid (its process group is the job's); written by start_job
    id: str = ""              # tells this job's record from an earlier one's
    running: bool = False     # from the lock, when read back
    finished: tp.Optional[float] = None
    returncode: tp.Optional[int] = None
    stop_asked: bool = False  # Stop (SIGINT) was sent: however it ended, it was stopped; never sent twice

    @property
    def state(self) -> str:
        """``running``, ``done``, ``stopped`` (Ctrl-C / the page's Stop), ``failed``, or ``lost``
        (not running and no exit status: the machine went down, or the wrapper was killed)."""
        if self.running:
            return "running"
        if self.returncode is None:
            return "lost"
        if self.returncode != 0 and self.stop_asked:
            return "stopped"  # e.g. stopped while Python was still starting: exit status 1, not 130
        return {0: "done", 130: "stopped", -signal.SIGINT: "stopped"}.get(self.returncode, "failed")


def _open_own(path: Path, flags: int) -> int:
    """A descriptor of ``path`` opened (created if need be) without following a link at its last
    component and without blocking on a FIFO; OSError unless it is a regular file. The lock and
    the log have fixed names in a folder anyone may have copied in: a link there must not make
    us append to, lock or read a file elsewhere."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return fd


def _lock_held(folder: Path) -> bool:
    """Whether some process holds ``folder``'s job lock (we take it and give it back if not). A lock
    file that is not a regular file (a crafted link) is no job of ours: not held."""
    import fcntl
    path = Path(folder) / LOCK_FILE
    try:
        fd = _open_own(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def job_status(folder: tp.Union[str, os.PathLike]) -> tp.Optional[JobInfo]:
    """The job last started in ``folder`` (running or not); None when it never had one."""
    _reap()  # the page polls this: finished wrappers do not stay zombies until the next start
    folder = Path(folder)
    data = read_json_record(folder / JOB_FILE)  # bounded; never a link, FIFO or device
    if data is None or data.get("format") != JOB_FORMAT:
        return None
    try:
        info = JobInfo(kind=str(data["kind"]), folder=str(folder), argv=[str(a) for a in data["argv"]],
                       started=float(data["started"]), pid=int(data.get("pid") or 0), id=str(data.get("id", "")),
                       finished=data.get("finished"), returncode=data.get("returncode"),
                       stop_asked=bool(data.get("stop_asked")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    info.running = _lock_held(folder)
    return info


def start_job(kind: str, argv: tp.Sequence[str], folder: tp.Union[str, os.PathLike],
              env: tp.Optional[tp.Dict[str, str]] = None, cwd: tp.Optional[str] = None) -> JobInfo:
    """Run ``argv`` (a command line, e.g. ``[sys.executable, "-m", "dataset_tools", "prepare", ...]``)
    as ``folder``'s job, in the background; returns at once.

    Raises:
        JobBusyError: one line, when a job already runs in ``folder``.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        raise RuntimeError("the page's background jobs need Linux or macOS; use the command line here") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = _open_own(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise ValueError(f"cannot use this folder for a job ({exc.strerror or exc})") from None
    try:
        try:  # taken here and handed to the wrapper: no window for a second start in between
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            running = job_status(folder)
            since = time.strftime("%H:%M", time.localtime(running.started)) if running else "?"
            what = running.kind if running else "a job"
            raise JobBusyError(f"{what} is already running in this folder (since {since}): "
                               f"wait for it or stop it first") from None
        import secrets
        info = JobInfo(kind=kind, folder=str(folder), argv=[str(a) for a in argv], started=time.time(),
                       id=secrets.token_hex(8))
        log = _open_log(folder)  # earlier jobs' output stays above
        _write(folder, info)  # before the wrapper starts; start_job adds the pid, the wrapper the exit status
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started))
        os.write(log, f"\n{LOG_HEADER}{info.id} ({kind}) started {stamp} ===\n$ {' '.join(info.argv)}\n"
                 .encode("utf-8", errors="backslashreplace"))
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        wrapper = [sys.executable, "-m", "musicgen_trainer.app.jobs", str(folder), info.id, str(lock), "--",
                   *info.argv]
        try:
            # stdin is a pipe the wrapper reads to its end before it starts the command: the pid
            # is in the record by then, and the wrapper alone writes it from there on.
            proc = subprocess.Popen(wrapper, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=cwd, env=child_env, start_new_session=True, pass_fds=(lock,),
                                    preexec_fn=_ignore_sigint)
        finally:
            os.close(log)
        info.pid = proc.pid  # the wrapper's pid is its process group's (start_new_session)
        try:
            _write(folder, info)
        finally:
            proc.stdin.close()
        _children.append(proc)
    finally:
        os.close(lock)  # the wrapper holds its own copy of the locked descriptor from here on
    info.running = True
    _reap()
    return info


_children: tp.List[subprocess.Popen] = []


def _ignore_sigint() -> None:
    """The wrapper starts with SIGINT ignored: a Stop while Python is still starting does not kill
    it (it finds the stop in the record once its handler is in place)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _open_log(folder: Path) -> int:
    """``folder``'s log for appending (a regular file, never a link's target); a log past
    ``LOG_MAX_BYTES`` is first set aside as ``studio_job.log.1`` (replacing an older one)."""
    path = folder / LOG_FILE
    try:
        if os.lstat(path).st_size > LOG_MAX_BYTES and stat.S_ISREG(os.lstat(path).st_mode):
            os.replace(path, path.with_name(LOG_FILE + ".1"))
    except OSError:
        pass
    try:
        return _open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        raise ValueError(f"cannot write this folder's job log ({exc.strerror or exc})") from None


def _reap() -> None:
    """Collect finished wrappers this process started (no zombies in a long-running app)."""
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def _write(folder: Path, info: JobInfo) -> None:
    data = {"format": JOB_FORMAT, **{k: v for k, v in dataclasses.asdict(info).items()
                                     if k not in ("folder", "running")}}
    write_json_atomic(Path(folder) / JOB_FILE, data)


def stop_job(folder: tp.Union[str, os.PathLike], force: bool = False) -> bool:
    """Ask ``folder``'s running job to stop (SIGINT, like Ctrl-C: train.py saves a resumable
    state first); ``force`` kills it instead. Returns whether a running job was signalled."""
    info = job_status(folder)
    if info is None or not info.running or info.pid <= 0:
        return False
    if not force:
        if info.stop_asked:
            # A second SIGINT tells train.py to abandon the step it is saving: one Stop is enough
            # (the first is still being honoured); killing is the separate, explicit force.
            return True
        _write(Path(folder), dataclasses.replace(info, stop_asked=True))  # recorded before it is sent
    try:
        os.killpg(info.pid, signal.SIGKILL if force else signal.SIGINT)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_job(folder: tp.Union[str, os.PathLike], timeout: float = 60.0, poll: float = 0.2) -> tp.Optional[JobInfo]:
    """Wait until ``folder``'s job is no longer running (or ``timeout`` seconds); its last status."""
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        info = job_status(folder)
        if info is None or not info.running or time.monotonic() > deadline:
            return info
        time.sleep(poll)


def read_log(folder: tp.Union[str, os.PathLike], max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The end of the latest job's output in ``folder``'s log (from its ``$ command`` line; at
    most ``max_bytes``), progress-bar redraws collapsed to their last state."""
    path = Path(folder) / LOG_FILE
    try:
        fd = _open_own(path, os.O_RDONLY)  # a link (to a secret elsewhere) or a FIFO is not our log
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - max_bytes), os.SEEK_SET)
        raw = os.read(fd, max_bytes).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)
    header = raw.rfind(LOG_HEADER)
    if header >= 0:
        raw = raw[raw.find("\n", header) + 1:]
    lines = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
             for line in raw.split("\n")]
    return "\n".join(lines)


_BAR = re.compile(r"(?:(?P<desc>[^\r\n:|]{1,40}):\s*)?\d{1,3}%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)")


def progress_of(log: str) -> tp.Optional[tp.Tuple[int, int, str]]:
    """``(done, total, what)`` of the last tqdm progress bar in ``log``; None when it has none."""
    last = None
    for last in _BAR.finditer(log):
        pass
    if last is None:
        return None
    return int(last["done"]), int(last["total"]), (last["desc"] or "").strip()


def _record(folder: Path, job_id: str, **changes) -> None:
    info = job_status(folder)
    if info is not None and info.id == job_id:  # never another job's record
        _write(folder, dataclasses.replace(info, **changes))


def _run_wrapped(folder: Path, job_id: str, argv: tp.List[str], lock_fd: int = -1) -> int:
    """The wrapper: run ``argv``, record its exit status in the job file, exit with it.

    The command gets the locked descriptor ``lock_fd`` too: should the wrapper die alone, the
    command still holds the folder's lock, so the folder shows it running and no second job starts."""
    # Stop is for the command; we stay to record its status. A Stop that comes before the command
    # exists is remembered and passed on once it does.
    stop_asked: tp.List[int] = []
    signal.signal(signal.SIGINT, lambda *_: stop_asked.append(1))
    try:
        sys.stdin.buffer.read()  # start_job closes this pipe once it has recorded our pid
    except OSError:
        pass
    recorded = job_status(folder)
    if recorded is not None and recorded.id == job_id and recorded.stop_asked:
        stop_asked.append(1)  # Stop came while we started, with SIGINT still ignored
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(lock_fd,) if lock_fd >= 0 else (),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if stop_asked:
            proc.send_signal(signal.SIGINT)
        code = proc.wait()
    except OSError as exc:
        print(f"error: cannot start {argv[0]}: {exc.strerror or exc}", flush=True)
        code = 127
    _record(folder, job_id, finished=time.time(), returncode=code,
            **({"stop_asked": True} if stop_asked else {}))  # never undo start_job's/stop_job's record
    return code


if __name__ == "__main__":
    if len(sys.argv) < 6 or sys.argv[4] != "--" or not sys.argv[3].isdigit():
        sys.exit("usage: python -m musicgen_trainer.app.jobs FOLDER JOB_ID LOCK_FD -- COMMAND...")
    sys.exit(_run_wrapped(Path(sys.argv[1]), sys.argv[2], sys.argv[5:], int(sys.argv[3])))
