"""Media made from generated audio: mel-spectrogram pictures (PNG) and MIDI transcriptions.

Spectrograms use librosa's mel filterbank and matplotlib's Agg backend (no display needed).
Transcription is Spotify's basic-pitch, fully offline (its model ships in the wheel): its
SavedModel no longer loads in TensorFlow 2.16+ (Keras 3), so the TFLite file runs through
TensorFlow's bundled interpreter, or the ONNX file when onnxruntime is installed and TFLite
is not usable. The model is loaded once per process.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import typing as tp
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


# --- spectrogram ---------------------------------------------------------------------------

N_MELS = 128
N_FFT = 2048
HOP = 512
FMAX = 16_000
TOP_DB = 80.0


def mel_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[n]`` or ``[channels, n]`` float audio -> ``[N_MELS, frames]`` mel power in dB (max 0 dB).

    Channels are averaged. Silence gives a flat -80 dB picture, never NaNs.
    """
    import librosa
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.size < N_FFT:
        audio = np.pad(audio, (0, N_FFT - audio.size))
    mel = librosa.feature.melspectrogram(y=audio, sr=sample_rate, n_fft=N_FFT, hop_length=HOP,
                                         n_mels=N_MELS, fmax=min(FMAX, sample_rate / 2))
    return librosa.power_to_db(mel, ref=max(float(mel.max()), 1e-10), top_db=TOP_DB)


def save_spectrogram(path: tp.Union[str, os.PathLike], audio: np.ndarray, sample_rate: int,
                     title: str = "", prompt: tp.Optional[np.ndarray] = None,
                     prompt_rate: tp.Optional[int] = None) -> Path:
    """Write a PNG of ``audio``'s mel spectrogram; with ``prompt``, the prompt's is drawn on
    the left and the output's on the right, on the same colour scale. Written atomically."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    panels = [("generated" if prompt is not None else "", audio, sample_rate)]
    if prompt is not None:
        panels.insert(0, ("audio prompt", prompt, prompt_rate or sample_rate))
    seconds = [np.asarray(a).shape[-1] / sr for _, a, sr in panels]
    widths = [max(s, 0.25 * sum(seconds)) for s in seconds]
    fig = Figure(figsize=(10 if prompt is None else 12, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    image = None
    for ax, (label, data, sr), secs in zip(axes, panels, seconds):
        spec = mel_db(data, sr)
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=-TOP_DB, vmax=0,
                          extent=(0, secs, 0, N_MELS), interpolation="nearest")
        ax.set_xlabel("seconds")
        ax.set_yticks(_mel_ticks(sr))
        ax.set_yticklabels([_hz_label(f) for f in _MEL_TICK_HZ[:len(ax.get_yticks())]])
        if label:
            ax.set_title(label, fontsize=10)
        if label == "generated" and prompt is not None:  # the output starts with the prompt
            ax.axvline(seconds[0], color="white", linestyle="--", linewidth=1)
            ax.text(seconds[0], N_MELS * 0.97, " prompt ends", color="white", fontsize=8, va="top")
    axes[0].set_ylabel("Hz (mel scale)")
    fig.colorbar(image, ax=list(axes), format="%+.0f dB", pad=0.01)
    if title:
        fig.suptitle(title if len(title) <= 110 else title[:107] + "...", fontsize=10)
    from dataset_tools.atomic import atomic_path
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


_MEL_TICK_HZ = (0, 500, 1000, 2000, 4000, 8000, 16000)


def _mel_ticks(sample_rate: int) -> tp.List[float]:
    """Positions (in mel bins) of the labelled frequencies below the plotted maximum."""
    import librosa
    fmax = min(FMAX, sample_rate / 2)
    top = librosa.hz_to_mel(fmax)
    return [float(librosa.hz_to_mel(f) / top * N_MELS) for f in _MEL_TICK_HZ if f <= fmax]


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


# --- MIDI transcription --------------------------------------------------------------------

INSTALL_HINT = ("pip install --no-deps basic-pitch==0.4.0 mir_eval 'resampy<0.4.3' "
                "(see requirements-nodeps.txt)")

_MODEL = None
_LOCK = threading.Lock()


class TranscriptionUnavailable(RuntimeError):
    """basic-pitch (or a runtime for its model) is not installed; ``str`` says how to fix it."""


@dataclass
class Transcription:
    """What was written: the MIDI file and a summary of its notes."""
    path: Path
    notes: int
    lowest_pitch: tp.Optional[int]
    highest_pitch: tp.Optional[int]


@contextlib.contextmanager
def _quiet():
    """basic-pitch logs a warning per missing backend at import and prints per file;
    TensorFlow's C++ side prints banners straight to the stderr file descriptor."""
    from .runtime import native_stderr_silenced
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def load_transcriber():
    """The basic-pitch model (loaded on first use, then shared; thread-safe)."""
    global _MODEL
    with _LOCK:
        if _MODEL is not None:
            return _MODEL
        with _quiet():
            try:
                from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
                from basic_pitch.inference import Model
            except ImportError as exc:
                raise TranscriptionUnavailable(f"MIDI export needs basic-pitch ({exc}): {INSTALL_HINT}") from None
            errors = []
            for suffix in (FilenameSuffix.tflite, FilenameSuffix.onnx):
                try:
                    _MODEL = Model(build_icassp_2022_model_path(suffix))
                    return _MODEL
                except Exception as exc:  # this backend is missing or cannot read the file
                    errors.append(f"{suffix.name}: {str(exc).splitlines()[0][:120]}")
        raise TranscriptionUnavailable("basic-pitch is installed but none of its model files loads "
                                       f"({'; '.join(errors)}); install tensorflow or onnxruntime")


def transcribe(audio_path: tp.Union[str, os.PathLike], midi_path: tp.Union[str, os.PathLike],
               tempo: float = 120.0, onset_threshold: float = 0.5, frame_threshold: float = 0.3,
               min_note_ms: float = 127.7) -> Transcription:
    """Transcribe an audio file (any rate; read as mono 22.05 kHz) to a MIDI file.

    The thresholds are basic-pitch's defaults. ``tempo`` only sets the MIDI file's tempo
    marking (note times are in seconds either way). The file is written atomically.
    """
    model = load_transcriber()
    from basic_pitch.inference import predict
    with _LOCK, _quiet():  # one interpreter: one call at a time
        _, midi, events = predict(str(audio_path), model, onset_threshold=onset_threshold,
                                  frame_threshold=frame_threshold, minimum_note_length=min_note_ms,
                                  midi_tempo=tempo)
    from dataset_tools.atomic import atomic_path
    midi_path = Path(midi_path)
    with atomic_path(midi_path, suffix=".mid") as tmp:
        midi.write(str(tmp))
    pitches = [int(e[2]) for e in events]
    return Transcription(path=midi_path, notes=len(pitches), lowest_pitch=min(pitches, default=None),
                         highest_pitch=max(pitches, default=None))
