"""Benchmark ``dataset_tools prepare``: parallel workers vs a plain one-process loop.

In one run, on the same generated library (synthetic multi-genre music in WAV 48 kHz
stereo, FLAC, MP3 and OGG, plus MIDI files that FluidSynth renders):

1. ``--workers 1``: every file converted in a plain loop in one process (the same
   per-file function, called in order, no pool);
2. ``--workers N`` (default: all cores): the parallel pool;
   run in rounds of loop, parallel, parallel, loop, so that load from other programs
   drifting during the benchmark affects both alike; the speed-up reported is the median
   of the rounds' ratios;
3. ``--workers N`` again on the unchanged library: the up-to-date check alone;
4. a control for this work: N independent one-process loops at once, each on 1/N of
   the library (symlinks): the most N processes of this (memory-heavy) work get on this
   machine, with no coordination at all, each paying its own start-up.

Each is a fresh ``python -m dataset_tools prepare`` process into its own empty OUT, so
start-up costs (imports, worker start) are counted as a user would feel them. Prints
wall time, speed (seconds of audio per second) and the speed-up ratio, then the control
above and a second one: the same pure-CPU job run in 1 vs N processes, i.e. how much
parallelism this machine delivers to cache-resident work (shared or throttled vCPUs can
deliver far less than their count).

    python bench/bench_prepare.py                      # 18.7 min of music, ~2 minutes on 2 cores
    python bench/bench_prepare.py --track-seconds 150  # 70 min of typical song lengths, ~4 minutes
    python bench/bench_prepare.py --tracks 64 --workers 4 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENRES = {"rock": (128, 0), "jazz": (96, 3), "ambient": (70, 7), "folk": (112, 5)}  # bpm, root offset


def make_track(seconds: float, rate: int, bpm: int, root: int, seed: int):
    """Stereo float32 [n, 2]: a chord progression of decaying tones plus a click on every
    beat: enough structure for tempo/key estimation to do real work."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    beat = 60.0 / bpm
    out = np.zeros(n, dtype=np.float64)
    chords = ([0, 4, 7], [5, 9, 12], [7, 11, 14], [0, 4, 7])
    bar = 4 * beat
    for i in range(int(seconds / bar) + 1):
        start = int(i * bar * rate)
        seg = slice(start, min(n, start + int(bar * rate)))
        tt = t[seg] - i * bar
        for step in chords[i % 4]:
            f = 220.0 * 2 ** ((root + step) / 12)
            out[seg] += 0.12 * np.sin(2 * np.pi * f * tt) * np.exp(-1.5 * tt)
    clicks = (t % beat) < 0.01
    out += 0.3 * clicks * rng.uniform(-1, 1, n)
    pan = np.stack([out * 0.9, out * 0.7], axis=1)
    return (pan / max(1e-9, np.abs(pan).max()) * 0.8).astype(np.float32)


def make_midi(path: Path, seconds: float, bpm: int, root: int) -> None:
    import mido
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
    beats = int(seconds * bpm / 60)
    for b in range(beats):
        note = 48 + root + (0, 4, 7, 12)[b % 4]
        track.append(mido.Message("note_on", note=note, velocity=90, time=0))
        track.append(mido.Message("note_off", note=note, velocity=0, time=480))
    mid.save(str(path))


def build_library(src: Path, tracks: int, seconds: float, midi: int) -> float:
    """Write the library; returns its total duration in seconds."""
    import numpy as np

    from dataset_tools.audio_io import write_audio
    # Mostly lossless files: encoding MP3/OGG here costs ~2 s per file, longer than
    # converting it, and would dominate the benchmark's own run time. Two of each.
    formats = [("wav", 48000), ("flac", 44100), ("wav", 44100), ("flac", 48000)]
    lossy = {2: ("mp3", 44100), 5: ("ogg", 44100), 9: ("mp3", 44100), 13: ("ogg", 44100)}
    base: dict = {}
    total = 0.0
    for i in range(tracks):
        genre = list(GENRES)[i % len(GENRES)]
        bpm, root = GENRES[genre]
        ext, rate = lossy.get(i, formats[(i // len(GENRES)) % len(formats)])
        if (genre, rate) not in base:
            base[(genre, rate)] = make_track(seconds, rate, bpm, root, seed=i)
        # each track differs (shifted start, level) without synthesising it again
        audio = np.roll(base[(genre, rate)], int(i * 0.37 * rate), axis=0) * (0.6 + 0.02 * (i % 10))
        path = src / genre / f"{i + 1:02d} - Artist {i % 5} - Track {i}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, audio, rate, format=ext.upper())
        total += seconds
    for j in range(midi):
        genre = list(GENRES)[j % len(GENRES)]
        bpm, root = GENRES[genre]
        make_midi(src / genre / f"Piano piece {j}.mid", seconds, bpm, root)
        total += seconds
    return total


def _prepare_cmd(src: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "dataset_tools", "prepare", str(src), str(out),
            "--workers", str(workers), "--no-progress"]


ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_prepare(src: Path, out: Path, workers: int) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(_prepare_cmd(src, out, workers), cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"prepare failed:\n{proc.stderr}")
    return wall, json.loads((out / "prepare_report.json").read_text())


def split_library(src: Path, dest: Path, parts: int) -> list[Path]:
    """``parts`` libraries of symlinks, the files dealt out biggest first (MIDI, slow to
    render, first of all) so that each part gets a similar share of the work."""
    files = sorted((p for p in src.rglob("*") if p.is_file()),
                   key=lambda p: (p.suffix != ".mid", -p.stat().st_size, str(p)))
    roots = [dest / f"part{i}" for i in range(parts)]
    for i, f in enumerate(files):
        link = roots[i % parts] / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    return roots


def run_independent_loops(parts: list[Path], outs: list[Path]) -> float:
    """Wall time of one ``--workers 1`` prepare per part, all started at once. Each runs
    its numeric libraries on one thread, as our workers do: idle BLAS threads spin, and
    with several processes they would burn the cores the others need."""
    from dataset_tools.parallel import THREAD_ENV
    env = dict(ENV, **{var: "1" for var in THREAD_ENV})
    start = time.perf_counter()
    procs = [subprocess.Popen(_prepare_cmd(part, out, 1), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for part, out in zip(parts, outs)]
    errors = [proc.communicate()[1] for proc in procs]
    wall = time.perf_counter() - start
    for proc, err in zip(procs, errors):
        if proc.returncode != 0:
            sys.exit(f"prepare failed:\n{err}")
    return wall


def _cpu_job(_=None) -> float:
    """~1.5 s of mixed Python + numpy work: the machine's parallel ceiling."""
    import numpy as np
    x = np.random.default_rng(0).normal(size=2 ** 18)
    acc = 0.0
    for _i in range(60):
        acc += float(np.abs(np.fft.rfft(x)).sum())
        acc += sum(i * i for i in range(40_000))
    return acc


def cpu_ceiling(workers: int) -> float:
    """Speed-up of ``workers`` copies of one CPU job run in parallel vs one after another
    (serial, parallel, parallel, serial; averaged)."""
    from concurrent.futures import ProcessPoolExecutor
    serial, parallel = [], []
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_cpu_job, range(workers)))  # start the workers before timing
        for kind in ("s", "p", "p", "s"):
            start = time.perf_counter()
            if kind == "s":
                for _ in range(workers):
                    _cpu_job()
            else:
                list(pool.map(_cpu_job, range(workers)))
            (serial if kind == "s" else parallel).append(time.perf_counter() - start)
    return sum(serial) / sum(parallel)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from dataset_tools.parallel import default_workers
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=24, help="audio tracks (default: 24)")
    parser.add_argument("--track-seconds", type=float, default=40.0,
                        help="length of each track, and of each MIDI piece (default: 40)")
    parser.add_argument("--midi", type=int, default=4, help="MIDI files (default: 4)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="parallel workers (default: all cores)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="loop/parallel/parallel/loop rounds; the speed-up is their median (default: 3)")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        src = root / "library"
        t0 = time.perf_counter()
        audio = build_library(src, args.tracks, args.track_seconds, args.midi)
        files = args.tracks + args.midi
        print(f"library: {files} files ({args.tracks} audio in wav/flac + 2 mp3 + 2 ogg, {args.midi} MIDI), "
              f"{audio / 60:.1f} min of music, generated in {time.perf_counter() - t0:.1f} s")
        print(f"machine: {os.cpu_count()} CPUs visible, {default_workers()} usable; Python {sys.version.split()[0]}")

        # A-B-B-A order: load from other programs that drifts during the benchmark hits
        # the loop and the parallel runs alike.
        walls: dict[int, list[float]] = {1: [], args.workers: []}
        inproc: dict[int, list[float]] = {1: [], args.workers: []}
        reports = {}
        for r in range(args.rounds):
            for k, workers in enumerate((1, args.workers, args.workers, 1)):
                out = root / f"out_{r}_{k}_{workers}"
                wall, rep = run_prepare(src, out, workers)
                walls[workers].append(wall)
                inproc[workers].append(rep["elapsed_seconds"])
                reports[workers] = (rep, out)
                print(f"  run {len(sum(walls.values(), []))}: {'loop' if workers == 1 else 'parallel':<8} {wall:6.1f} s")
        (loop_rep, _), (par_rep, par_out) = reports[1], reports[args.workers]
        if loop_rep["segments"] != par_rep["segments"] or loop_rep["tracks"] != par_rep["tracks"]:
            sys.exit("error: the loop and the parallel run produced different datasets")
        again_wall, again_rep = run_prepare(src, par_out, args.workers)
        parts = split_library(src, root / "split", args.workers)
        independent = [run_independent_loops(parts, [root / f"split_out_{r}_{i}" for i in range(len(parts))])
                       for r in range(args.rounds)]
        ceiling = cpu_ceiling(args.workers)

        def mean(xs):
            return sum(xs) / len(xs)
        loop_wall, par_wall = mean(walls[1]), mean(walls[args.workers])
        # One ratio per loop/parallel/parallel/loop round; their median resists the bursts
        # of load a shared machine has (single runs of the same command vary by +-20 %).
        ratios = sorted(sum(walls[1][2 * r:2 * r + 2]) / sum(walls[args.workers][2 * r:2 * r + 2])
                        for r in range(args.rounds))
        median = statistics.median(ratios)

        def line(name, wall, rep):
            return (f"{name:<28}{wall:>8.1f} s{audio / wall:>9.1f}x real time   RTF {wall / audio:.4f}   "
                    f"({rep['converted_this_run']} converted, {rep['up_to_date']} up to date)")
        print(line("one-process loop (1)", loop_wall, loop_rep))
        print(line(f"parallel ({args.workers} workers)", par_wall, par_rep))
        print(line("re-run, nothing changed", again_wall, again_rep))
        print(f"speed-up parallel vs loop:  {median:.2f}x  (median of {args.rounds} rounds: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; all runs' mean {loop_wall / par_wall:.2f}x; in-process "
              f"time {mean(inproc[1]):.1f} s -> {mean(inproc[args.workers]):.1f} s: "
              f"{mean(inproc[1]) / mean(inproc[args.workers]):.2f}x)")
        print(f"{args.workers} independent loops on 1/{args.workers} of the library each, at once: "
              f"{mean(independent):.1f} s = {loop_wall / mean(independent):.2f}x over the loop "
              f"(this work's own ceiling here)")
        print(f"machine ceiling (same CPU job, 1 vs {args.workers} processes): {ceiling:.2f}x")
        print(f"re-run vs first run: {again_wall / par_wall * 100:.0f} % of the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
