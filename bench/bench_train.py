"""Training throughput: our cached-codes data path vs. the naive one, same model, same run.

For each model (``tiny`` and ``random:small``, a randomly initialised model of
musicgen-small's size) and each data path, a fresh subprocess trains a few steps on
10-second crops and reports seconds per training sample, tokens/s, data time (loading,
cropping, collating) vs. model time (forward, backward, optimiser) and peak memory:

- ours:  codes encoded once into the cache (its one-time cost is reported apart), random
         crops of cached codes at every step;
- naive: what most existing trainers do at every step: decode the source file, resample to
         32 kHz, crop, EnCodec-encode, then the same training step.

Usage: python bench/bench_train.py [--models tiny,random:small] [--json out.json]
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
sys.path.insert(0, str(ROOT))

PLAN = {  # model: (batch size, measured steps)
    "tiny": (4, 20),
    "random:small": (1, 3),
}


def make_sources(folder: Path, n: int = 6, seconds: float = 20.0) -> list[Path]:
    """Prepared-dataset-like sources: 44.1 kHz mono 16-bit WAVs with captions."""
    import numpy as np
    import soundfile as sf
    sr = 44100
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        audio = sum(0.2 / (h + 1) * np.sin(2 * np.pi * f0 * (h + 1) * t) for h in range(4))
        audio *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t) ** 2
        path = folder / f"track_{i}.wav"
        sf.write(path, audio.astype(np.float32), sr, subtype="PCM_16")
        path.with_suffix(".txt").write_text(f"test tone {i}, ambient")
        paths.append(path)
    return paths


def child(model_name: str, mode: str, data: Path, batch: int, steps: int, seconds: float) -> dict:
    import numpy as np
    import torch

    from dataset_tools.audio_io import load_audio
    from musicgen_trainer.data import CropSampler, collate, find_clips
    from musicgen_trainer.code_cache import CodeCache
    from musicgen_trainer.models import load_model
    from musicgen_trainer.train_config import TrainConfig
    from musicgen_trainer.step import make_state, prepare_lm_for_training, resolve_precision, train_step

    class SingleProcess:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        num_processes, process_index, is_main_process = 1, 0, True

        def prepare_model(self, m):
            return m

    acc = SingleProcess()
    model = load_model(model_name, device=str(acc.device))
    config = TrainConfig(data=str(data), model=model_name, batch_size=batch, segment_seconds=seconds,
                         lr=1e-5, cond_dropout=0.3, word_dropout=0.3)
    prepare_lm_for_training(model, config)
    precision = resolve_precision("auto", acc.device)
    state = make_state(model, config, acc, total_steps=steps + 1, precision=precision)
    clips = find_clips(data, valid_fraction=0.0)
    n_frames = int(seconds * model.frame_rate)
    encode_seconds = 0.0
    if mode == "ours":
        start = time.perf_counter()
        codes, clips, _ = CodeCache(model.compression_model, data / ".cache").codes_for(clips, progress=False)
        encode_seconds = time.perf_counter() - start
        sampler = CropSampler(codes, [c.caption for c in clips], n_frames, batch, seed=0)

        def get_batch(i):
            return sampler.micro_batch(i).to(acc.device)
    else:
        rng = np.random.default_rng(0)
        sr = model.sample_rate

        def get_batch(i):
            crops, captions = [], []
            for _ in range(batch):
                clip = clips[rng.integers(len(clips))]
                audio, _ = load_audio(clip.path, sample_rate=sr, mono=True)   # decode + resample
                start = rng.integers(0, max(1, audio.shape[-1] - int(seconds * sr)))
                wav = torch.from_numpy(audio[start:start + int(seconds * sr)])[None, None].to(acc.device)
                with torch.no_grad():
                    tokens, _ = model.compression_model.encode(wav)           # EnCodec, every step
                crops.append(tokens[0].cpu().numpy())
                captions.append(clip.caption)
            return collate(crops, captions, n_frames).to(acc.device)

    data_times, model_times, tokens = [], [], []
    for i in range(steps + 1):  # step 0 warms up
        t0 = time.perf_counter()
        mb = get_batch(i)
        t1 = time.perf_counter()
        metrics = train_step(state, [mb])
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i:
            data_times.append(t1 - t0)
            model_times.append(t2 - t1)
            tokens.append(metrics["tokens"])
    data_t, model_t = sum(data_times), sum(model_times)
    samples = batch * steps
    result = {
        "model": model_name, "mode": mode, "device": str(acc.device), "precision": precision,
        "batch": batch, "steps": steps, "clip_seconds": seconds,
        "seconds_per_sample": (data_t + model_t) / samples,
        "data_seconds_per_sample": data_t / samples, "model_seconds_per_sample": model_t / samples,
        "tokens_per_s": sum(tokens) / (data_t + model_t),
        "data_overhead_pct": 100 * data_t / model_t,
        "one_time_encode_seconds": encode_seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if acc.device.type == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(PLAN), help="comma-separated model names")
    parser.add_argument("--seconds", type=float, default=10.0, help="crop length (default 10)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "MODE", "DATA", "BATCH_STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, mode, data, batch_steps = args.child
        batch, steps = (int(x) for x in batch_steps.split("x"))
        print(json.dumps(child(model, mode, Path(data), batch, steps, args.seconds)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_sources(data)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        for model in args.models.split(","):
            batch, steps = PLAN.get(model, (1, 3))
            for mode in ("ours", "naive"):
                proc = subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--child",
                                       model, mode, str(data), f"{batch}x{steps}"],
                                      capture_output=True, text=True, env=env, cwd=ROOT)
                if proc.returncode:
                    sys.exit(f"{model}/{mode} failed:\n{proc.stderr[-3000:]}")
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"{model:>13} {mode:>5}: {r['seconds_per_sample']:.3f} s/sample "
                      f"(data {r['data_seconds_per_sample']:.3f}, model {r['model_seconds_per_sample']:.3f}), "
                      f"{r['tokens_per_s']:.0f} tokens/s, data +{r['data_overhead_pct']:.1f} %, "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    print("\n| model | data path | s/sample | data s/sample | model s/sample | data overhead | tokens/s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['mode']} | {r['seconds_per_sample']:.3f} | {r['data_seconds_per_sample']:.4f} | "
              f"{r['model_seconds_per_sample']:.3f} | {r['data_overhead_pct']:.1f} % | {r['tokens_per_s']:.0f} | "
              f"{r['peak_rss_gib']:.2f} GiB |")
    for model in args.models.split(","):
        ours = next(r for r in results if r["model"] == model and r["mode"] == "ours")
        naive = next(r for r in results if r["model"] == model and r["mode"] == "naive")
        print(f"{model}: naive/ours time per sample = {naive['seconds_per_sample'] / ours['seconds_per_sample']:.2f}x, "
              f"our data overhead {ours['data_overhead_pct']:.2f} % of model time, "
              f"peak RSS ours {ours['peak_rss_gib']:.2f} GiB vs naive {naive['peak_rss_gib']:.2f} GiB, "
              f"one-time encoding {ours['one_time_encode_seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
