"""Clip embeddings for the Fréchet distances and the CLAP score.

Offline, always: the genre classifier's penultimate layer (`classifier_embeddings`) and the
model's own EnCodec latents (`encodec_embeddings`). When CLAP weights are on this machine:
transformers' CLAP (`load_clap`, `clap_embeddings`, `clap_scores`); without them a one-line
`ModelUnavailableError`. `tiny_clap` builds a small random CLAP offline for tests.

Shapes: ``waves`` is a list of N clips, each ``[n]`` (mono) or ``[C, n]`` float samples at
``sample_rate``; every function returns one row per clip, ``[N, D]`` float64.
"""
from __future__ import annotations

import typing as tp
import weakref
from dataclasses import dataclass, replace

import numpy as np
import torch

from .sanity import as_mono

# Prompts are cut to this many tokens (CLAP's text tower: RoBERTa with 514 positions; captions
# are far shorter).
CLAP_TEXT_MAX_TOKENS = 128


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


# --- CLAP ------------------------------------------------------------------------------------
@dataclass
class Clap:
    """A CLAP model with its feature extractor and tokenizer (what ``ClapProcessor`` holds)."""
    model: tp.Any
    feature_extractor: tp.Any
    tokenizer: tp.Any
    name: str = "clap"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_clap(name: str, device: str = "cpu") -> Clap:
    """transformers' ``ClapModel`` and ``ClapProcessor`` from a local folder or a hub name
    already in the local cache (never downloads: evaluation runs offline).

    Raises:
        ModelUnavailableError: one line, when the weights are not on this machine.
    """
    from ..models import ModelUnavailableError
    from transformers import ClapModel, ClapProcessor

    try:
        processor = ClapProcessor.from_pretrained(str(name), local_files_only=True)
        model = ClapModel.from_pretrained(str(name), local_files_only=True)
    except (OSError, ValueError) as err:  # transformers: missing files/cache entries are OSError
        raise ModelUnavailableError(
            f"CLAP model {name!r} is not available offline ({type(err).__name__}); put its files "
            f"(e.g. laion/clap-htsat-unfused) in the Hugging Face cache or a folder to get CLAP figures"
        ) from None
    return Clap(model.to(device).eval(), processor.feature_extractor, processor.tokenizer, str(name))


def tiny_clap(seed: int = 0) -> Clap:
    """A small random CLAP built offline from transformers' config classes (tests only: its
    scores mean nothing). Same ``seed``, same weights. Text goes through a byte-level tokenizer
    (``ByT5Tokenizer``, which needs no files) instead of CLAP's RoBERTa one."""
    from transformers import ByT5Tokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

    tokenizer = ByT5Tokenizer()
    # The audio tower keeps CLAP's input geometry (64 mel bins, 256 spectrogram size) so the real
    # feature extractor feeds it; only widths and depths shrink.
    audio = dict(hidden_size=16, patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[1, 1],
                 num_hidden_layers=2, projection_dim=8, num_classes=4)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=CLAP_TEXT_MAX_TOKENS + 4, projection_dim=8,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=8)).eval()
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    return Clap(model, extractor, tokenizer, f"tiny-clap:{seed}")


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns an output object whose ``pooler_output`` is the projected,
    normalised embedding; 4.x returned the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clap_audio_embeddings(clap: Clap, waves: tp.Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """``[N, P]`` unit-norm CLAP audio embeddings. Clips are mixed to mono, resampled to CLAP's
    rate (48 kHz) and cut to the start of its window (10 s for laion's models): the feature
    extractor would otherwise pick a random crop of a longer clip, and scores would vary."""
    fe = clap.feature_extractor
    limit = int(fe.nb_max_samples)
    audio = [_resampled(w, sample_rate, fe.sampling_rate)[:limit] for w in waves]
    inputs = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt")
    inputs = {k: v.to(clap.device) for k, v in inputs.items()}
    emb = _pooled(clap.model.get_audio_features(**inputs))
    return torch.nn.functional.normalize(emb.double(), dim=-1).cpu().numpy()


@torch.no_grad()
def clap_text_embeddings(clap: Clap, texts: tp.Sequence[str]) -> np.ndarray:
    """``[M, P]`` unit-norm CLAP text embeddings."""
    tokens = clap.tokenizer(list(texts), padding=True, truncation=True, max_length=CLAP_TEXT_MAX_TOKENS,
                            return_tensors="pt")
    emb = _pooled(clap.model.get_text_features(input_ids=tokens["input_ids"].to(clap.device),
                                               attention_mask=tokens["attention_mask"].to(clap.device)))
    return torch.nn.functional.normalize(emb.double(), dim=-1).cpu().numpy()


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
