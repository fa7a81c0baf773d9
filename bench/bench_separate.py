"""Benchmark source separation: real-time factor and peak memory versus song length.

For each model and length, a fresh child process separates one generated 44.1 kHz
stereo WAV (noise with a beat: content does not change demucs' cost) into instrumental +
vocals with ``dataset_tools.separation.separate`` and reports

* RTF: separation wall time / audio duration (below 1 = faster than real time);
* peak RSS: the child's maximum resident memory (``ru_maxrss``), and its growth over the
  RSS measured after the model was built and had run one window (so imports and weights
  are not counted as per-song memory).

Memory is flat when the growth does not rise with the length. ``--baseline`` adds, for
comparison, demucs' own ``apply_model`` on the whole decoded track (what ``demucs``'s
CLI does): its memory grows with the song.

Models (random weights, offline: the cost of a forward pass does not depend on them):
``tiny``: HTDemucs with ~6 k parameters and 1 s windows at 44.1 kHz (tests' architecture);
``full``: HTDemucs with its constructor's default sizes (~27 M parameters) and
``htdemucs``' 7.8 s window.

    python bench/bench_separate.py                                   # tiny: 30/120/300 s
    python bench/bench_separate.py --models full --seconds 15 30 60  # slow on a CPU
    python bench/bench_separate.py --baseline --json results.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = 44100
SEGMENTS = {"tiny": 1.0, "full": 7.8}


def write_song(path: Path, seconds: float, seed: int = 0) -> None:
    """Stereo float WAV written block by block (the parent's memory stays small too)."""
    import numpy as np
    import soundfile as sf
    rng = np.random.default_rng(seed)
    block = RATE * 10
    with sf.SoundFile(str(path), "w", samplerate=RATE, channels=2, subtype="FLOAT") as f:
        done = 0
        total = int(seconds * RATE)
        while done < total:
            n = min(block, total - done)
            t = (done + np.arange(n)) / RATE
            beat = ((t % 0.5) < 0.02) * 0.5
            x = 0.1 * rng.standard_normal((n, 2)) + beat[:, None] * np.sin(2 * np.pi * 110 * t)[:, None]
            f.write(x.astype(np.float32))
            done += n


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def child(args) -> None:
    """Runs in a fresh process: one model, one song, one method; prints a JSON line."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from dataset_tools.separation import SeparateOptions, separate
    from dataset_tools.separation.model import random_htdemucs, separator_from_model
    model = random_htdemucs(args.model, seed=0, samplerate=RATE, segment=SEGMENTS[args.model])
    sep = separator_from_model(model, device=args.device, name=args.model)
    with torch.inference_mode():  # warm-up: one window, so its buffers count as fixed cost
        sep(torch.zeros(1, 2, sep.max_window))
    base = _rss_mb()
    start = time.perf_counter()
    if args.method == "stream":
        with tempfile.TemporaryDirectory() as out:
            report = separate([args.song], out, SeparateOptions(progress=False, subtype="FLOAT"), separator=sep)
            assert report.files[0].status == "separated", report.files[0].reason
    else:  # demucs' way: decode everything, apply_model on the whole track
        from demucs.apply import apply_model
        from dataset_tools.audio_io import load_audio
        audio, _ = load_audio(args.song, mono=False)
        mix = torch.from_numpy(audio)
        ref = mix.mean(0)
        stems = apply_model(model, ((mix - ref.mean()) / ref.std())[None], shifts=0, split=True,
                            overlap=0.25, device=sep.device)[0] * ref.std() + ref.mean()
        assert stems.shape[-1] == audio.shape[-1]
    wall = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if sep.device.type == "cuda" else None
    print(json.dumps({"model": args.model, "method": args.method, "seconds": args.seconds, "wall": wall,
                      "rtf": wall / args.seconds, "rss_base_mb": base, "rss_peak_mb": _rss_mb(),
                      "rss_growth_mb": _rss_mb() - base, "gpu_peak_mb": peak_gpu,
                      "device": str(sep.device), "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[30, 120, 300], help="song lengths")
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=sorted(SEGMENTS))
    parser.add_argument("--baseline", action="store_true", help="also run demucs' whole-track apply_model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also save the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--song", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="stream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.seconds = args.seconds[0]
        return child(args)

    results = []
    methods = ["stream", "apply_model"] if args.baseline else ["stream"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            song = Path(tmp) / f"song_{seconds:g}.wav"
            write_song(song, seconds)
            for model in args.models:
                for method in methods:
                    cmd = [sys.executable, __file__, "--child", "--song", str(song), "--seconds", str(seconds),
                           "--model", model, "--method", method, "--device", args.device,
                           "--threads", str(args.threads)]
                    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{model} {method} {seconds:g} s failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                        continue
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    results.append(row)
                    print(f"{model:5} {method:11} {seconds:6.0f} s  RTF {row['rtf']:6.3f}  peak RSS "
                          f"{row['rss_peak_mb']:7.0f} MB  growth {row['rss_growth_mb']:6.0f} MB", flush=True)
            song.unlink()
    print("\n| model | method | song (s) | wall (s) | RTF | peak RSS (MB) | RSS growth (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['method']} | {r['seconds']:.0f} | {r['wall']:.1f} | {r['rtf']:.3f} | "
              f"{r['rss_peak_mb']:.0f} | {r['rss_growth_mb']:.0f} |")
    if results:
        print(f"\ndevice: {results[0]['device']}, torch threads: {results[0]['threads']}, CPU cores: {os.cpu_count()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
