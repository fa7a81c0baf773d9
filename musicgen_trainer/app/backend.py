"""What the web app does, without the page: model and adapter lists, model cache, request checks, one job.

Kept free of Gradio so it can be tested and reused directly. ``page.py`` lays out the page
and turns the errors raised here (``ValueError`` & co., all one-line messages) into
messages shown in the page.
"""
from __future__ import annotations

import dataclasses
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

from ..generation import MUSICGEN_CFG_COEF, GenerationConfig
from ..runtime import MUSICGEN_CARD, MUSICGEN_MAX_SECONDS
from .adapters import NO_ADAPTER, AdapterChoice, check_adapter_base, list_adapters, load_with_adapter  # noqa: F401

# What one request may ask of the server.
APP_MAX_SECONDS = 60.0            # longest clip the web app makes
APP_MAX_PROMPT_CHARS = 500        # longest text prompt the web app accepts
APP_MAX_UPLOAD_MB = 25            # largest audio-prompt upload the web app accepts
APP_MAX_PROMPT_AUDIO_SECONDS = 600.0  # longest audio-prompt upload decoded (its end is used)
APP_MODEL_CACHE = 2               # loaded models kept in memory by the web app (least recently used go)
APP_MAX_BATCH = 4                 # waiting requests of the same model and settings generated as one batch
APP_BATCH_LIMIT = 16              # the most --batch may be (a batch's memory grows with it)

# Held while a request loads its model and generates: the GPU (or CPU) serves one request or one
# batch at a time, whichever tab (Generate's batcher, Compare) asks. Reentrant: the batcher's
# worker holds it around the batch and a single request's run_request takes it again.
GENERATION_LOCK = threading.RLock()

BASE_GENRES = ("rock", "pop", "jazz", "blues", "classical", "electronic", "hip hop", "ambient",
               "folk", "metal", "funk", "reggae", "country", "lo-fi")
KEEP_RESULTS = 200  # result folders kept under the app's output folder (oldest removed first)
RESULT_MARKER = ".musicgen_app_result"  # written into each result folder: only those are ever pruned
EXPORT_KEY_PREFIX = "export:"  # a fine-tune's public key: "export:" + its folder relative to checkpoints/


@dataclass
class ModelChoice:
    label: str    # shown in the dropdown
    value: str    # what load_model receives (a fine-tune's folder on the server: never sent to the page)
    genres: tp.List[str] = field(default_factory=list)  # training genres of a fine-tune, else []
    window: float = MUSICGEN_MAX_SECONDS
    examples: tp.List[str] = field(default_factory=list)
    export: bool = False  # an export folder (a fine-tune), not a built-in name
    key: str = ""  # what the page and API callers see and send: "export:<folder under checkpoints/>"
                   # for a fine-tune, the name itself for a built-in model
    guidance: float = MUSICGEN_CFG_COEF  # the model's own guidance (what generate.py uses without --cfg-coef)

    def __post_init__(self):
        self.key = self.key or self.value


def list_models(checkpoints: tp.Union[str, os.PathLike, None], pretrained: tp.Sequence[str]) -> tp.List[ModelChoice]:
    """Every export under ``checkpoints`` (audiocraft's layout or transformers' format) first (newest
    names last), then ``tiny`` and ``pretrained``.

    A fine-tune's ``key`` names it relative to ``checkpoints`` (``export:jazzrun/export``), so the
    page never learns where the server keeps its files; ``value`` is the folder itself."""
    from ..exports import export_info, find_folders, is_export
    from ..sharing.transformers_import import is_transformers_folder
    choices = []
    if checkpoints:
        root = Path(checkpoints)
        # audiocraft-layout exports and transformers-format folders (converted on load)
        for folder in find_folders(root, lambda f: is_export(f) or is_transformers_folder(f)):
            info = export_info(folder)
            rel = folder.relative_to(root).as_posix()
            label = f"fine-tune: {rel}" + (f" ({', '.join(info.genres)})" if info.genres else "")
            choices.append(ModelChoice(label, str(folder), info.genres, info.max_duration, info.caption_examples,
                                       export=True, key=EXPORT_KEY_PREFIX + rel, guidance=own_guidance(folder, info)))
    choices.append(ModelChoice("tiny (random weights, for testing)", "tiny"))
    choices += [ModelChoice(name, name) for name in pretrained]
    return choices


def own_guidance(folder: Path, info) -> float:
    """A listed fine-tune's own guidance coefficient, read without its weights: an export's
    ``export_info.json`` (``ExportInfo.cfg_coef``), a transformers folder's ``guidance_scale``
    (its ``generation_config.json``); MusicGen's 3 when neither says (an export written before the
    record, audiocraft's own; a folder whose value is invalid fails in one line when it loads)."""
    from ..exports import is_export
    from ..sharing.transformers_import import guidance_scale_of
    if info.cfg_coef is not None:
        return info.cfg_coef
    if not is_export(folder):  # load_model reads a folder with both layouts as the export
        try:
            own = guidance_scale_of(folder)
        except ValueError:
            own = None
        if own is not None:
            return own
    return MUSICGEN_CFG_COEF


class ModelCache:
    """Loaded models by (name, adapter folder or None), the ``capacity`` most recently used kept
    (thread-safe).

    Loading is the slow part of a request (seconds to minutes); a cached model is reused
    as is, so a request costs its generation only. A base with a LoRA adapter merged in is
    another model than the base alone: each has its own entry.
    """

    def __init__(self, capacity: int = APP_MODEL_CACHE, device: tp.Optional[str] = None,
                 loader: tp.Optional[tp.Callable] = None, adapter_loader: tp.Optional[tp.Callable] = None):
        from ..models import load_model
        self.capacity = max(1, int(capacity))
        self.device = device
        self._load = loader or load_model
        self._load_adapted = adapter_loader or load_with_adapter  # lora.load_with_adapter: safetensors only
        self._models: "OrderedDict[tp.Tuple[str, tp.Optional[str]], tp.Any]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, adapter: tp.Optional[str] = None):
        key = (name, adapter)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.capacity:  # free memory before loading the next one
                self._models.popitem(last=False)
                _free_accelerator_memory()
            if adapter is None:
                model = self._load(name, device=self.device)
            else:
                model = self._load_adapted(name, adapter, device=self.device)
            self._models[key] = model
            return model

    def __contains__(self, item) -> bool:
        """``name`` (the base alone) or ``(name, adapter folder)``."""
        return (item if isinstance(item, tuple) else (item, None)) in self._models


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
    """One request from the page, validated on construction (ValueError with the reason).
    ``generation`` carries the sampling settings; a ``seed`` of None or below 0 means a random one."""
    model: str
    allowed_models: tp.Sequence[str]
    prompt: str = ""
    genres: tp.Sequence[str] = ()
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(seed=None))
    max_duration: float = APP_MAX_SECONDS
    audio_prompt: tp.Optional[str] = None  # an uploaded file's path
    upload_roots: tp.Sequence[str] = ()    # audio_prompt must lie under one of these
    midi: bool = True
    adapter: tp.Optional[str] = None       # a listed LoRA adapter's folder (AdapterChoice.value), or None
    allowed_adapters: tp.Sequence[AdapterChoice] = ()

    def __post_init__(self):
        if self.model not in self.allowed_models:
            raise ValueError("choose a model from the list")
        self.adapter_choice = None
        if self.adapter:
            listed = {a.value: a for a in self.allowed_adapters}
            if self.adapter not in listed:
                raise ValueError("choose a LoRA adapter from the list")
            self.adapter_choice = listed[self.adapter]
            check_adapter_base(self.adapter_choice, self.model)
        self.prompt = " ".join(clean_text(self.prompt or "").split())
        if len(self.prompt) > APP_MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt is {len(self.prompt)} characters long; the limit is {APP_MAX_PROMPT_CHARS}")
        self.genres = [clean_text(g) for g in (self.genres or [])][:16]
        if not self.generation.duration <= self.max_duration:
            raise ValueError(f"duration must be more than 0 and at most {self.max_duration:g} seconds")
        if self.generation.seed is None or int(self.generation.seed) < 0:
            self.generation = dataclasses.replace(self.generation, seed=secrets.randbelow(2 ** 31))
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


def clean_text(text) -> str:
    """``text`` as a string that encodes to UTF-8: a lone surrogate (``"\\ud800"``, which some
    JSON clients send) becomes U+FFFD, a split surrogate pair becomes its character."""
    return str(text).encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


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
    from ..outputs import generate_to_files

    report = progress or (lambda stage, done, total: None)
    # The upload's length is checked before the model is loaded, from its header where the
    # format has one; only the model's window from its end is ever decoded into memory.
    prompt_input = open_audio_prompt(request.audio_prompt) if request.audio_prompt else None

    with GENERATION_LOCK:
        report("loading model", 0, 1)
        model = cache.get(request.model, request.adapter or None)
        prompt_audio = None
        if prompt_input is not None:
            prompt_audio = read_audio_tail(prompt_input, float(model.max_duration))
        clip = clip_request(request, prompt_audio)
        folder = _new_result_folder(Path(out_root))
        step = lambda done, total: report("generating", done, total)  # noqa: E731
        try:
            result = generate_to_files(model, clip, [folder / result_stem(request)], progress=step)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # this request's own new folder: a failure leaves none
            raise
    files = result.files[0]
    summary = result_summary(request, clip, result.seconds, result.generation_seconds, result.prompt_seconds_used)
    return AppResult(wav=files.wav, png=files.png, json=files.json, midi=files.midi, summary=summary)


def clip_request(request: AppRequest, prompt_audio=None):
    """``request`` as ``outputs.ClipRequest`` (one clip; ``prompt_audio``: ``([C, n], rate)`` or None)."""
    from ..outputs import ClipRequest
    adapter = request.adapter_choice.key if request.adapter_choice else None
    return ClipRequest(model_name=request.model, user_prompts=[request.prompt] if request.prompt else [],
                       lora_adapter=adapter,
                       generation=request.generation, genres=list(request.genres), prompt_audio=prompt_audio,
                       prompt_audio_name="upload" if prompt_audio is not None else None, midi=request.midi)


def result_stem(request: AppRequest) -> str:
    """The result files' name in the request's folder (``musicgen_s<seed>``)."""
    return f"musicgen_s{request.generation.seed}"


def result_summary(request: AppRequest, clip, seconds: float, generation_seconds: float,
                   prompt_seconds_used: tp.Optional[float] = None, batch: int = 1) -> str:
    """The line the page shows under a result."""
    summary = (f"{seconds:.2f} s of audio in {generation_seconds:.1f} s · seed {request.generation.seed} · "
               f"prompt: {clip.prompts[0] or '(none)'}")
    if clip.lora_adapter:
        summary += f" · LoRA adapter {clip.lora_adapter}"
    if prompt_seconds_used is not None:
        summary += f" · continues {prompt_seconds_used:.2f} s of your audio"
    if batch > 1:
        summary += f" · generated in a batch of {batch} requests"
    return summary


def open_audio_prompt(path, max_seconds: tp.Optional[float] = None):
    """Check an uploaded audio prompt without decoding it whole; returns its ``AudioInput``.

    The length comes from the header when the format has one (WAV, FLAC, OGG, AIFF, MP3...);
    otherwise the file is decoded block by block, nothing kept, and given up on as soon as it
    runs past ``max_seconds`` (default ``APP_MAX_PROMPT_AUDIO_SECONDS``). Raises ValueError
    with a one-line reason.
    """
    from contextlib import closing

    from dataset_tools.audio_io import AudioDecodeError
    from dataset_tools.separation.reader import open_input

    limit = APP_MAX_PROMPT_AUDIO_SECONDS if max_seconds is None else float(max_seconds)
    span = f"{limit / 60:g} minutes" if limit >= 60 else f"{limit:g} seconds"
    too_long = f"the audio prompt is longer than {span}; upload at most that much"
    try:
        inp = open_input(path)
        if inp.frames is not None:
            if inp.frames > limit * inp.rate:
                raise ValueError(too_long)
            return inp
        frames = 0
        with closing(inp.blocks()) as blocks:  # closing stops a running ffmpeg at once
            for block in blocks:
                frames += block.shape[0]
                if frames > limit * inp.rate:
                    raise ValueError(too_long)
        if frames == 0:
            raise AudioDecodeError("no audio samples decoded")
        inp.frames = frames
        return inp
    except AudioDecodeError as exc:
        raise ValueError(f"cannot read the audio prompt: {_one_line(exc)}") from None


def read_audio_tail(inp, seconds: float):
    """The last ``seconds`` of an opened audio prompt as ``([channels, n] float32, rate)``
    (``n`` is less when the file is shorter).

    A file of known length is read from just before its tail (a seek); otherwise it is decoded
    block by block keeping only the tail. Memory is bounded by ``seconds`` either way.
    """
    import numpy as np

    from dataset_tools.audio_io import AudioDecodeError

    keep = max(1, int(math.ceil(seconds * inp.rate)))
    try:
        data = _read_tail_seek(inp, keep) if not inp.use_ffmpeg and inp.frames else None
        if data is None:
            data = _read_tail_stream(inp, keep)
    except AudioDecodeError as exc:
        raise ValueError(f"cannot read the audio prompt: {_one_line(exc)}") from None
    if data.shape[0] == 0:
        raise ValueError("cannot read the audio prompt: no audio samples decoded")
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data.astype(np.float32, copy=False).T, int(inp.rate)  # a view: no second copy of the tail


def _read_tail_seek(inp, keep: int):
    import soundfile as sf
    try:
        with sf.SoundFile(os.fsencode(inp.path)) as f:
            if f.seekable():
                f.seek(max(0, inp.frames - keep))
                data = f.read(keep, dtype="float32", always_2d=True)
                if data.shape[0]:
                    return data
    except (RuntimeError, sf.LibsndfileError):
        pass
    return None  # not seekable, or a damaged or shorter-than-announced tail: the stream decides


def _read_tail_stream(inp, keep: int):
    import numpy as np
    from contextlib import closing

    from dataset_tools.audio_io import AudioDecodeError
    tail, have, seen = [], 0, 0
    limit = (inp.frames or APP_MAX_PROMPT_AUDIO_SECONDS * inp.rate) + inp.rate  # bounded, whatever the file
    with closing(inp.blocks()) as blocks:
        for block in blocks:
            tail.append(block)
            have += block.shape[0]
            seen += block.shape[0]
            while tail and have - tail[0].shape[0] >= keep:
                have -= tail.pop(0).shape[0]
            if seen > limit:
                raise AudioDecodeError("it decodes to more audio than its first reading showed")
    if not tail:
        return np.zeros((0, inp.channels), dtype=np.float32)
    return np.concatenate(tail)[-keep:]


def _one_line(exc) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


_last_result_stamp = 0
_stamp_lock = threading.Lock()


def _new_result_folder(out_root: Path) -> Path:
    """A fresh folder per result, marked as the app's by a ``RESULT_MARKER`` file inside.

    Only marked folders are ever pruned (the oldest first, by the creation time the marker
    records), so that the newest ``KEEP_RESULTS`` remain: nothing else under ``out_root``
    (a ``.git``, a virtualenv, a folder of photos) is touched, whatever its name.
    """
    global _last_result_stamp
    out_root.mkdir(parents=True, exist_ok=True)
    with _stamp_lock:  # strictly increasing within this process, even on a coarse clock
        stamp = _last_result_stamp = max(time.time_ns(), _last_result_stamp + 1)
    folder = out_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    folder.mkdir()
    (folder / RESULT_MARKER).write_text(f"{stamp}\n", encoding="ascii")
    results = sorted((made, path.name, path) for path in out_root.iterdir()
                     if (made := _result_stamp(path)) is not None)
    for _, _, path in results[:-KEEP_RESULTS]:
        shutil.rmtree(path, ignore_errors=True)
    return folder


def _result_stamp(path: Path) -> tp.Optional[int]:
    """When the app made result folder ``path`` (ns), from its marker; None if it is not one."""
    marker = path / RESULT_MARKER
    try:
        if path.is_symlink() or not path.is_dir() or marker.is_symlink() or not marker.is_file():
            return None
        text = marker.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:  # a marker from elsewhere: still the app's, ordered by its time
        try:
            return marker.stat().st_mtime_ns
        except OSError:
            return None


def hub_cached(name: str) -> bool:
    """Whether hub model ``name``'s weights are in the local cache (nothing is downloaded)."""
    import os
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(name, "state_dict.bin", cache_dir=os.environ.get("AUDIOCRAFT_CACHE_DIR"))
        return isinstance(found, str)
    except Exception:
        return False
