"""Music generation over audiocraft's ``MusicGen``: text, audio continuation, melody.

Three library functions, each one batch call into audiocraft (no extra model passes):

- ``generate(model, prompts, config)``: one clip per text prompt;
- ``generate_continuation(model, audio, rate, prompts, config)``: continue an audio prompt;
- ``generate_with_melody(model, melody, rate, prompts, config)``: melody-conditioned models.

All return float tensors ``[B, C, T]`` at ``model.sample_rate`` with exactly the requested
number of samples. Durations beyond the model's window (30 s for the released models) use
audiocraft's windowed continuation: each new window is conditioned on the last
``window - extend_stride`` seconds. The global RNG is left untouched; the same seed gives
the same output for the same request.

The language model's loop is ``fast_generate``'s by default (``decoder="fast"``: a static
key/value cache, cross-attention keys/values computed once, the same codes as audiocraft's
loop); ``decoder="audiocraft"`` runs audiocraft's own.

``progress`` is ``False``, ``True`` (a text bar on stderr) or a callable ``(done, total)``
called after each language-model step, ``total`` being all the steps of the request
(every window included).

``seeds`` (one per prompt) gives each row of a batch its own seed: row i is then (up to float rounding) what
the same call with ``[prompts[i]]`` and ``seed=seeds[i]`` alone gives, and one batch serves
several independent requests (the web app batches its queue this way). The fast decoder draws
each row from its own generator (``fast_decoding(generators=...)``); where it cannot (audiocraft's
loop, an LM it does not reproduce, melody conditioning whose chroma extraction draws Python's
RNG per call) the rows run one after the other, with the same results.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import typing as tp
from dataclasses import asdict, dataclass

import torch

from dataset_tools.cli import option


GENERATION_MAX_SECONDS = 600.0    # longest clip generated in one request (windowed beyond the model's window)
EXTEND_STRIDE = 18.0              # audiocraft's default stride for generation beyond the window
MUSICGEN_CFG_COEF = 3.0           # the released models' guidance (their inference_coef): a page's starting value
CFG_COEF_RANGE = (0.0, 100.0)     # the guidance coefficients accepted (a request's cfg_coef, a model's own)

DECODERS = ("fast", "audiocraft")

ProgressFn = tp.Callable[[int, int], None]
Progress = tp.Union[bool, ProgressFn, None]


@dataclass
class GenerationConfig:
    """Sampling settings (audiocraft's defaults: top-k 250, CFG coefficient 3). Each field is
    also generate.py's flag of the same name and the web page's control of the same meaning.

    ``duration`` is the length of new audio in seconds (after the audio prompt, if any).
    """
    duration: float = option(8.0, "seconds of new audio per prompt; beyond the model's window (30 s) by "
                             "windowed continuation", metavar="S")
    top_k: int = option(250, "sample from the k most likely codes (0: off)")
    top_p: float = option(0.0, "nucleus sampling threshold; 0 uses top-k")
    temperature: float = option(1.0, "softmax temperature")
    cfg_coef: tp.Optional[float] = option(None, "classifier-free guidance strength (default: the model's own: 3 for "
                                          "MusicGen, a transformers folder's guidance_scale)")
    seed: tp.Optional[int] = option(0, "random seed: same seed, same output; with several prompts clip i gets "
                                    "seed + i, as its prompt alone with that seed (generate.py and the page: a "
                                    "random one unless given, recorded in the JSON)")
    extend_stride: float = option(EXTEND_STRIDE, "seconds added per window beyond the model's window", metavar="S")
    use_sampling: bool = option(True, "sample (off: always the most likely code)")
    decoder: str = option("fast", "language-model decoding loop: fast (static key/value cache, both guidance "
                          "halves in one batch: the same codes as audiocraft's loop, sooner) or audiocraft "
                          "(its own loop, for comparison)", choices=DECODERS)

    def __post_init__(self):
        if not isinstance(self.duration, (int, float)) or not math.isfinite(self.duration) \
                or not 0 < self.duration <= GENERATION_MAX_SECONDS:
            raise ValueError(f"duration must be more than 0 and at most {GENERATION_MAX_SECONDS:g} "
                             f"seconds, got {self.duration}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 or more (0 disables top-k), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be between 0 and 1 (0 disables it), got {self.top_p}")
        if self.top_k == 0 and self.top_p == 0 and self.use_sampling:
            raise ValueError("set top_k or top_p above 0 (both 0 would sample from nothing)")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be more than 0, got {self.temperature}")
        if self.cfg_coef is not None and not (math.isfinite(self.cfg_coef) and
                                              CFG_COEF_RANGE[0] <= self.cfg_coef <= CFG_COEF_RANGE[1]):
            raise ValueError(f"cfg_coef must be between 0 and 100, got {self.cfg_coef}")
        if not (math.isfinite(self.extend_stride) and self.extend_stride > 0):
            raise ValueError(f"extend_stride must be more than 0 seconds, got {self.extend_stride}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.seed is not None and not 0 <= int(self.seed) < 2 ** 63:
            raise ValueError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)


def generate(model, prompts: tp.Sequence[str], config: tp.Optional[GenerationConfig] = None,
             progress: Progress = False, return_tokens: bool = False,
             seeds: tp.Optional[tp.Sequence[int]] = None):
    """Generate one clip per text prompt, as one batch.

    Args:
        model: an ``audiocraft.models.MusicGen`` (see ``models.load_model``).
        prompts: B text descriptions ("" generates without text).
        return_tokens: also return the generated codes (the evaluation's loop and memorisation
            checks read them).
        seeds: None (the whole batch from ``config.seed``) or B seeds: row i is then what
            ``generate(model, [prompts[i]], config with seed=seeds[i])`` gives (``config.seed`` unused).
    Returns:
        float tensor ``[B, C, T]`` on the CPU, T = round(duration * sample_rate); with
        ``return_tokens``, ``(wav, tokens)``, tokens ``[B, K, F]`` int64 on the CPU, F the frames
        covering the duration.
    """
    config = config or GenerationConfig()
    prompts = _check_prompts(prompts)
    seeds = _check_seeds(seeds, len(prompts))
    if seeds is not None and not per_row_seeding(model, config):
        rows = _row_by_row(lambda i, cfg, prog: generate(model, [prompts[i]], cfg, prog, return_tokens),
                           config, seeds, progress)
        if return_tokens:
            return torch.cat([w for w, _ in rows]), torch.cat([t for _, t in rows])
        return torch.cat(rows)
    frames = _frames(config.duration, model)
    _configure(model, config, total_frames=frames)
    out = _run(model, config, progress, frames, 0,
               lambda: model.generate(prompts, progress=True, return_tokens=return_tokens), seeds)
    if return_tokens:
        wav, tokens = out
        return _trim(wav, round(config.duration * model.sample_rate)), tokens[..., :frames].long().cpu()
    return _trim(out, round(config.duration * model.sample_rate))


def generate_continuation(model, audio: tp.Union[torch.Tensor, tp.Sequence[torch.Tensor]], sample_rate: int,
                          prompts: tp.Sequence[str], config: tp.Optional[GenerationConfig] = None,
                          progress: Progress = False, max_prompt_seconds: tp.Optional[float] = None,
                          seeds: tp.Optional[tp.Sequence[int]] = None) -> torch.Tensor:
    """Continue an audio prompt, once per text prompt: the same audio for all of them, or one each.

    The audio is converted to the model's rate and channel count (mono for mono models),
    only its last ``max_prompt_seconds`` are kept (default: half the model's window, so each
    window generates new music), and it is trimmed at the start to whole codec frames.

    Args:
        audio: ``[T]``, ``[C, T]`` or ``[1, C, T]`` float samples at ``sample_rate``; or a list of B
            such signals, row i continuing ``audio[i]`` (their kept parts must be as many codec frames:
            prompts at least ``max_prompt_seconds`` long always are).
        prompts: B text descriptions.
        seeds: None or B seeds, one per row (as ``generate``'s).
    Returns:
        ``[B, C, P + N]`` on the CPU: the prompt as the codec reproduces it (P samples, the
        kept prompt at the model's rate) followed by N = round(duration * sample_rate) new samples.
    Raises:
        ValueError: one audio per row of different kept lengths (one line naming them).
    """
    config = config or GenerationConfig()
    prompts = _check_prompts(prompts)
    seeds = _check_seeds(seeds, len(prompts))
    per_row = isinstance(audio, (list, tuple))
    if per_row and len(audio) != len(prompts):
        raise ValueError(f"give one audio prompt per text prompt: {len(prompts)} prompts, {len(audio)} audio prompts")
    if per_row:  # (checked first: rows one by one would give clips of different lengths too)
        kept = [prepare_audio_prompt(model, a, sample_rate, max_prompt_seconds) for a in audio]
        lengths = sorted({k.shape[-1] for k in kept})
        if len(lengths) > 1:
            seconds = ", ".join(f"{n / model.sample_rate:.2f} s" for n in lengths)
            raise ValueError(f"the audio prompts of one batch must keep the same length, got {seconds}: generate "
                             f"them apart")
    if seeds is not None and not per_row_seeding(model, config):
        return torch.cat(_row_by_row(lambda i, cfg, prog: generate_continuation(
            model, audio[i] if per_row else audio, sample_rate, [prompts[i]], cfg, prog, max_prompt_seconds),
            config, seeds, progress))
    if per_row:
        batch = torch.cat(kept).to(model.device)
    else:
        batch = prepare_audio_prompt(model, audio, sample_rate, max_prompt_seconds)
        batch = batch.expand(len(prompts), -1, -1).to(model.device)
    prompt_samples = batch.shape[-1]
    prompt_frames = prompt_samples // _hop(model)
    new_frames = _frames(config.duration, model)
    _configure(model, config, total_frames=prompt_frames + new_frames)
    wav = _run(model, config, progress, prompt_frames + new_frames, prompt_frames,
               lambda: model.generate_continuation(batch, model.sample_rate, prompts, progress=True), seeds)
    return _trim(wav, prompt_samples + round(config.duration * model.sample_rate))


def generate_with_melody(model, melody: torch.Tensor, sample_rate: int, prompts: tp.Sequence[str],
                         config: tp.Optional[GenerationConfig] = None, progress: Progress = False,
                         seeds: tp.Optional[tp.Sequence[int]] = None) -> torch.Tensor:
    """Generate following ``melody``'s chroma (models with a ``self_wav`` conditioner only).

    Args:
        melody: ``[T]``, ``[C, T]`` or ``[1, C, T]`` samples at ``sample_rate`` (used for every prompt;
            repeated when shorter than the output).
        seeds: None or B seeds, one per row (as ``generate``'s; the rows then run one after the other:
            the chroma extraction draws Python's RNG once per call, so a batch would not be exact).
    Returns:
        ``[B, C, T]`` on the CPU, T = round(duration * sample_rate).
    Raises:
        ValueError: the model has no melody conditioning.
    """
    if not has_melody_conditioning(model):
        raise ValueError(f"model {model.name} has no melody conditioning (use a melody model such "
                         f"as facebook/musicgen-melody, or drop the melody)")
    config = config or GenerationConfig()
    prompts = _check_prompts(prompts)
    seeds = _check_seeds(seeds, len(prompts))
    if seeds is not None:
        return torch.cat(_row_by_row(lambda i, cfg, prog: generate_with_melody(
            model, melody, sample_rate, [prompts[i]], cfg, prog), config, seeds, progress))
    melody = _as_batch(melody)[0].float()
    frames = _frames(config.duration, model)
    _configure(model, config, total_frames=frames)
    melodies = [melody.to(model.device)] * len(prompts)
    wav = _run(model, config, progress, frames, 0,
               lambda: model.generate_with_chroma(prompts, melodies, sample_rate, progress=True))
    return _trim(wav, round(config.duration * model.sample_rate))


def clip_seeds(seed: int, rows: int) -> tp.List[int]:
    """The seed of each clip of a request seeded ``seed`` (0 <= seed < 2**63, else ValueError): clip i gets
    ``seed + i``, wrapping to 0 past 2**63 - 1. Every path that generates several clips per request
    (generate.py, training samples, the evaluation report) passes these as ``seeds=``, so clip i is what
    its prompt gives alone with ``seed + i``, whatever else shares its batch, and a prompt given twice
    gives two different clips."""
    if not 0 <= int(seed) < 2 ** 63:
        raise ValueError(f"seed must be between 0 and 2**63 - 1, got {seed}")
    return [(int(seed) + i) % 2 ** 63 for i in range(int(rows))]


def per_row_seeding(model, config: GenerationConfig) -> bool:
    """Whether one batch can give each row its own seed exactly (``seeds=``): the fast decoder on an
    LM it reproduces, with guidance in one pass. Otherwise ``seeds`` runs the rows one by one."""
    if config.decoder != "fast":
        return False
    from .fast_decode import unsupported_reason
    return unsupported_reason(model.lm) is None and not getattr(model.lm, "two_step_cfg", False)


def has_melody_conditioning(model) -> bool:
    """True when the model has audiocraft's chroma (melody) conditioner."""
    return "self_wav" in model.lm.condition_provider.conditioners


def prepare_audio_prompt(model, audio: torch.Tensor, sample_rate: int,
                         max_prompt_seconds: tp.Optional[float] = None) -> torch.Tensor:
    """``audio`` as a ``[1, C, P]`` prompt: model rate and channels, at most ``max_prompt_seconds``
    (its end is kept), P a whole number of codec frames (at least one)."""
    from audiocraft.data.audio_utils import convert_audio

    if sample_rate <= 0:
        raise ValueError(f"the audio prompt's sample rate must be positive, got {sample_rate}")
    audio = _as_batch(audio).float().cpu()
    limit = model.max_duration / 2 if max_prompt_seconds is None else float(max_prompt_seconds)
    if not 0 < limit < model.max_duration:
        raise ValueError(f"the audio prompt limit must be between 0 and the model's "
                         f"{model.max_duration:g} s window, got {limit:g} s")
    # Cut before resampling (1 s of margin for the resampler's edge), then exactly after.
    keep_in = int(math.ceil((limit + 1.0) * sample_rate))
    audio = convert_audio(audio[..., -keep_in:], sample_rate, model.sample_rate, model.audio_channels)
    hop = _hop(model)
    frames = min(audio.shape[-1] // hop, int(limit * model.frame_rate + 1e-6))
    if frames < 1:
        raise ValueError(f"the audio prompt is too short: at least {hop / model.sample_rate * 1000:.0f} ms needed")
    return audio[..., audio.shape[-1] - frames * hop:].contiguous()


# --- internals ---------------------------------------------------------------------

def _check_prompts(prompts: tp.Sequence[str]) -> tp.List[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("give at least one prompt (an empty string generates without text)")
    return prompts


def _check_seeds(seeds: tp.Optional[tp.Sequence[int]], rows: int) -> tp.Optional[tp.List[int]]:
    if seeds is None:
        return None
    seeds = [int(s) for s in seeds]
    if len(seeds) != rows:
        raise ValueError(f"give one seed per prompt: {rows} prompts, {len(seeds)} seeds")
    for s in seeds:
        if not 0 <= s < 2 ** 63:
            raise ValueError(f"seed must be between 0 and 2**63 - 1, got {s}")
    return seeds


def _row_by_row(run_one: tp.Callable[[int, GenerationConfig, Progress], tp.Any], config: GenerationConfig,
                seeds: tp.List[int], progress: Progress) -> list:
    """``run_one(i, config with seed=seeds[i], progress)`` for each row, one progress over them all."""
    rows = len(seeds)
    bar: tp.Dict[str, tp.Any] = {}

    def row_progress(i: int) -> Progress:
        if not progress:
            return False

        def step(done: int, total: int) -> None:
            if "report" not in bar:  # every row plans the same steps: the total is known at the first one
                bar["report"], bar["close"] = _progress_reporter(progress, total * rows)
            bar["report"](i * total + done)
        return step
    try:
        return [run_one(i, dataclasses.replace(config, seed=seed), row_progress(i)) for i, seed in enumerate(seeds)]
    finally:
        bar.get("close", lambda: None)()


def _as_batch(audio: torch.Tensor) -> torch.Tensor:
    audio = torch.as_tensor(audio)
    if audio.dim() == 1:
        audio = audio[None]
    if audio.dim() == 2:
        audio = audio[None]
    if audio.dim() != 3 or audio.shape[0] != 1:
        raise ValueError(f"expected one audio signal [T], [C, T] or [1, C, T], got shape {tuple(audio.shape)}")
    if audio.shape[-1] == 0:
        raise ValueError("the audio is empty")
    return audio


def _hop(model) -> int:
    return int(round(model.sample_rate / model.frame_rate))


def _frames(seconds: float, model) -> int:
    """Whole codec frames covering ``seconds`` (at least one)."""
    return max(1, math.ceil(seconds * model.frame_rate - 1e-9))


def _stride(config: GenerationConfig, model) -> float:
    """extend_stride as a whole number of frames (at least one), below the window."""
    frames = int(min(config.extend_stride, model.max_duration / 2) * model.frame_rate + 1e-6)
    return (max(1, frames) + 0.5) / model.frame_rate


def _configure(model, config: GenerationConfig, total_frames: int) -> None:
    card = int(model.lm.card)
    if config.top_k > card:
        raise ValueError(f"top_k must be at most {card} (the model's codebook size), got {config.top_k}")
    # audiocraft generates int(duration * frame_rate) frames: half a frame more guards the float
    # round-down, and callers trim to the exact sample count.
    model.set_generation_params(use_sampling=config.use_sampling, top_k=config.top_k,
                                top_p=config.top_p, temperature=config.temperature,
                                duration=(total_frames + 0.5) / model.frame_rate,
                                cfg_coef=guidance_coef(model, config), extend_stride=_stride(config, model))


def guidance_coef(model, config: GenerationConfig) -> float:
    """The classifier-free guidance coefficient of a request: ``config.cfg_coef`` when given, else
    the model's own (``lm.cfg_coef``, from its config's ``classifier_free_guidance.inference_coef``:
    3 for the released models, a converted transformers folder's ``guidance_scale``). The model's
    own comes with a downloaded folder: outside ``CFG_COEF_RANGE`` (or not a number) it is a
    ValueError (one line) naming ``cfg_coef``, never a crash mid-generation or a ruined output."""
    if config.cfg_coef is not None:
        return float(config.cfg_coef)
    value = getattr(model.lm, "cfg_coef", None)
    low, high = CFG_COEF_RANGE
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"the model's own guidance coefficient {str(value)[:40]!r} is not a number from {low:g} to "
                         f"{high:g}: give cfg_coef (e.g. 3)")
    return number


def planned_steps(model, total_frames: int, prompt_frames: int = 0) -> int:
    """Language-model steps audiocraft runs for a request (its windowed loop, replayed)."""
    fr = model.frame_rate
    duration, window = model.duration, model.max_duration
    stride = int(fr * model.extend_stride)
    chunks = []  # (max_gen_len, prompt length) per window
    if duration <= window:
        chunks.append((int(duration * fr), prompt_frames))
    else:
        offset, prompt = 0, prompt_frames
        while offset + prompt < total_frames:
            gen_len = int(min(duration - offset / fr, window) * fr)
            chunks.append((gen_len, prompt))
            prompt, offset = gen_len - stride, offset + stride
    steps = 0
    for gen_len, prompt in chunks:
        pattern = model.lm.pattern_provider.get_pattern(gen_len)
        steps += len(pattern.layout) - pattern.get_first_step_with_timesteps(prompt)
    return steps


def _run(model, config: GenerationConfig, progress: Progress, total_frames: int, prompt_frames: int,
         call: tp.Callable[[], torch.Tensor], seeds: tp.Optional[tp.List[int]] = None) -> torch.Tensor:
    """Seed, wire progress reporting, call audiocraft; the global RNG is restored afterwards.

    With ``seeds`` (one per row), each row samples from its own generator seeded with its seed."""
    report, close = _progress_reporter(progress, planned_steps(model, total_frames, prompt_frames))
    done = [0]

    def on_step(_generated: int, _to_generate: int) -> None:
        done[0] += 1
        report(done[0])

    model.set_custom_progress_callback(on_step)
    # Melody models separate the melody with demucs, which shifts it by a random.randint offset:
    # Python's RNG is seeded too (and restored), or the same seed would not give the same output.
    python_rng = random.getstate()
    seed = config.seed if seeds is None else seeds[0]
    generators = None if seeds is None else [torch.Generator(device=model.device).manual_seed(s) for s in seeds]
    try:
        with torch.random.fork_rng(devices=_cuda_devices()):
            if seed is not None:
                torch.manual_seed(int(seed))
                random.seed(int(seed))
            with torch.no_grad(), _decoding(model, config, generators):
                return call()
    finally:
        random.setstate(python_rng)
        model.set_custom_progress_callback(None)
        close()


def _decoding(model, config: GenerationConfig, generators: tp.Optional[tp.List[torch.Generator]] = None):
    """The LM loop for ``config.decoder``: ``fast_generate.fast_decoding`` (which itself keeps
    audiocraft's loop for models it does not reproduce), or audiocraft's own. ``generators``
    (one per row) only with the fast decoder (callers check ``per_row_seeding`` first)."""
    if config.decoder == "audiocraft":
        if generators is not None:
            raise ValueError("per-row seeds need the fast decoder")
        return contextlib.nullcontext()
    from .fast_generate import fast_decoding
    if generators is None:
        return fast_decoding(model)
    return fast_decoding(model, generators=generators)


def _progress_reporter(progress: Progress, total: int) -> tp.Tuple[tp.Callable[[int], None], tp.Callable[[], None]]:
    if callable(progress):
        return (lambda done: progress(min(done, total), total)), (lambda: None)
    if not progress:
        return (lambda done: None), (lambda: None)
    from tqdm import tqdm
    bar = tqdm(total=total, desc="generating", unit="step", file=sys.stderr, leave=False,
               dynamic_ncols=True, mininterval=0.5)

    def update(done: int) -> None:
        bar.update(min(done, total) - bar.n)
    return update, bar.close


def _trim(wav: torch.Tensor, samples: int) -> torch.Tensor:
    if wav.shape[-1] < samples:  # never expected: audiocraft returned fewer frames than asked
        raise RuntimeError(f"the model returned {wav.shape[-1]} samples, {samples} were requested")
    return wav[..., :samples].float().cpu()


def _cuda_devices() -> list:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
