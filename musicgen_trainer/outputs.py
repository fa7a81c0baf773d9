"""From a request to files: prompts in the training captions' words, one clip's files, and
``generate_to_files`` (what both ``generate.py`` and the web app call).

Prompts: ``dataset_tools`` writes each segment's caption from a template
(``dataset_tools.captions``), e.g. ``"Jazz music, Blue in Green, 96 bpm..."``. A fine-tune
learns that phrasing, so a prompt built from a genre list goes through the very same template
code::

    genre_caption(["jazz", "hip_hop"], bpm=90)  ->  "Jazz and hip hop music, medium tempo at 90 bpm"

Files, for a stem ``out/00_lofi_jazz_s42``::

    00_lofi_jazz_s42.wav    16-bit PCM at the model's rate
    00_lofi_jazz_s42.mp3    with mp3=True (ffmpeg, LAME VBR quality 2)
    00_lofi_jazz_s42.png    mel spectrogram (the audio prompt's beside it, when there is one)
    00_lofi_jazz_s42.mid    with midi=True (basic-pitch transcription)
    00_lofi_jazz_s42.json   the exact parameters, the files and the MIDI summary (written last)

The JSON has the same keys whoever made the clip (``clip_record``).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataset_tools.atomic import atomic_path, write_text_atomic
from dataset_tools.captions import DEFAULT_TEMPLATE, caption_values, genre_words, render_caption

from .generation import GenerationConfig, clip_seeds, guidance_coef


# --- prompts -------------------------------------------------------------------------------

def parse_genres(text: tp.Union[str, tp.Sequence[str], None]) -> tp.List[str]:
    """``"jazz, rock"``, ``["jazz", "rock"]`` or ``["jazz,rock"]`` -> ``["jazz", "rock"]`` (blanks and
    repeats dropped)."""
    if text is None:
        return []
    parts = [p for t in ([text] if isinstance(text, str) else text) for p in str(t).split(",")]
    out: tp.List[str] = []
    for part in parts:
        part = " ".join(part.split())
        if part and part.lower() not in (p.lower() for p in out):
            out.append(part)
    return out


def genre_caption(genres: tp.Sequence[str], bpm: tp.Optional[float] = None, key: tp.Optional[str] = None,
                  title: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """A caption as ``dataset_tools`` writes them, for one or more genres (joined with "and")."""
    words = [genre_words(g, unlabelled=False) for g in genres]
    words = [w for w in words if w]
    genre = " and ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " and " + words[-1]
    values = caption_values(genre=genre, title=title, artist="", bpm=bpm, key=key, instrument="", name="")
    return render_caption(template, values)


def build_prompts(prompts: tp.Sequence[str], genres: tp.Sequence[str] = (), bpm: tp.Optional[float] = None,
                  key: tp.Optional[str] = None) -> tp.List[str]:
    """The text for each output: the genre caption, then the user's own words.

    No prompts and no genres gives one empty prompt (generation without text).
    """
    head = genre_caption(genres, bpm=bpm, key=key) if (genres or bpm or key) else ""
    prompts = [" ".join(str(p).split()) for p in prompts] or [""]
    return [", ".join(part for part in (head, p) if part) for p in prompts]


def unknown_genres(genres: tp.Sequence[str], known: tp.Sequence[str]) -> tp.List[str]:
    """The requested genres a fine-tune never saw (compared as caption words)."""
    seen = {genre_words(k, False) for k in known}
    return [g for g in genres if genre_words(g, False) not in seen]


# --- one clip's files -----------------------------------------------------------------------

@dataclass
class OutputFiles:
    wav: Path
    json: Path
    png: tp.Optional[Path] = None
    mp3: tp.Optional[Path] = None
    midi: tp.Optional[Path] = None

    def paths(self) -> tp.List[Path]:
        return [p for p in (self.wav, self.mp3, self.png, self.midi, self.json) if p is not None]


def slug(text: str, limit: int = 48) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return text[:limit].rstrip("_") or "unconditional"


def unique_stems(out: Path, names: tp.Sequence[str]) -> tp.List[Path]:
    """``out/name`` for each name; if any output of the batch exists, all get a ``_2``, ``_3``... suffix."""
    for n in range(1, 10_000):
        suffix = "" if n == 1 else f"_{n}"
        stems = [out / f"{name}{suffix}" for name in names]
        if not any(s.with_suffix(ext).exists() for s in stems for ext in (".wav", ".json")):
            return stems
    raise ValueError(f"{out} already holds 10,000 runs with these names: use another --out folder")


def write_outputs(stem: Path, audio: np.ndarray, sample_rate: int, params: dict, *, mp3: bool = False,
                  midi: bool = False, spectrogram: bool = True, prompt_audio: tp.Optional[np.ndarray] = None,
                  prompt_rate: tp.Optional[int] = None, title: str = "") -> OutputFiles:
    """Write one clip's files (see module doc). ``audio`` is ``[C, T]`` float in [-1, 1].

    ``params`` goes into the JSON as is, with ``files``, ``seconds`` and (with midi) ``midi_notes`` added.
    """
    from dataset_tools.audio_io import write_wav_atomic  # (soundfile loads on first use)

    stem = Path(stem)
    audio = np.asarray(audio, dtype=np.float32)
    files = OutputFiles(wav=write_wav_atomic(stem.with_suffix(".wav"), audio, sample_rate),
                        json=stem.with_suffix(".json"))
    record = dict(params)
    if mp3:
        files.mp3 = encode_mp3(files.wav, stem.with_suffix(".mp3"))
    if spectrogram:
        from .media import save_spectrogram
        files.png = save_spectrogram(stem.with_suffix(".png"), audio, sample_rate, title=title,
                                     prompt=prompt_audio, prompt_rate=prompt_rate)
    if midi:
        from .media import transcribe
        result = transcribe(files.wav, stem.with_suffix(".mid"), tempo=float(params.get("bpm") or 120.0))
        files.midi = result.path
        record["midi_notes"] = {"count": result.notes, "lowest_pitch": result.lowest_pitch,
                                "highest_pitch": result.highest_pitch}
    record["seconds"] = round(audio.shape[-1] / sample_rate, 6)
    record["files"] = {k: p.name for k, p in (("wav", files.wav), ("mp3", files.mp3), ("png", files.png),
                                              ("midi", files.midi)) if p is not None}
    write_text_atomic(files.json, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return files


def encode_mp3(wav: Path, mp3: Path) -> Path:
    """Encode with ffmpeg's LAME (VBR ``-q:a 2``, ~190 kbit/s); ValueError when it fails."""
    from dataset_tools.audio_io import ffmpeg_path
    with atomic_path(mp3, suffix=".mp3") as tmp:
        proc = subprocess.run([ffmpeg_path(), "-nostdin", "-v", "error", "-y", "-i", str(wav),
                               "-codec:a", "libmp3lame", "-q:a", "2", str(tmp)],
                              capture_output=True, text=True, errors="replace", timeout=600)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise ValueError(f"MP3 encoding failed (ffmpeg: {reason})")
    return mp3


# --- a request, generated and written -------------------------------------------------------

@dataclass
class ClipRequest:
    """What to generate, as both the CLI and the app describe it (the model is loaded already).

    prompt_audio / melody: ``([C, n] float tensor, sample rate)`` or None.
    """
    model_name: str
    user_prompts: tp.List[str]
    generation: GenerationConfig
    lora_adapter: tp.Optional[str] = None  # how the JSON names the LoRA adapter applied at load time, if any
    genres: tp.List[str] = field(default_factory=list)
    bpm: tp.Optional[float] = None
    key: tp.Optional[str] = None
    prompt_audio: tp.Optional[tuple] = None
    prompt_audio_name: tp.Optional[str] = None   # how the JSON names it (never a server path)
    prompt_seconds: tp.Optional[float] = None    # of the audio prompt's end (default: half the window)
    melody: tp.Optional[tuple] = None
    melody_name: tp.Optional[str] = None
    mp3: bool = False
    midi: bool = False

    @property
    def prompts(self) -> tp.List[str]:
        """The text given to the model for each output (genre caption, then the user's words)."""
        return build_prompts(self.user_prompts, self.genres, bpm=self.bpm, key=self.key)

    @property
    def seeds(self) -> tp.Optional[tp.List[int]]:
        """Each output's own seed: output i gets ``generation.seed + i`` (``generation.clip_seeds``), and is
        the clip its prompt gives alone with that seed (None: no seed given, the batch unseeded)."""
        seed = self.generation.seed
        return None if seed is None else clip_seeds(seed, len(self.prompts))


@dataclass
class GeneratedClips:
    files: tp.List["OutputFiles"]
    seconds: float                     # of new audio per clip
    generation_seconds: float          # wall time of the generation itself
    prompt_seconds_used: tp.Optional[float] = None  # of the audio prompt, when there was one


def generate_to_files(model, request: ClipRequest, stems: tp.Sequence[Path],
                      progress=True) -> GeneratedClips:
    """Generate one clip per prompt (one batch, one seed per clip: ``request.seeds``) and write each
    clip's files at its stem.

    ``progress`` is passed to the generation functions (False, True or ``(done, total)``).
    """
    import torch

    from .generation import generate, generate_continuation, generate_with_melody, prepare_audio_prompt

    prompts, cfg, seeds = request.prompts, request.generation, request.seeds
    if len(stems) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(stems)} output names")
    kept = None  # [C, P] at the model's rate: the part of the audio prompt used
    started = time.time()
    if request.prompt_audio is not None:
        audio, rate = request.prompt_audio
        kept = prepare_audio_prompt(model, torch.as_tensor(audio), rate, request.prompt_seconds)[0]
        wavs = generate_continuation(model, kept, model.sample_rate, prompts, cfg, progress=progress,
                                     max_prompt_seconds=request.prompt_seconds, seeds=seeds)
    elif request.melody is not None:
        wavs = generate_with_melody(model, torch.as_tensor(request.melody[0]), request.melody[1], prompts, cfg,
                                    progress=progress, seeds=seeds)
    else:
        wavs = generate(model, prompts, cfg, progress=progress, seeds=seeds)
    elapsed = time.time() - started
    used = None if kept is None else round(kept.shape[-1] / model.sample_rate, 6)
    files = []
    for i, (stem, prompt, wav) in enumerate(zip(stems, prompts, wavs)):
        record = clip_record(model, request, i, elapsed, used)
        files.append(write_outputs(stem, wav.numpy(), model.sample_rate, record, mp3=request.mp3,
                                   midi=request.midi, prompt_audio=None if kept is None else kept.numpy(),
                                   prompt_rate=model.sample_rate, title=prompt or "(no text)"))
    seconds = wavs.shape[-1] / model.sample_rate if len(wavs) else 0.0
    return GeneratedClips(files=files, seconds=seconds, generation_seconds=elapsed, prompt_seconds_used=used)


def clip_record(model, request: ClipRequest, index: int, elapsed: float,
                prompt_seconds_used: tp.Optional[float]) -> dict:
    """The parameters written to a clip's JSON: everything needed to make it again (``seed`` is the
    clip's own: its prompt alone with that seed gives this clip)."""
    import audiocraft
    prompts, seeds = request.prompts, request.seeds
    return {
        "model": request.model_name,
        "lora_adapter": request.lora_adapter,
        "prompt": prompts[index],
        "user_prompt": request.user_prompts[index] if index < len(request.user_prompts) else "",
        "genres": list(request.genres), "bpm": request.bpm, "key": request.key,
        "batch_index": index, "batch_size": len(prompts),
        **request.generation.to_dict(),
        "seed": None if seeds is None else seeds[index],
        "cfg_coef": guidance_coef(model, request.generation),  # the model's own when not set: the value used
        "audio_prompt": request.prompt_audio_name,
        "prompt_seconds": request.prompt_seconds,
        "audio_prompt_seconds_used": prompt_seconds_used,
        "melody": request.melody_name,
        "sample_rate": int(model.sample_rate), "channels": int(model.audio_channels),
        "model_window_seconds": float(model.max_duration),
        "generation_seconds": round(elapsed, 3), "audiocraft": audiocraft.__version__,
    }
