"""Run one function over many tasks in worker processes, surviving crashing workers.

``run_tasks`` yields ``(task, result)`` as tasks finish (in completion order). At most
``2 x workers`` tasks are queued at once, so memory stays flat on big libraries.

Workers come from a *fork server* where available (Linux, macOS): a fresh process,
started once per program, imports (and warms up) the ``preload`` modules, then forks
every worker from itself. That keeps the safety of ``spawn`` (the workers do not inherit
the caller's threads or torch/CUDA state) while each worker starts in milliseconds
instead of paying librosa's multi-second import again. Elsewhere (Windows) ``spawn``
is used. Each worker does numeric work on one thread: N workers on N cores, not N x N
BLAS threads fighting over them.

A task that kills its worker outright (a segfault in a native decoder, the OOM killer)
breaks the whole pool, taking the other in-flight tasks down with it. The survivors are
then retried one by one in a fresh single-worker pool; a task that crashes again gets
``on_crash(task)`` as its result, and the run carries on with a new pool.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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


def _init_worker(quiet: bool) -> None:
    single_thread_numerics()
    # Ctrl-C is handled once, by the parent, which then stops the pool cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if quiet:
        # Native decoders (libmpg123 inside libsndfile) print resync warnings straight to
        # file descriptor 2 for damaged MP3s; they would shred the parent's progress bar.
        # Workers report every problem through their results instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def _context(preload: tuple[str, ...]):
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Only the first call before the server starts counts; later ones are ignored.
        ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")


def _pool(workers: int, quiet: bool, preload: tuple[str, ...]) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=_context(preload),
                               initializer=_init_worker, initargs=(quiet,))


def run_tasks(func: Callable[[T], R], tasks: Iterable[T], workers: int,
              on_crash: Callable[[T], R], quiet_workers: bool = True,
              preload: tuple[str, ...] = ()) -> Iterator[tuple[T, R]]:
    """Yield ``(task, func(task))`` for every task (see module doc).

    ``func`` must be a module-level function and tasks/results picklable. With
    ``workers <= 1`` everything runs in this process, in order (no pool, no crash guard).
    ``func`` should catch its own errors; an exception escaping it propagates here.
    ``preload``: modules the fork server imports once (see module doc).
    """
    pending = deque(tasks)
    if workers <= 1:
        while pending:
            task = pending.popleft()
            yield task, func(task)
        return
    suspects: list[T] = []
    while pending or suspects:
        if suspects:  # retry each task of a crashed pool alone, to find the culprit
            task = suspects.pop(0)
            pool = _pool(1, quiet_workers, preload)
            try:
                result = pool.submit(func, task).result()
            except BrokenProcessPool:
                result = on_crash(task)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            yield task, result
            continue
        pool = _pool(min(workers, len(pending)), quiet_workers, preload)
        inflight: dict = {}
        try:
            while pending or inflight:
                broken = False
                while pending and len(inflight) < 2 * workers:
                    try:
                        future = pool.submit(func, pending[0])
                    except BrokenProcessPool:  # broke since the last wait: not this task's fault
                        broken = True
                        break
                    inflight[future] = pending.popleft()
                done, _ = wait(inflight, return_when=FIRST_COMPLETED) if inflight else (set(), set())
                for future in done:
                    task = inflight.pop(future)
                    if isinstance(future.exception(), BrokenProcessPool):
                        broken = True
                        suspects.append(task)
                    else:
                        yield task, future.result()
                if broken:
                    suspects.extend(inflight.values())
                    inflight.clear()
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
