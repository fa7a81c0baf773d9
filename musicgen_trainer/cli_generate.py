"""generate.py: prompt a pretrained, tiny or fine-tuned MusicGen from the command line.

One output per --prompt, generated as one batch. For each: WAV (+ MP3 with --mp3), a mel
spectrogram PNG, a JSON of the exact parameters, and a MIDI transcription with --midi.

Examples:
  python generate.py --model checkpoints/my-run/export --genres jazz --prompt "piano trio" --duration 10 --midi
  python generate.py --model facebook/musicgen-small --prompt "lo-fi hip hop" --prompt "epic orchestra" --seed 1
  python generate.py --model checkpoints/my-run/export --audio-prompt riff.wav --genres rock,blues --duration 20
  python generate.py --model facebook/musicgen-melody --melody hum.wav --prompt "string quartet"
"""
from __future__ import annotations

import argparse
import re
import secrets
import sys
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from .constants import GENERATION_MAX_BATCH, MUSICGEN_EXTEND_STRIDE


@dataclass
class GenerateOptions:
    """One generate.py request, validated on construction (ValueError with a readable reason)."""
    model: str = "facebook/musicgen-small"
    prompts: tp.List[str] = field(default_factory=list)
    genres: tp.List[str] = field(default_factory=list)
    bpm: tp.Optional[float] = None
    key: tp.Optional[str] = None
    duration: float = 8.0
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: tp.Optional[int] = None          # None: a random seed, recorded in the JSON
    extend_stride: float = MUSICGEN_EXTEND_STRIDE
    audio_prompt: tp.Optional[Path] = None
    prompt_seconds: tp.Optional[float] = None
    melody: tp.Optional[Path] = None
    out: Path = Path("outputs")
    mp3: bool = False
    midi: bool = False
    device: tp.Optional[str] = None

    def __post_init__(self):
        from .generation import GenerationConfig
        from .prompting import parse_genres
        self.genres = parse_genres(self.genres)
        self.out = Path(self.out)
        if self.seed is None:
            self.seed = secrets.randbelow(2 ** 31)
        if len(self.prompts) > GENERATION_MAX_BATCH:
            raise ValueError(f"at most {GENERATION_MAX_BATCH} prompts per run, got {len(self.prompts)}")
        if self.bpm is not None and not 20 <= self.bpm <= 400:
            raise ValueError(f"--bpm must be between 20 and 400, got {self.bpm:g}")
        if self.prompt_seconds is not None and not self.prompt_seconds > 0:
            raise ValueError(f"--prompt-seconds must be more than 0, got {self.prompt_seconds:g}")
        for flag, path in (("--audio-prompt", self.audio_prompt), ("--melody", self.melody)):
            if path is not None:
                path = Path(path).expanduser()
                if not path.exists():
                    raise ValueError(f"{flag} file not found: {path}")
                if not path.is_file():
                    raise ValueError(f"{flag} is not a file: {path}")
        self.audio_prompt = Path(self.audio_prompt).expanduser() if self.audio_prompt else None
        self.melody = Path(self.melody).expanduser() if self.melody else None
        if self.audio_prompt and self.melody:
            raise ValueError("--audio-prompt and --melody cannot be combined: choose one")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} exists and is not a folder")
        self.generation = GenerationConfig(duration=self.duration, top_k=self.top_k, top_p=self.top_p,
                                           temperature=self.temperature, cfg_coef=self.cfg_coef,
                                           seed=self.seed, extend_stride=self.extend_stride)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="facebook/musicgen-small",
                   help="hub name (facebook/musicgen-small...), 'tiny', or an export folder from train.py")
    p.add_argument("--prompt", action="append", default=[],
                   help="text prompt; repeat for several (one output each, generated as a batch)")
    p.add_argument("--genres", default="",
                   help="comma-separated genres, e.g. jazz,rock: turned into a caption the way the "
                        "dataset tools write them, before each prompt")
    p.add_argument("--bpm", type=float, default=None, help="tempo words for the caption (e.g. 90)")
    p.add_argument("--key", default=None, help="key words for the caption (e.g. 'A minor')")
    p.add_argument("--duration", type=float, default=8.0,
                   help="seconds of new audio per prompt; beyond the model's window (30 s) by "
                        "windowed continuation (default 8)")
    p.add_argument("--audio-prompt", type=Path, default=None,
                   help="audio file to continue (its last --prompt-seconds are used)")
    p.add_argument("--prompt-seconds", type=float, default=None,
                   help="how much of the audio prompt's end to use (default: half the model's window)")
    p.add_argument("--melody", type=Path, default=None,
                   help="audio whose melody to follow (melody models such as facebook/musicgen-melody)")
    p.add_argument("--top-k", type=int, default=250, help="sample from the k most likely codes (default 250)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling threshold; 0 uses top-k (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    p.add_argument("--cfg-coef", type=float, default=3.0, help="classifier-free guidance strength (default 3)")
    p.add_argument("--extend-stride", type=float, default=MUSICGEN_EXTEND_STRIDE,
                   help="seconds added per window beyond the model's window (default 18)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed: same seed, same output (default: a random one, recorded in the JSON)")
    p.add_argument("--mp3", action="store_true", help="also write an MP3 of each clip")
    p.add_argument("--midi", action="store_true", help="also write a MIDI transcription (basic-pitch)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default: outputs)")
    return p


def slug(text: str, limit: int = 48) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return text[:limit].rstrip("_") or "unconditional"


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    return GenerateOptions(model=args.model, prompts=list(args.prompt), genres=args.genres, bpm=args.bpm,
                           key=args.key, duration=args.duration, top_k=args.top_k, top_p=args.top_p,
                           temperature=args.temperature, cfg_coef=args.cfg_coef, seed=args.seed,
                           extend_stride=args.extend_stride, audio_prompt=args.audio_prompt,
                           prompt_seconds=args.prompt_seconds, melody=args.melody, out=args.out,
                           mp3=args.mp3, midi=args.midi, device=args.device)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from dataset_tools.audio_io import AudioDecodeError

    from .loading import ModelUnavailableError
    from .transcribe import TranscriptionUnavailable
    try:
        run(options_from_args(args))
    except (ModelUnavailableError, ValueError, AudioDecodeError, TranscriptionUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied on --out: a failure while working
        from .atomic import os_error_line
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _read_audio(flag: str, path: Path):
    """``[C, n]`` float32 tensor and its rate; ValueError naming the flag when unreadable."""
    import torch

    from dataset_tools.audio_io import AudioDecodeError, load_audio
    try:
        audio, rate = load_audio(path, mono=False)
    except AudioDecodeError as exc:
        raise ValueError(f"cannot read {flag} {path}: {exc}") from None
    return torch.from_numpy(audio), rate


def run(options: GenerateOptions, log: tp.Callable[[str], None] = print) -> list:
    """Load, generate one clip per prompt (one batch), write the files; returns ``OutputFiles`` list."""
    from .exports import export_info, is_export
    from .generation import generate, generate_continuation, generate_with_melody
    from .loading import load_model
    from .outputs import unique_stems, write_outputs
    from .prompting import build_prompts, unknown_genres

    # Read inputs before the (slow) model load, so a bad file fails at once.
    prompt_audio = _read_audio("--audio-prompt", options.audio_prompt) if options.audio_prompt else None
    melody = _read_audio("--melody", options.melody) if options.melody else None
    prompts = build_prompts(options.prompts, options.genres, bpm=options.bpm, key=options.key)

    started = time.time()
    model = load_model(options.model, device=options.device)
    log(f"model {options.model}: {model.sample_rate} Hz, {model.audio_channels} channel(s), "
        f"{model.max_duration:g} s window (loaded in {time.time() - started:.1f} s)")
    if is_export(options.model) and options.genres:
        known = export_info(options.model).genres
        missing = unknown_genres(options.genres, known) if known else []
        if missing:
            log(f"warning: genre(s) {', '.join(missing)} not in this fine-tune's training data "
                f"({', '.join(known)})")
    cfg = options.generation
    log(f"generating {len(prompts)} x {cfg.duration:g} s (seed {cfg.seed})")
    started = time.time()
    kept_prompt = None  # [C, P] at the model's rate: the part of the audio prompt used
    if prompt_audio is not None:
        from .generation import prepare_audio_prompt
        kept_prompt = prepare_audio_prompt(model, prompt_audio[0], prompt_audio[1], options.prompt_seconds)[0]
        log(f"continuing the last {kept_prompt.shape[-1] / model.sample_rate:.2f} s of {options.audio_prompt}")
        wavs = generate_continuation(model, kept_prompt, model.sample_rate, prompts, cfg, progress=True,
                                     max_prompt_seconds=options.prompt_seconds)
    elif melody is not None:
        wavs = generate_with_melody(model, melody[0], melody[1], prompts, cfg, progress=True)
    else:
        wavs = generate(model, prompts, cfg, progress=True)
    elapsed = time.time() - started
    log(f"generated in {elapsed:.1f} s ({len(prompts) * cfg.duration / max(elapsed, 1e-9):.2f} s of new audio "
        f"per second)")

    options.out.mkdir(parents=True, exist_ok=True)
    names = [options.prompts[i] if i < len(options.prompts) else "" for i in range(len(prompts))]
    names = [slug(n or " ".join(options.genres)) for n in names]
    stems = unique_stems(options.out, [f"{i:02d}_{n}_s{cfg.seed}" for i, n in enumerate(names)])
    written = []
    for i, (stem, prompt, wav) in enumerate(zip(stems, prompts, wavs)):
        params = _params(options, model, prompt, i, elapsed)
        params["audio_prompt_seconds_used"] = None if kept_prompt is None else \
            round(kept_prompt.shape[-1] / model.sample_rate, 6)
        files = write_outputs(stem, wav.numpy(), model.sample_rate, params, mp3=options.mp3, midi=options.midi,
                              prompt_audio=None if kept_prompt is None else kept_prompt.numpy(),
                              prompt_rate=model.sample_rate, title=prompt or "(no text)")
        log("wrote " + ", ".join(str(p) for p in files.paths()))
        written.append(files)
    return written


def _params(options: GenerateOptions, model, prompt: str, index: int, elapsed: float) -> dict:
    import audiocraft
    cfg = options.generation
    return {
        "model": str(options.model),
        "prompt": prompt,
        "user_prompt": options.prompts[index] if index < len(options.prompts) else "",
        "genres": options.genres, "bpm": options.bpm, "key": options.key,
        "batch_index": index, "batch_size": max(1, len(options.prompts)),
        **cfg.to_dict(),
        "audio_prompt": str(options.audio_prompt) if options.audio_prompt else None,
        "prompt_seconds": options.prompt_seconds,
        "melody": str(options.melody) if options.melody else None,
        "sample_rate": int(model.sample_rate), "channels": int(model.audio_channels),
        "model_window_seconds": float(model.max_duration),
        "generation_seconds": round(elapsed, 3), "audiocraft": audiocraft.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
