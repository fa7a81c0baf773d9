"""generate.py: prompt a pretrained, tiny or fine-tuned MusicGen from the command line.

Example:
    python generate.py --model checkpoints/my-run/export --prompt "lo-fi jazz, piano, 80 bpm" --duration 10
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="facebook/musicgen-small",
                   help="hub name (facebook/musicgen-small...), 'tiny', or an export folder from train.py")
    p.add_argument("--prompt", action="append", default=[],
                   help="text prompt; repeat for several (one output each, generated as a batch)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of audio per prompt (default 8)")
    p.add_argument("--top-k", type=int, default=250, help="sample from the k most likely codes (default 250)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling threshold; 0 uses top-k (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    p.add_argument("--cfg-coef", type=float, default=3.0, help="classifier-free guidance strength (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same output (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    return p


def slug(text: str, limit: int = 48) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return text[:limit] or "unconditional"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .generation import GenerationConfig
    from .loading import ModelUnavailableError
    try:
        config = GenerationConfig(duration=args.duration, top_k=args.top_k, top_p=args.top_p,
                                  temperature=args.temperature, cfg_coef=args.cfg_coef, seed=args.seed)
        run(args.model, args.prompt or [""], config, Path(args.out), device=args.device)
    except (ModelUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(model_name: str, prompts, config, out: Path, device=None) -> list:
    """Load, generate one clip per prompt, write ``out/<NN>_<prompt>.wav`` + ``.json``."""
    from dataclasses import asdict

    from dataset_tools.audio_io import write_wav_atomic

    from .generation import generate
    from .loading import load_model

    model = load_model(model_name, device=device)
    wavs = generate(model, prompts, config, progress=True)
    written = []
    for i, (prompt, wav) in enumerate(zip(prompts, wavs)):
        stem = out / f"{i:02d}_{slug(prompt)}"
        path = write_wav_atomic(stem.with_suffix(".wav"), wav.numpy(), model.sample_rate)
        meta = {"model": str(model_name), "prompt": prompt, "sample_rate": model.sample_rate, **asdict(config)}
        stem.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {path}")
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
