"""Decode files and extract their features: in parallel, cached, never stopped by one bad file.

``extract_many`` fans the work out to worker processes started by forkserver or spawn (never
plain fork: the main process may hold TensorFlow's threads, which do not survive a fork) and
yields one `Extracted` per file as it completes, with either features or a one-line skip reason.

The cache holds one ``.npz`` per (file content, feature settings): the key is the SHA-1 of the
file's bytes plus `FeatureSettings.cache_key`, so renaming or moving a file keeps its cache
entry, and editing the file or changing a setting never reuses a stale one.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dataset_tools.atomic import atomic_path
from dataset_tools.files import file_digest

from .features import FeatureError, FeatureSettings, TrackFeatures, features_from_audio

CACHE_ENV = "GENRE_CLASSIFIER_CACHE"
MAX_DEFAULT_WORKERS = 8
# Imported once by the forkserver, so forked workers start with them loaded (see _pool_context).
PRELOAD = ["genre_classifier.extract", "dataset_tools.audio_io", "scipy.fft", "soundfile", "soxr"]


@dataclass
class Extracted:
    """Result for one file: ``features`` when usable, else ``reason`` says why it was skipped."""
    index: int                        # position in the input list
    path: Path
    features: TrackFeatures | None = None
    reason: str | None = None
    sha1: str | None = None           # of the file's bytes (None if it could not be read)
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.features is not None


def default_cache_dir() -> Path:
    """``$GENRE_CLASSIFIER_CACHE``, else ``$XDG_CACHE_HOME`` or ``~/.cache``/musicgen-finetune/genre_features."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "musicgen-finetune" / "genre_features"


def resolve_cache_dir(cache_dir=None, use_cache: bool = True) -> Path | None:
    """The cache folder to use: None when caching is off, else ``cache_dir`` or the default."""
    if not use_cache:
        return None
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


def file_sha1(path: Path) -> str:
    return file_digest(path, "sha1")


def _cache_file(cache_dir: Path, sha1: str, settings: FeatureSettings) -> Path:
    return cache_dir / sha1[:2] / f"{sha1}-{settings.cache_key()}.npz"


def _read_cache(file: Path) -> TrackFeatures | None:
    try:
        with np.load(file) as data:
            return TrackFeatures(mfcc=data["mfcc"], duration=float(data["duration"]), padded=bool(data["padded"]))
    except Exception:  # missing, half-written by a killed run, or unreadable: recompute
        return None


def _write_cache(file: Path, features: TrackFeatures) -> None:
    try:
        with atomic_path(file) as tmp, open(tmp, "wb") as handle:  # parallel workers never see half a file
            np.savez(handle, mfcc=features.mfcc, duration=features.duration, padded=features.padded)
    except OSError:
        pass  # a read-only or full cache only costs speed, never the run


def extract_one(index: int, path, settings: FeatureSettings, cache_dir: str | None) -> Extracted:
    """Features of one file, from the cache when possible. Never raises for a bad file."""
    from dataset_tools.audio_io import AudioDecodeError, load_audio

    path = Path(path)
    result = Extracted(index=index, path=path)
    try:
        result.sha1 = file_sha1(path) if path.is_file() else None
        cache_file = _cache_file(Path(cache_dir), result.sha1, settings) if cache_dir and result.sha1 else None
        if cache_file is not None:
            result.features = _read_cache(cache_file)
            result.cached = result.features is not None
        if result.features is None:
            audio, _ = load_audio(path, sample_rate=settings.sample_rate, mono=True)
            result.features = features_from_audio(audio, settings)
            if cache_file is not None:
                _write_cache(cache_file, result.features)
    except (AudioDecodeError, FeatureError) as err:
        result.reason = str(err)
    except OSError as err:
        result.reason = f"cannot read file ({err.strerror or err})"
    except MemoryError:
        result.reason = "too large to decode in memory"
    except Exception as err:  # a bulk tool never dies on one file: report anything else too
        result.reason = f"unexpected error: {type(err).__name__}: {err}".splitlines()[0]
    if result.reason:
        result.features = None
    return result


def extract_many(paths: Sequence, settings: FeatureSettings, *, workers: int | None = None,
                 cache_dir: Path | None = None, progress: bool = True,
                 desc: str = "features") -> Iterator[Extracted]:
    """Yield an `Extracted` for every path, in completion order (use ``.index`` to reorder).

    ``workers`` <= 1 (or a single file) runs in this process; otherwise a pool of processes.
    The pool starts, and works through every file, from the first ``next()`` on.
    ``cache_dir`` None disables the cache.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    workers = default_workers() if workers is None else max(1, int(workers))
    cache = str(cache_dir) if cache_dir is not None else None
    bar = tqdm(total=len(paths), desc=desc, unit="file", disable=not progress or not paths,
               dynamic_ncols=True, leave=False)
    try:
        if workers == 1 or len(paths) <= 1:
            for index, path in enumerate(paths):
                yield extract_one(index, path, settings, cache)
                bar.update()
            return
        pending = dict(enumerate(paths))
        for attempt in range(2):  # a crashed worker (e.g. a decoder segfault) gets one fresh pool
            try:
                for result in _run_pool(pending, settings, cache, min(workers, len(pending))):
                    pending.pop(result.index, None)
                    yield result
                    bar.update()
                break
            except BrokenProcessPool:
                if attempt == 1:
                    for index, path in sorted(pending.items()):
                        yield Extracted(index, path, reason="a worker process crashed while decoding it")
                        bar.update()
    finally:
        bar.close()


def _pool_context():
    """forkserver where available, else spawn; never plain fork.

    Both start workers from a fresh interpreter, so TensorFlow's threads in this process never
    leak into them. forkserver imports the decoding stack once in its server and forks each
    worker from it: starting two workers takes about 2 s instead of 4-5 s with spawn (measured
    on 2 busy cores), which matters when tagging a handful of files.
    """
    if "forkserver" in get_all_start_methods():
        context = get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)  # no effect if the server already runs: only slower
        return context
    return get_context("spawn")


def _quiet_worker() -> None:
    """Worker initializer: send the process's C-level stderr to /dev/null.

    Decoder libraries (libmpg123, ffmpeg's libraries via libsndfile) print warnings about damaged
    tags straight to file descriptor 2, interleaved with our output; every problem that matters
    already comes back as the file's skip reason.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass


def _run_pool(jobs: dict, settings, cache, workers) -> Iterator[Extracted]:
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_quiet_worker) as pool:
        futures = [pool.submit(extract_one, index, str(path), settings, cache) for index, path in jobs.items()]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:  # stopped early (error, Ctrl-C): do not finish the whole queue
                future.cancel()
