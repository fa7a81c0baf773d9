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
then saves a resumable state before it exits. ``python -m musicgen_trainer.app.jobs FOLDER --
COMMAND...`` is the small wrapper that runs the command and records its exit status (it
ignores SIGINT itself so that it is still there to record it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

from dataset_tools.atomic import write_json_atomic

JOB_FILE = "studio_job.json"
LOG_FILE = "studio_job.log"
LOCK_FILE = ".studio_job.lock"
JOB_FORMAT = "musicgen_trainer.studio_job"
LOG_TAIL_BYTES = 64 * 1024  # what the page reads of a log at a time
LOG_HEADER = "=== studio job "  # starts the line that opens each job's part of the log


class JobBusyError(ValueError):
    """A job already runs in this folder (one line: which one, since when)."""


@dataclasses.dataclass
class JobInfo:
    kind: str                 # "prepare", "classifier", "train", ...
    folder: str               # the folder the job writes (its output folder)
    argv: tp.List[str]
    started: float
    pid: int = 0              # the wrapper's pid (its process group is the job's); written by the wrapper
    id: str = ""              # tells this job's record from an earlier one's
    running: bool = False     # from the lock, when read back
    finished: tp.Optional[float] = None
    returncode: tp.Optional[int] = None
    stop_asked: bool = False  # Stop (SIGINT) reached the job: however it ended, it was stopped

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


def _lock_held(folder: Path) -> bool:
    """Whether some process holds ``folder``'s job lock (we take it and give it back if not)."""
    import fcntl
    path = Path(folder) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def job_status(folder: tp.Union[str, os.PathLike]) -> tp.Optional[JobInfo]:
    """The job last started in ``folder`` (running or not); None when it never had one."""
    folder = Path(folder)
    try:
        data = json.loads((folder / JOB_FILE).read_text(encoding="utf-8")[:1 << 20])
        if data.get("format") != JOB_FORMAT:
            return None
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
    lock = open(folder / LOCK_FILE, "a+")
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
        _write(folder, info)  # before the wrapper starts: it adds its pid, then the exit status
        log = open(folder / LOG_FILE, "a", encoding="utf-8")  # earlier jobs' output stays above
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started))
        log.write(f"\n{LOG_HEADER}{info.id} ({kind}) started {stamp} ===\n$ {' '.join(info.argv)}\n")
        log.flush()
        child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        wrapper = [sys.executable, "-m", "musicgen_trainer.app.jobs", str(folder), info.id, "--", *info.argv]
        proc = subprocess.Popen(wrapper, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd, env=child_env, start_new_session=True, pass_fds=(lock.fileno(),))
        log.close()
        info.pid = proc.pid
        _children.append(proc)
    finally:
        lock.close()  # the wrapper holds its own copy of the locked descriptor from here on
    info.running = True
    _reap()
    return info


_children: tp.List[subprocess.Popen] = []


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
    _reap()
    info = job_status(folder)
    deadline = time.monotonic() + 5.0
    while info is not None and info.running and info.pid <= 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # just started: the wrapper has not written its pid yet
        info = job_status(folder)
    if info is None or not info.running or info.pid <= 0:
        return False
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
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            raw = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
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


def _run_wrapped(folder: Path, job_id: str, argv: tp.List[str]) -> int:
    """The wrapper: run ``argv``, record its exit status in the job file, exit with it."""
    # Stop is for the command; we stay to record its status. A Stop that comes before the command
    # exists is remembered and passed on once it does.
    stop_asked: tp.List[int] = []
    signal.signal(signal.SIGINT, lambda *_: stop_asked.append(1))
    _record(folder, job_id, pid=os.getpid())
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if stop_asked:
            proc.send_signal(signal.SIGINT)
        code = proc.wait()
    except OSError as exc:
        print(f"error: cannot start {argv[0]}: {exc.strerror or exc}", flush=True)
        code = 127
    _record(folder, job_id, finished=time.time(), returncode=code, stop_asked=bool(stop_asked))
    return code


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        sys.exit("usage: python -m musicgen_trainer.app.jobs FOLDER JOB_ID -- COMMAND...")
    sys.exit(_run_wrapped(Path(sys.argv[1]), sys.argv[2], sys.argv[4:]))
