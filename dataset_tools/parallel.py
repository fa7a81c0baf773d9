"""Run tasks through one or more stages of worker processes, surviving crashing workers.

``run_stages(stages, tasks, ...)`` yields ``(task, result)`` as tasks finish (in
completion order). Each stage has its own pool of ``workers`` processes. A stage's
function gets the task (first stage) or the previous stage's result; a result that is a
``Handoff`` goes on to the next stage, anything else is final. ``run_tasks`` is the
one-stage case. At most ``2 x workers`` items are queued per stage, so memory stays
flat on big libraries.

Why stages: ``prepare``'s analysis needs librosa, whose import takes seconds. A pool
whose workers come from a *fork server* pays that once: a fresh process imports (and
warms up) the ``preload`` modules, then forks every worker from itself in milliseconds.
But nothing runs while the server preloads; on two cores that idle warm-up was a third
of a small library's run. So decoding (no librosa) runs in a first stage whose workers
are plain fresh interpreters that start at once, while the second stage's fork server
warms up; the analysis stage takes over as soon as it is ready. The fork server keeps
the safety of ``spawn``: workers inherit neither the caller's threads nor torch/CUDA
state. Without fork servers (Windows) every stage uses ``spawn``. Each worker does
numeric work on one thread: N workers on N cores, not N x N BLAS threads.

A task that kills its worker outright (a segfault in a native decoder, the OOM killer)
breaks that stage's pool, taking its other in-flight items down with it. Those are then
retried one by one in a fresh single-worker pool; one that crashes again gets
``on_crash(task)`` as its result, and the run carries on with a new pool.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
# Results waiting for a later stage (e.g. while its fork server warms up) before the first
# stage pauses: enough to keep it busy through the warm-up. Each is a few MB at most
# (prepare's: <= 5.3 MB), hence the overall cap for many-core machines.
BACKLOG_PER_WORKER = 16
MAX_BACKLOG = 128
MAX_POOL_RESTARTS = 3


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def single_thread_numerics() -> None:
    """One BLAS/OpenMP thread in this process: env vars for libraries not loaded yet,
    threadpoolctl for the ones already loaded."""
    for var in THREAD_ENV:
        os.environ.setdefault(var, "1")
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass


class Handoff:
    """Base class of a stage result that is not final: it is the next stage's input."""


@dataclass(frozen=True)
class Stage:
    """One step of the work. ``func``: a module-level function (picklable by reference).
    ``preload``: modules the stage's fork server imports once for all its workers.
    ``fresh``: start workers as fresh interpreters instead (no fork server), which lets
    them begin at once rather than after the server's preload."""
    func: Callable[[Any], Any]
    preload: tuple[str, ...] = ()
    fresh: bool = False


def _init_worker(quiet: bool) -> None:
    # Ctrl-C is handled once, by the parent, which then stops the pool cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_thread_numerics()
    if quiet:
        # Native decoders (libmpg123 inside libsndfile) print resync warnings straight to
        # file descriptor 2 for damaged MP3s; they would shred the parent's progress bar.
        # Workers report every problem through their results instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


@contextmanager
def _starting_workers():
    """Block Ctrl-C (SIGINT) in this thread while it may start worker processes.

    Children inherit the mask, so a Ctrl-C that reaches the whole process group (as a
    terminal sends it) while a worker is still starting, before ``_init_worker`` ignores
    it, cannot print a KeyboardInterrupt traceback from the worker; this process gets a
    pending Ctrl-C as soon as the block ends, and stops the pools cleanly."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ping() -> None:
    """A no-op task: its completion means the pool has a running worker."""


def _context(stage: Stage):
    if not stage.fresh and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # One fork server per program: only the first call before it starts counts.
        ctx.set_forkserver_preload(list(stage.preload))
        return ctx
    return multiprocessing.get_context("spawn")


class _StagePool:
    """A stage's process pool, started in a background thread: creating the first worker
    blocks until the fork server has preloaded, and the caller has other work meanwhile.
    ``ready`` completes once a worker runs (with ``BrokenProcessPool`` if none can)."""

    def __init__(self, stage: Stage, workers: int, quiet: bool):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(stage),
                                        initializer=_init_worker, initargs=(quiet,))
        self.ready: Future = Future()
        threading.Thread(target=self._start, daemon=True, name="stage-pool-start").start()

    def _start(self) -> None:
        try:
            with _starting_workers():
                future = self.pool.submit(_ping)
            future.result()
            self.ready.set_result(True)
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread)
            self.ready.set_exception(exc)

    def close(self, broken: bool = False) -> None:
        try:
            self.ready.exception()  # never shut down under the starting thread's feet
        finally:
            if broken:
                kill_workers(self.pool)
            self.pool.shutdown(wait=True, cancel_futures=True)


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the worker processes of a broken pool before shutting it down.

    When a worker dies abruptly, the executor's manager thread sends the others SIGTERM and
    joins them; now and then (about 1 run in 10 of the crash test, on 2 cores) one of them
    never exits and ``shutdown(wait=True)`` (and so the program's exit) hangs forever. The
    pool is useless once broken, so its remaining workers are killed outright first."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):  # already gone, or never started
            pass


def run_stages(stages: list[Stage], tasks: Iterable[T], workers: int, on_crash: Callable[[T], R],
               quiet_workers: bool = True) -> Iterator[tuple[T, R]]:
    """Yield ``(task, final result)`` for every task (see module doc).

    With ``workers <= 1`` everything runs in this process, in order (no pool, no crash
    guard). Stage functions should catch their own errors; an exception escaping one
    propagates here. Tasks and results must be picklable.
    """
    if workers <= 1:
        for task in tasks:
            value: Any = task
            for stage in stages:
                value = stage.func(value)
                if not isinstance(value, Handoff):
                    break
            yield task, value
        return
    yield from _Pipeline(stages, workers, on_crash, quiet_workers).run(tasks)


def run_tasks(func: Callable[[T], R], tasks: Iterable[T], workers: int,
              on_crash: Callable[[T], R], quiet_workers: bool = True,
              preload: tuple[str, ...] = ()) -> Iterator[tuple[T, R]]:
    """Yield ``(task, func(task))`` for every task: ``run_stages`` with one stage."""
    yield from run_stages([Stage(func, preload)], tasks, workers, on_crash, quiet_workers)


class _Pipeline:
    def __init__(self, stages: list[Stage], workers: int, on_crash: Callable, quiet: bool):
        self.stages, self.workers, self.on_crash, self.quiet = stages, workers, on_crash, quiet
        self.queues: list[deque] = [deque() for _ in stages]   # (task, input) per stage
        self.inflight: dict[Future, tuple[int, Any, Any]] = {}  # future -> (stage, task, input)
        self.suspects: list[tuple[int, Any, Any]] = []
        self.pools: list[_StagePool | None] = [None] * len(stages)
        self.restarts = [0] * len(stages)  # pools replaced because their workers could not start

    def run(self, tasks: Iterable) -> Iterator[tuple[Any, Any]]:
        self.queues[0].extend((task, task) for task in tasks)
        try:
            # Every pool starts now: later stages' fork servers warm up while stage 0 works.
            for s in range(len(self.stages)):
                self._open(s)
            while any(self.queues) or self.inflight or self.suspects:
                if self.suspects:
                    yield from self._retry_alone(*self.suspects.pop(0))
                    continue
                broken = self._submit()
                starting = {p.ready for p in self.pools if p is not None and not p.ready.done()}
                done, _ = wait(set(self.inflight) | starting, return_when=FIRST_COMPLETED)
                for future in done:
                    if future not in self.inflight:
                        continue  # a pool became ready (or failed: seen at the next submit)
                    s, task, item = self.inflight.pop(future)
                    if isinstance(future.exception(), BrokenProcessPool):
                        broken.add(s)
                        self.suspects.append((s, task, item))
                    else:
                        yield from self._route(s, task, future.result())
                for s in broken:
                    self._reopen(s)
        finally:
            for pool in self.pools:
                if pool is not None:
                    pool.close()

    def _open(self, s: int) -> None:
        self.pools[s] = _StagePool(self.stages[s], self.workers, self.quiet)

    def _submit(self) -> set[int]:
        """Queue work on every ready pool, later stages first (they finish tasks and free
        their memory); returns the stages whose pool turned out broken."""
        broken = set()
        backlog = sum(len(q) for q in list(self.queues)[1:])
        for s in reversed(range(len(self.stages))):
            pool = self.pools[s]
            if not pool.ready.done():
                continue
            if pool.ready.exception() is not None:
                # A fork server that died under a crash (CPython's forkserver can lose its
                # connection when a worker dies mid-start) is restarted by a new pool; give up
                # only when workers keep failing to start.
                if isinstance(pool.ready.exception(), OSError) and self.restarts[s] < MAX_POOL_RESTARTS:
                    self.restarts[s] += 1
                    broken.add(s)
                    continue
                raise RuntimeError(f"worker processes cannot start: {pool.ready.exception()}")
            limit = 2 * self.workers
            if s == 0 and len(self.stages) > 1:
                # Items wait for a later stage still starting up: do not pile up too many.
                limit = min(limit, max(0, min(BACKLOG_PER_WORKER * self.workers, MAX_BACKLOG) - backlog))
            queue = self.queues[s]
            while queue and sum(1 for v in self.inflight.values() if v[0] == s) < limit:
                task, item = queue[0]
                try:
                    with _starting_workers():
                        future = pool.pool.submit(self.stages[s].func, item)
                except (BrokenProcessPool, OSError):  # broke since the last wait: not this item's fault
                    broken.add(s)
                    break
                self.inflight[future] = (s, task, item)
                queue.popleft()
        return broken

    def _route(self, s: int, task, result) -> Iterator[tuple[Any, Any]]:
        if isinstance(result, Handoff) and s + 1 < len(self.stages):
            self.queues[s + 1].append((task, result))
        else:
            yield task, result

    def _reopen(self, s: int) -> None:
        """Replace stage ``s``'s broken pool; its items still in flight become suspects."""
        for future, (stage, task, item) in list(self.inflight.items()):
            if stage == s:
                del self.inflight[future]
                self.suspects.append((stage, task, item))
        self.pools[s].close(broken=True)
        self._open(s)

    def _retry_alone(self, s: int, task, item) -> Iterator[tuple[Any, Any]]:
        """Run one item of a crashed pool in a fresh single-worker pool, to find the culprit."""
        pool = ProcessPoolExecutor(max_workers=1, mp_context=_context(self.stages[s]),
                                   initializer=_init_worker, initargs=(self.quiet,))
        try:
            with _starting_workers():
                future = pool.submit(self.stages[s].func, item)
            result = future.result()
        except (BrokenProcessPool, OSError):  # OSError: its worker could not even start
            result = self.on_crash(task)
            kill_workers(pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        yield from self._route(s, task, result)
