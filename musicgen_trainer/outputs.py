"""The files written for one generated clip, shared by ``generate.py`` and the web app.

For a stem ``out/00_lofi_jazz_s42``::

    00_lofi_jazz_s42.wav    16-bit PCM at the model's rate
    00_lofi_jazz_s42.mp3    with mp3=True (ffmpeg, LAME VBR quality 2)
    00_lofi_jazz_s42.png    mel spectrogram (the audio prompt's beside it, when there is one)
    00_lofi_jazz_s42.mid    with midi=True (basic-pitch transcription)
    00_lofi_jazz_s42.json   the exact parameters, the files and the MIDI summary (written last)
"""
from __future__ import annotations

import json
import subprocess
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class OutputFiles:
    wav: Path
    json: Path
    png: tp.Optional[Path] = None
    mp3: tp.Optional[Path] = None
    midi: tp.Optional[Path] = None

    def paths(self) -> tp.List[Path]:
        return [p for p in (self.wav, self.mp3, self.png, self.midi, self.json) if p is not None]


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
    from dataset_tools.audio_io import write_wav_atomic

    stem = Path(stem)
    audio = np.asarray(audio, dtype=np.float32)
    files = OutputFiles(wav=write_wav_atomic(stem.with_suffix(".wav"), audio, sample_rate),
                        json=stem.with_suffix(".json"))
    record = dict(params)
    if mp3:
        files.mp3 = encode_mp3(files.wav, stem.with_suffix(".mp3"))
    if spectrogram:
        from .spectrogram import save_spectrogram
        files.png = save_spectrogram(stem.with_suffix(".png"), audio, sample_rate, title=title,
                                     prompt=prompt_audio, prompt_rate=prompt_rate)
    if midi:
        from .transcribe import transcribe
        result = transcribe(files.wav, stem.with_suffix(".mid"), tempo=float(params.get("bpm") or 120.0))
        files.midi = result.path
        record["midi_notes"] = {"count": result.notes, "lowest_pitch": result.lowest_pitch,
                                "highest_pitch": result.highest_pitch}
    record["seconds"] = round(audio.shape[-1] / sample_rate, 6)
    record["files"] = {k: p.name for k, p in (("wav", files.wav), ("mp3", files.mp3), ("png", files.png),
                                              ("midi", files.midi)) if p is not None}
    _write_text_atomic(files.json, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return files


def encode_mp3(wav: Path, mp3: Path) -> Path:
    """Encode with ffmpeg's LAME (VBR ``-q:a 2``, ~190 kbit/s); ValueError when it fails."""
    from dataset_tools.audio_io import ffmpeg_path

    from .atomic import atomic_path
    with atomic_path(mp3, suffix=".mp3") as tmp:
        proc = subprocess.run([ffmpeg_path(), "-nostdin", "-v", "error", "-y", "-i", str(wav),
                               "-codec:a", "libmp3lame", "-q:a", "2", str(tmp)],
                              capture_output=True, text=True, errors="replace", timeout=600)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise ValueError(f"MP3 encoding failed (ffmpeg: {reason})")
    return mp3


def _write_text_atomic(path: Path, text: str) -> None:
    from .atomic import atomic_path
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
