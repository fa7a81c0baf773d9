"""generate.py: prompt a pretrained, tiny or fine-tuned MusicGen from the command line.

One output per --prompt, generated as one batch; output i is seeded --seed + i, and is what its
prompt gives alone with that seed. For each: WAV (+ MP3 with --mp3), a mel spectrogram PNG, a JSON
of the exact parameters (its own seed included), and a MIDI transcription with --midi.

Examples:
  python generate.py --model checkpoints/my-run/export --genres jazz --prompt "piano trio" --duration 10 --midi
  python generate.py --model facebook/musicgen-small --prompt "lo-fi hip hop" --prompt "epic orchestra" --seed 1
  python generate.py --model checkpoints/my-run/export --audio-prompt riff.wav --genres rock,blues --duration 20
  python generate.py --model facebook/musicgen-small --lora checkpoints/my-lora-run/adapter --prompt "jazz"
  python generate.py --model facebook/musicgen-melody --melody hum.wav --prompt "string quartet"
"""
from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from dataset_tools.cli import add_dataclass_options, add_debug_flag, dataclass_from_args, option

from .generation import GenerationConfig

GENERATION_MAX_BATCH = 64         # prompts in one generate.py call


@dataclass
class GenerateOptions:
    """One generate.py request, validated on construction (ValueError with a readable reason).
    Each field is the flag of the same name; the sampling settings are ``generation``'s."""
    model: str = option("facebook/musicgen-small", "hub name (facebook/musicgen-small...), 'tiny' (or "
                        "tiny-melody, tiny-stereo), or an export folder from train.py")
    lora: tp.Optional[Path] = option(None, "LoRA adapter folder (a --lora run's OUT/adapter) to apply to --model, "
                                     "which must be the base it was trained on", metavar="DIR")
    prompts: tp.List[str] = option(help="text prompt; repeat the flag for several (one output each, generated "
                                   "as a batch)", aliases=("--prompt",), repeat=True, metavar="TEXT",
                                   default_factory=list)
    genres: tp.List[str] = option(help="genres, e.g. jazz,rock: turned into a caption the way the dataset tools "
                                  "write them, before each prompt", metavar="GENRE", default_factory=list)
    bpm: tp.Optional[float] = option(None, "tempo words for the caption (e.g. 90)")
    key: tp.Optional[str] = option(None, "key words for the caption (e.g. 'A minor')")
    audio_prompt: tp.Optional[Path] = option(None, "audio file to continue (its last --prompt-seconds are used)",
                                             metavar="FILE")
    prompt_seconds: tp.Optional[float] = option(None, "how much of the audio prompt's end to use (default: half "
                                                "the model's window)", metavar="S")
    melody: tp.Optional[Path] = option(None, "audio whose melody to follow (melody models such as "
                                       "facebook/musicgen-melody)", metavar="FILE")
    out: Path = option(Path("outputs"), "output folder", metavar="DIR")
    mp3: bool = option(False, "also write an MP3 of each clip")
    midi: bool = option(False, "also write a MIDI transcription (basic-pitch)")
    device: tp.Optional[str] = option(None, "cpu or cuda (default: cuda when available)")
    # Sampling: every GenerationConfig field is a flag too; seed None means a random one.
    generation: GenerationConfig = dataclasses.field(default_factory=lambda: GenerationConfig(seed=None))

    def __post_init__(self):
        from .outputs import parse_genres
        self.genres = parse_genres(self.genres)
        self.out = Path(self.out)
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
        if self.generation.seed is None:  # a random seed, recorded in the JSON
            self.generation = dataclasses.replace(self.generation, seed=secrets.randbelow(2 ** 31))


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``GenerateOptions`` field, then one per ``GenerationConfig`` field (sampling)."""
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_options(p, GenerateOptions, exclude=("generation",))
    add_dataclass_options(p.add_argument_group("sampling"), GenerationConfig,
                          defaults={"seed": None})  # no --seed: a random one, recorded in the JSON
    add_debug_flag(p)
    return p


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    return dataclass_from_args(GenerateOptions, args, generation=dataclass_from_args(GenerationConfig, args))


def main(argv=None) -> int:
    """Exit status: 0 done, 2 bad input, 1 failed while working (e.g. disk full), 130 interrupted."""
    from dataset_tools.audio_io import AudioDecodeError
    from dataset_tools.cli import run_command

    from .media import TranscriptionUnavailable
    from .models import ModelUnavailableError
    args = build_parser().parse_args(argv)

    def command() -> int:
        run(options_from_args(args))
        return 0

    return run_command(command, input_errors=(ModelUnavailableError, AudioDecodeError, TranscriptionUnavailable),
                       debug=args.debug)


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
    from .models import load_model
    from .outputs import ClipRequest, generate_to_files, slug, unique_stems, unknown_genres

    # Read inputs before the (slow) model load, so a bad file fails at once.
    prompt_audio = _read_audio("--audio-prompt", options.audio_prompt) if options.audio_prompt else None
    melody = _read_audio("--melody", options.melody) if options.melody else None
    request = ClipRequest(model_name=str(options.model), user_prompts=list(options.prompts),
                          generation=options.generation, genres=options.genres, bpm=options.bpm, key=options.key,
                          lora_adapter=str(options.lora) if options.lora else None,
                          prompt_audio=prompt_audio, prompt_seconds=options.prompt_seconds, melody=melody,
                          prompt_audio_name=str(options.audio_prompt) if options.audio_prompt else None,
                          melody_name=str(options.melody) if options.melody else None,
                          mp3=options.mp3, midi=options.midi)
    prompts = request.prompts

    started = time.time()
    if options.lora:  # the adapter merged into the base at load time (lora.py)
        from .lora import load_with_adapter
        model = load_with_adapter(options.model, options.lora, device=options.device)
    else:
        model = load_model(options.model, device=options.device)
    adapter = f" + LoRA adapter {options.lora}" if options.lora else ""
    log(f"model {options.model}{adapter}: {model.sample_rate} Hz, {model.audio_channels} channel(s), "
        f"{model.max_duration:g} s window (loaded in {time.time() - started:.1f} s)")
    if is_export(options.model) and options.genres:
        known = export_info(options.model).genres
        missing = unknown_genres(options.genres, known) if known else []
        if missing:
            log(f"warning: genre(s) {', '.join(missing)} not in this fine-tune's training data "
                f"({', '.join(known)})")
    cfg, seeds = options.generation, request.seeds
    seed_words = f"seed {cfg.seed}" if len(prompts) == 1 else f"seed {cfg.seed} + i for clip i"
    if seeds[-1] < seeds[0]:  # clip_seeds wrapped: the file names' _s<seed> restart at 0
        seed_words += ", wrapping to 0 past 2**63 - 1"
    log(f"generating {len(prompts)} x {cfg.duration:g} s ({seed_words})")
    options.out.mkdir(parents=True, exist_ok=True)
    names = [options.prompts[i] if i < len(options.prompts) else "" for i in range(len(prompts))]
    names = [slug(n or " ".join(options.genres)) for n in names]
    stems = unique_stems(options.out, [f"{i:02d}_{n}_s{seed}" for i, (n, seed) in enumerate(zip(names, seeds))])
    result = generate_to_files(model, request, stems, progress=True)
    elapsed = result.generation_seconds
    if result.prompt_seconds_used is not None:
        log(f"continued the last {result.prompt_seconds_used:.2f} s of {options.audio_prompt}")
    log(f"generated in {elapsed:.1f} s ({len(prompts) * cfg.duration / max(elapsed, 1e-9):.2f} s of new audio "
        f"per second)")
    for files in result.files:
        log("wrote " + ", ".join(str(p) for p in files.paths()))
    return result.files


if __name__ == "__main__":
    sys.exit(main())
