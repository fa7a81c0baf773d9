"""Benchmark of the genre classifier: training time per epoch, tagging speed (x real time).

    python bench/bench_classifier.py                 # generated audio, a few minutes on 2 cores
    python bench/bench_classifier.py --quick         # smaller, ~1 minute
    python bench/bench_classifier.py --json out.json # also save the figures

Tagging speed = seconds of audio tagged per second of wall time, decoding included, with the
feature cache OFF (a first run over new files). It is measured twice: through the library
(TensorFlow already loaded) and through the command line in a fresh process (TensorFlow
import, model load and worker start-up included: what a user waits for). The tagged folder
holds 30 s tracks at 44.1 kHz, one in four as MP3 (decoded by ffmpeg), like a user's unknown/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genre_classifier.toy import TOY_GENRES, make_toy_dataset  # noqa: E402


def bench_training(work: Path, tracks: int, seconds: float, epochs: int) -> dict:
    from genre_classifier.training import TrainConfig, train
    data = work / "train"
    make_toy_dataset(data, tracks_per_genre=tracks, seconds=(seconds, seconds), seed=11)
    started = time.perf_counter()
    out = train(TrainConfig(data=data, out=work / "model", epochs=epochs, patience=epochs, progress=False,
                            cache_dir=work / "cache"))
    total = time.perf_counter() - started
    info = json.loads((out / "classifier.json").read_text())
    t = info["training"]
    steady = t["epoch_seconds"][1:] or t["epoch_seconds"]
    segments = t["counts"]["train"]["segments"]
    return {"train_tracks": t["counts"]["train"]["tracks"], "train_segments": segments,
            "epochs": t["epochs_run"], "first_epoch_s": t["epoch_seconds"][0],
            "epoch_s": sum(steady) / len(steady), "epoch_s_per_1000_segments": 1000 * sum(steady) / len(steady) / segments,
            "train_total_s": total, "model": str(out)}


def bench_tagging(work: Path, model: Path, tracks: int, seconds: float) -> dict:
    from genre_classifier.tagging import TagConfig, tag
    inbox = work / "unknown"
    make_toy_dataset(inbox / "gen", genres=TOY_GENRES, tracks_per_genre=tracks // len(TOY_GENRES),
                     seconds=(seconds, seconds), seed=99, mp3_every=4)
    for f in (inbox / "gen").rglob("*.*"):  # flatten: unknown/ has no genre folders
        f.rename(inbox / f.name)
    audio_files = sorted(p for p in inbox.iterdir() if p.is_file())
    results = {}
    started = time.perf_counter()
    result = tag(TagConfig(directory=inbox, model=model, use_cache=False, progress=False,
                           report=work / "tags-lib.csv"))
    wall = time.perf_counter() - started
    audio_s = sum(r.duration_s for r in result.rows)
    results["library"] = {"wall_s": wall, "x_real_time": audio_s / wall}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genre_classifier", "tag", str(inbox), "--model", str(model),
                           "--no-cache", "--no-progress", "--report", str(work / "tags-cli.csv")],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"CLI tagging failed:\n{proc.stderr}")
    results["cli_cold"] = {"wall_s": wall, "x_real_time": audio_s / wall}
    tag(TagConfig(directory=inbox, model=model, progress=False, cache_dir=work / "tag-cache",
                  report=work / "tags-fill.csv"))
    started = time.perf_counter()  # a second pass finds every file's features cached (dry run, then --apply)
    tag(TagConfig(directory=inbox, model=model, progress=False, cache_dir=work / "tag-cache",
                  report=work / "tags-cached.csv"))
    wall = time.perf_counter() - started
    results["library_cached"] = {"wall_s": wall, "x_real_time": audio_s / wall}
    return {"files": len(audio_files), "mp3_files": sum(p.suffix == ".mp3" for p in audio_files),
            "audio_s": audio_s, **results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data (about a minute)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs to time (default 6, quick 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    train_tracks, tag_tracks, seconds = (6, 16, 15.0) if args.quick else (16, 48, 30.0)
    epochs = args.epochs or (3 if args.quick else 6)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_classifier_") as tmp:
        work = Path(tmp)
        training = bench_training(work, train_tracks, seconds, epochs)
        tagging = bench_tagging(work, Path(training.pop("model")), tag_tracks, seconds)
    figures = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine(),
                           "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
               "training": training, "tagging": tagging}
    t, g = training, tagging
    load = figures["machine"]["load_average_1min"]
    print("\ngenre_classifier benchmark "
          f"({figures['machine']['cpus']} CPU cores, Python {figures['machine']['python']}; load average "
          f"{load[0]:.1f} before, {load[1]:.1f} after: above the core count, other programs shared the CPUs)")
    print(f"training (baseline CNN, batch 32): {t['train_segments']} segments of 3 s from {t['train_tracks']} "
          f"tracks; {t['epochs']} epochs")
    print(f"  time per epoch            {t['epoch_s']:.2f} s  ({t['epoch_s_per_1000_segments']:.2f} s per 1000 "
          f"segments; the first epoch, with graph tracing, took {t['first_epoch_s']:.2f} s)")
    print(f"tagging {g['files']} files ({g['mp3_files']} MP3), {g['audio_s'] / 60:.1f} min of audio, cache off:")
    print(f"  library call (TF loaded)  {g['library']['x_real_time']:.0f}x real time  "
          f"({g['library']['wall_s']:.1f} s)")
    print(f"  CLI, fresh process        {g['cli_cold']['x_real_time']:.0f}x real time  "
          f"({g['cli_cold']['wall_s']:.1f} s, including TensorFlow import and model load)")
    print(f"  again, features cached    {g['library_cached']['x_real_time']:.0f}x real time  "
          f"({g['library_cached']['wall_s']:.1f} s: a dry run followed by --apply)")
    target = 100
    verdict = "meets" if g["library"]["x_real_time"] >= target else "MISSES"
    print(f"  target >= {target}x real time: {verdict} it (library call)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
