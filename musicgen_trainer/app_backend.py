"""What the web app does, without the page: model list, model cache, request checks, one job.

Kept free of Gradio so it can be tested and reused directly. ``app.py`` lays out the page
and turns the errors raised here (``ValueError`` & co., all one-line messages) into
messages shown in the page.
"""
from __future__ import annotations

import math
import os
import secrets
import shutil
import threading
import time
import typing as tp
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .constants import (APP_MAX_PROMPT_AUDIO_SECONDS, APP_MAX_PROMPT_CHARS, APP_MAX_SECONDS,
                        APP_MODEL_CACHE, MUSICGEN_CARD, MUSICGEN_MAX_SECONDS)

BASE_GENRES = ("rock", "pop", "jazz", "blues", "classical", "electronic", "hip hop", "ambient",
               "folk", "metal", "funk", "reggae", "country", "lo-fi")
KEEP_RESULTS = 200  # result folders kept under the app's output folder (oldest removed first)


@dataclass
class ModelChoice:
    label: str    # shown in the dropdown
    value: str    # what load_model receives
    genres: tp.List[str] = field(default_factory=list)  # training genres of a fine-tune, else []
    window: float = MUSICGEN_MAX_SECONDS
    examples: tp.List[str] = field(default_factory=list)
    export: bool = False  # an export folder (a fine-tune), not a built-in name


def list_models(checkpoints: tp.Union[str, os.PathLike, None], pretrained: tp.Sequence[str]) -> tp.List[ModelChoice]:
    """Every export under ``checkpoints`` first (newest names last), then ``tiny`` and ``pretrained``."""
    from .exports import export_info, find_exports
    choices = []
    if checkpoints:
        root = Path(checkpoints)
        for folder in find_exports(root):
            info = export_info(folder)
            rel = folder.relative_to(root).as_posix()
            label = f"fine-tune: {rel}" + (f" ({', '.join(info.genres)})" if info.genres else "")
            choices.append(ModelChoice(label, str(folder), info.genres, info.max_duration, info.caption_examples,
                                       export=True))
    choices.append(ModelChoice("tiny (random weights, for testing)", "tiny"))
    choices += [ModelChoice(name, name) for name in pretrained]
    return choices


class ModelCache:
    """Loaded models by name, the ``capacity`` most recently used kept (thread-safe).

    Loading is the slow part of a request (seconds to minutes); a cached model is reused
    as is, so a request costs its generation only.
    """

    def __init__(self, capacity: int = APP_MODEL_CACHE, device: tp.Optional[str] = None,
                 loader: tp.Optional[tp.Callable] = None):
        from .loading import load_model
        self.capacity = max(1, int(capacity))
        self.device = device
        self._load = loader or load_model
        self._models: "OrderedDict[str, tp.Any]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str):
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            while len(self._models) >= self.capacity:  # free memory before loading the next one
                self._models.popitem(last=False)
                _free_accelerator_memory()
            model = self._load(name, device=self.device)
            self._models[name] = model
            return model

    def __contains__(self, name: str) -> bool:
        return name in self._models


def _free_accelerator_memory() -> None:
    import gc
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


@dataclass
class AppRequest:
    """One request from the page, validated on construction (ValueError with the reason)."""
    model: str
    allowed_models: tp.Sequence[str]
    prompt: str = ""
    genres: tp.Sequence[str] = ()
    duration: float = 8.0
    max_duration: float = APP_MAX_SECONDS
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: tp.Optional[int] = None          # None or negative: a random seed
    audio_prompt: tp.Optional[str] = None  # an uploaded file's path
    upload_roots: tp.Sequence[str] = ()    # audio_prompt must lie under one of these
    midi: bool = True

    def __post_init__(self):
        from .generation import GenerationConfig
        if self.model not in self.allowed_models:
            raise ValueError("choose a model from the list")
        self.prompt = " ".join(str(self.prompt or "").split())
        if len(self.prompt) > APP_MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is {len(self.prompt)} characters long; the limit is {APP_MAX_PROMPT_CHARS}")
        self.genres = [str(g) for g in (self.genres or [])][:16]
        if self.duration is None or not math.isfinite(float(self.duration)) \
                or not 0 < float(self.duration) <= self.max_duration:
            raise ValueError(f"duration must be more than 0 and at most {self.max_duration:g} seconds")
        if self.seed is None or int(self.seed) < 0:
            self.seed = secrets.randbelow(2 ** 31)
        self.generation = GenerationConfig(duration=float(self.duration), top_k=int(self.top_k),
                                           top_p=float(self.top_p), temperature=float(self.temperature),
                                           cfg_coef=float(self.cfg_coef), seed=int(self.seed))
        if self.generation.top_k > MUSICGEN_CARD:
            raise ValueError(f"top-k must be at most {MUSICGEN_CARD}")
        if self.audio_prompt:
            path = Path(self.audio_prompt).resolve()
            roots = [Path(r).resolve() for r in self.upload_roots]
            if not any(path.is_relative_to(r) for r in roots):
                raise ValueError("the audio prompt must be a file uploaded through this page")
            if not path.is_file():
                raise ValueError("the uploaded audio prompt is gone; upload it again")
            self.audio_prompt = str(path)


@dataclass
class AppResult:
    wav: Path
    png: Path
    json: Path
    midi: tp.Optional[Path]
    summary: str


def run_request(request: AppRequest, cache: ModelCache, out_root: Path,
                progress: tp.Optional[tp.Callable[[str, int, int], None]] = None) -> AppResult:
    """Load (or reuse) the model, generate one clip, write its files under ``out_root``.

    ``progress(stage, done, total)`` is called while loading and generating.
    """
    import torch

    from dataset_tools.audio_io import AudioDecodeError, load_audio

    from .generation import generate, generate_continuation, prepare_audio_prompt
    from .outputs import write_outputs
    from .prompting import build_prompts

    report = progress or (lambda stage, done, total: None)
    prompt_audio = None
    if request.audio_prompt:
        try:
            audio, rate = load_audio(request.audio_prompt, mono=False)
        except AudioDecodeError as exc:
            raise ValueError(f"cannot read the audio prompt: {exc}") from None
        if audio.shape[-1] / rate > APP_MAX_PROMPT_AUDIO_SECONDS:
            raise ValueError(f"the audio prompt is longer than {APP_MAX_PROMPT_AUDIO_SECONDS / 60:g} minutes")
        prompt_audio = (torch.from_numpy(audio), rate)
    text = build_prompts([request.prompt] if request.prompt else [], request.genres)[0]

    report("loading model", 0, 1)
    model = cache.get(request.model)
    cfg = request.generation
    started = time.time()
    step = lambda done, total: report("generating", done, total)  # noqa: E731
    kept = None
    if prompt_audio is not None:
        kept = prepare_audio_prompt(model, *prompt_audio)[0]
        wav = generate_continuation(model, kept, model.sample_rate, [text], cfg, progress=step)[0]
    else:
        wav = generate(model, [text], cfg, progress=step)[0]
    elapsed = time.time() - started

    report("writing files", 0, 1)
    folder = _new_result_folder(Path(out_root))
    params = {"model": request.model, "prompt": text, "user_prompt": request.prompt,
              "genres": list(request.genres), **cfg.to_dict(),
              "audio_prompt_seconds_used": None if kept is None else round(kept.shape[-1] / model.sample_rate, 6),
              "sample_rate": int(model.sample_rate), "generation_seconds": round(elapsed, 3)}
    files = write_outputs(folder / f"musicgen_s{cfg.seed}", wav.numpy(), model.sample_rate, params,
                          midi=request.midi, prompt_audio=None if kept is None else kept.numpy(),
                          prompt_rate=model.sample_rate, title=text or "(no text)")
    seconds = wav.shape[-1] / model.sample_rate
    summary = (f"{seconds:.2f} s of audio in {elapsed:.1f} s · seed {cfg.seed} · "
               f"prompt: {text or '(none)'}")
    if kept is not None:
        summary += f" · continues {kept.shape[-1] / model.sample_rate:.2f} s of your audio"
    return AppResult(wav=files.wav, png=files.png, json=files.json, midi=files.midi, summary=summary)


def _new_result_folder(out_root: Path) -> Path:
    """A fresh folder per result; only the newest ``KEEP_RESULTS`` are kept."""
    out_root.mkdir(parents=True, exist_ok=True)
    folder = out_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    folder.mkdir()
    old = sorted((p for p in out_root.iterdir() if p.is_dir()), key=lambda p: p.name)[:-KEEP_RESULTS]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return folder
