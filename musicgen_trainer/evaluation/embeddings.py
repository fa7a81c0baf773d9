"""Clip embeddings for the Fréchet distances and the CLAP score.

Offline, always: the genre classifier's penultimate layer (`classifier_embeddings`) and the
model's own EnCodec latents (`encodec_embeddings`). When CLAP weights are on this machine:
transformers' CLAP (`load_clap`, `clap_embeddings`, `clap_scores`); without them a one-line
`ModelUnavailableError`. `tiny_clap` builds a small random CLAP offline for tests (the CLAP
model code lives in `dataset_tools.clap`, shared with `prepare --tagger clap`).

Shapes: ``waves`` is a list of N clips, each ``[n]`` (mono) or ``[C, n]`` float samples at
``sample_rate``; every function returns one row per clip, ``[N, D]`` float64.
"""
from __future__ import annotations

import typing as tp
import weakref
from dataclasses import replace

import numpy as np
import torch

from dataset_tools.clap import (CLAP_TEXT_MAX_TOKENS, Clap, ClapUnavailableError,  # noqa: F401 (re-exported)
                                clap_audio_embeddings, clap_text_embeddings, tiny_clap)
from dataset_tools.clap import load_clap as _load_clap

from .sanity import as_mono


def _resampled(wave: np.ndarray, sample_rate: int, rate: int) -> np.ndarray:
    from dataset_tools.audio_io import resample
    return np.ascontiguousarray(resample(as_mono(wave, np.float32), int(sample_rate), int(rate)), dtype=np.float32)


# --- the genre classifier's penultimate layer ------------------------------------------------
_EMBEDDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _penultimate(keras_model):
    """A Keras model giving what the classifier's output layer sees (``[n, 64]`` for the
    baseline: the Dense 64 layer; dropout is inactive at inference). One per classifier: a new
    model per call would make TensorFlow retrace its predict function every time."""
    if keras_model not in _EMBEDDERS:
        from genre_classifier.model import import_keras
        keras = import_keras()
        _EMBEDDERS[keras_model] = keras.Model(keras_model.inputs, keras_model.layers[-1].input)
    return _EMBEDDERS[keras_model]


def classifier_embeddings(classifier, waves: tp.Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """``[N, D]``: each clip's mean over its 3 s windows of the classifier's penultimate layer.

    ``classifier``: a ``genre_classifier`` `Classifier` or a model folder. Clips become MFCC
    windows exactly as the classifier scores them (``genre_classifier.inference.audio_features``),
    except that silent or very short clips are not skipped: a silent generated clip is a point of
    the distribution being measured (padded to one window, like a short file).
    """
    from genre_classifier.inference import audio_features
    from genre_classifier.model_folder import PREDICT_BATCH, Classifier, load_classifier

    if not isinstance(classifier, Classifier):
        classifier = load_classifier(classifier)
    if not len(waves):
        raise ValueError("no clips to embed")
    settings = replace(classifier.settings, min_track_seconds=0.0, silence_dbfs=float("-inf"))
    windows = [audio_features(w, sample_rate, settings).windows(settings) for w in waves]
    stacked = np.concatenate(windows)[..., None]  # [all windows, frames, n_mfcc, 1]
    embedder = _penultimate(classifier.keras_model)
    rows = np.concatenate([np.asarray(embedder.predict_on_batch(stacked[i:i + PREDICT_BATCH]))
                           for i in range(0, stacked.shape[0], PREDICT_BATCH)])
    out, offset = [], 0
    for w in windows:
        out.append(rows[offset:offset + len(w)].mean(axis=0))
        offset += len(w)
    return np.stack(out).astype(np.float64)


# --- EnCodec latents ---------------------------------------------------------------------------
def _mono_codec(compression_model):
    """The mono EnCodec inside a stereo model's interleaving wrapper (the model itself otherwise)."""
    from audiocraft.models.encodec import InterleaveStereoCompressionModel
    if isinstance(compression_model, InterleaveStereoCompressionModel):
        return compression_model.model
    return compression_model


@torch.no_grad()
def encodec_embeddings(compression_model, waves: tp.Sequence[np.ndarray], sample_rate: int,
                       stats: str = "mean_std") -> np.ndarray:
    """``[N, 2 D]`` (``stats="mean_std"``) or ``[N, D]`` (``"mean"``): each clip's EnCodec latents
    before quantisation ``[D, frames]`` (D = 128 for MusicGen's 32 kHz codec), pooled over time.

    Clips are mixed to mono and resampled (soxr) to the codec's rate; a stereo model's codec
    embeds the mono mix with its mono EnCodec, so mono and stereo models of one codec give
    comparable embeddings (FAD measures what the music is, not its stereo image).

    Why mean and standard deviation: the mean alone says which sounds a clip holds, but not how
    they move; a drone, a stuck loop or steady noise can share a mean with real music and differ
    in how much the latents vary over time. The price is twice the dimension, i.e. a noisier
    covariance on small sets (the FAD figures say how many clips they rest on).
    """
    if stats not in ("mean_std", "mean"):
        raise ValueError(f"stats must be 'mean_std' or 'mean', got {stats!r}")
    if not len(waves):
        raise ValueError("no clips to embed")
    codec = _mono_codec(compression_model)
    device = next(codec.parameters()).device
    hop = int(round(codec.sample_rate / codec.frame_rate))  # samples per latent frame
    rows = []
    for wave in waves:
        mono = _resampled(wave, sample_rate, codec.sample_rate)
        if mono.shape[0] < hop:  # shorter than one frame: zero-pad to one
            mono = np.pad(mono, (0, hop - mono.shape[0]))
        x = torch.from_numpy(mono)[None, None].to(device)         # [1, 1, n]
        x, _ = codec.preprocess(x)                                  # renormalisation when the codec has it
        latents = codec.encoder(x)[0].double()                      # [D, frames]
        pooled = [latents.mean(dim=-1)]
        if stats == "mean_std":
            pooled.append(latents.std(dim=-1, unbiased=False))
        rows.append(torch.cat(pooled).cpu().numpy())
    return np.stack(rows)


# --- CLAP (the model code lives in dataset_tools.clap, shared with prepare's tagger) ------------
def load_clap(name: str, device: str = "cpu") -> Clap:
    """`dataset_tools.clap.load_clap` (a local folder or a hub name already in the local cache;
    never downloads: evaluation runs offline).

    Raises:
        ModelUnavailableError: one line, when the weights are not on this machine.
    """
    from ..models import ModelUnavailableError
    try:
        return _load_clap(name, device)
    except ClapUnavailableError as err:
        raise ModelUnavailableError(str(err)) from None


def clap_embeddings(clap, waves: tp.Sequence[np.ndarray] = (), sample_rate: int = 48_000,
                    texts: tp.Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(audio ``[N, P]``, text ``[M, P]``) unit-norm embeddings; ``clap`` is a `Clap` or a name
    or folder for `load_clap` (ModelUnavailableError when its weights are not here)."""
    if not isinstance(clap, Clap):
        clap = load_clap(clap)
    audio = clap_audio_embeddings(clap, waves, sample_rate) if len(waves) else np.zeros((0, 0))
    text = clap_text_embeddings(clap, texts) if len(texts) else np.zeros((0, 0))
    return audio, text


def clap_scores(clap, prompts: tp.Sequence[str], waves: tp.Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """``[N]``: cosine similarity of each prompt with its clip (prompt i with clip i), in [-1, 1]."""
    if len(prompts) != len(waves):
        raise ValueError(f"{len(prompts)} prompts for {len(waves)} clips: give one prompt per clip")
    if not len(waves):
        return np.zeros(0)
    audio, text = clap_embeddings(clap, waves, sample_rate, prompts)
    return (audio * text).sum(axis=1)
