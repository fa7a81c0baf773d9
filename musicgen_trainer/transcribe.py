"""Audio -> MIDI with Spotify's basic-pitch, fully offline (its model ships in the wheel).

basic-pitch 0.4.0 offers its network as a TensorFlow SavedModel, TFLite, ONNX and CoreML
file. The SavedModel no longer loads in TensorFlow 2.16+ (Keras 3), so this module uses the
TFLite file through TensorFlow's bundled interpreter, or the ONNX file when onnxruntime is
installed and TFLite is not usable. The model is loaded once per process.
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
    from .loading import _native_stderr_silenced
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_stderr_silenced():
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
    from .atomic import atomic_path
    midi_path = Path(midi_path)
    with atomic_path(midi_path, suffix=".mid") as tmp:
        midi.write(str(tmp))
    pitches = [int(e[2]) for e in events]
    return Transcription(path=midi_path, notes=len(pitches), lowest_pitch=min(pitches, default=None),
                         highest_pitch=max(pitches, default=None))
