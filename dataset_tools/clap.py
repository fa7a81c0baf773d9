"""CLAP (transformers' ``ClapModel``): audio and text embeddings in one space.

Used by ``prepare --tagger clap`` (zero-shot tags, ``tagging.py``) and by the trainer's
evaluation (the CLAP score, ``musicgen_trainer.evaluation.embeddings``, which imports it from
here: dataset_tools is the bottom package).

* ``load_clap(name)``: a hub name already in the local cache or a local folder (never
  downloads); ``ClapUnavailableError`` (one line) when the weights are not on this machine.
* ``tiny_clap(seed)``: a small random CLAP built offline (tests only: its scores mean nothing).
* ``clap_audio_embeddings`` ``[N, P]`` / ``clap_text_embeddings`` ``[M, P]``: unit-norm rows.

Shapes: ``waves`` is a list of N clips, each ``[n]`` (mono) or ``[C, n]`` float samples at
``sample_rate``.
"""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass

import numpy as np

# torch is imported inside the functions: ``prepare`` imports this module (for the error class
# and ``tiny_seed``) on every run, and torch takes seconds to import.

# Prompts are cut to this many tokens (CLAP's text tower: RoBERTa with 514 positions; captions
# and tag prompts are far shorter).
CLAP_TEXT_MAX_TOKENS = 128
TINY_PREFIX = "tiny"


class ClapUnavailableError(ValueError):
    """The CLAP weights asked for are not on this machine (one line, says how to provide them)."""


@dataclass
class Clap:
    """A CLAP model with its feature extractor and tokenizer (what ``ClapProcessor`` holds)."""
    model: tp.Any
    feature_extractor: tp.Any
    tokenizer: tp.Any
    name: str = "clap"

    @property
    def device(self):
        """The ``torch.device`` the model is on."""
        return next(self.model.parameters()).device

    @property
    def window_seconds(self) -> float:
        """The audio CLAP hears at once (10 s for laion's models); longer clips are cut."""
        fe = self.feature_extractor
        return float(fe.nb_max_samples) / float(fe.sampling_rate)

    @property
    def logit_scale(self) -> float:
        """The temperature CLAP was trained with: audio-to-text logits are this times the cosine."""
        return float(self.model.logit_scale_a.detach().exp())


def tiny_seed(name: str, tagger: str = "CLAP") -> int | None:
    """``tiny`` -> 0, ``tiny:SEED`` -> SEED, anything else -> None; ValueError for ``tiny:x``
    (naming ``tagger``, whose tiny model it was meant to be)."""
    text = str(name)
    if text != TINY_PREFIX and not text.startswith(TINY_PREFIX + ":"):
        return None
    seed = text.partition(":")[2] or "0"
    if not seed.isdigit():
        raise ValueError(f"bad tiny {tagger} name {text!r}: use 'tiny' or 'tiny:SEED'")
    return int(seed)


def load_clap(name: str, device: str = "cpu") -> Clap:
    """transformers' ``ClapModel`` and ``ClapProcessor`` from a local folder or a hub name
    already in the local cache (never downloads). ``tiny``/``tiny:SEED``: `tiny_clap`.

    Raises:
        ClapUnavailableError: one line, when the weights are not on this machine.
    """
    seed = tiny_seed(name)
    if seed is not None:
        return tiny_clap(seed)
    from transformers import ClapModel, ClapProcessor

    try:
        processor = ClapProcessor.from_pretrained(str(name), local_files_only=True)
        model = ClapModel.from_pretrained(str(name), local_files_only=True)
    except (OSError, ValueError) as err:  # transformers: missing files/cache entries are OSError
        raise ClapUnavailableError(
            f"CLAP model {name!r} is not available offline ({type(err).__name__}); put its files "
            f"(e.g. laion/clap-htsat-unfused) in the Hugging Face cache or a folder to get CLAP figures"
        ) from None
    return Clap(model.to(device).eval(), processor.feature_extractor, processor.tokenizer, str(name))


def tiny_clap(seed: int = 0) -> Clap:
    """A small random CLAP built offline from transformers' config classes (tests only: its
    scores mean nothing). Same ``seed``, same weights. Text goes through a byte-level tokenizer
    (``ByT5Tokenizer``, which needs no files) instead of CLAP's RoBERTa one."""
    import torch
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


def _pooled(output):
    """``[N, P]`` tensor: transformers 5 returns an output object whose ``pooler_output`` is the
    projected, normalised embedding; 4.x returned the tensor itself."""
    import torch
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _mono(wave: np.ndarray) -> np.ndarray:
    """``[n]`` float32 mono of ``[n]`` or ``[C, n]`` (the channels' mean)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        return wave.mean(axis=0)
    if wave.ndim != 1:
        raise ValueError(f"a wave must be [n] or [C, n], got shape {wave.shape}")
    return wave


def resampled_mono(wave: np.ndarray, sample_rate: int, rate: int) -> np.ndarray:
    """``[m]`` float32: ``wave`` mixed to mono and resampled (soxr) to ``rate``."""
    from .audio_io import resample
    return np.ascontiguousarray(resample(_mono(wave), int(sample_rate), int(rate)), dtype=np.float32)


def clap_audio_embeddings(clap: Clap, waves: tp.Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """``[N, P]`` unit-norm float64 CLAP audio embeddings. Clips are mixed to mono, resampled to
    CLAP's rate (48 kHz) and cut to the start of its window (10 s for laion's models): the feature
    extractor would otherwise pick a random crop of a longer clip, and scores would vary."""
    import torch
    fe = clap.feature_extractor
    limit = int(fe.nb_max_samples)
    audio = [resampled_mono(w, sample_rate, fe.sampling_rate)[:limit] for w in waves]
    inputs = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt")
    inputs = {k: v.to(clap.device) for k, v in inputs.items()}
    with torch.no_grad():
        emb = _pooled(clap.model.get_audio_features(**inputs))
    return torch.nn.functional.normalize(emb.double(), dim=-1).cpu().numpy()


def clap_text_embeddings(clap: Clap, texts: tp.Sequence[str]) -> np.ndarray:
    """``[M, P]`` unit-norm float64 CLAP text embeddings."""
    import torch
    tokens = clap.tokenizer(list(texts), padding=True, truncation=True, max_length=CLAP_TEXT_MAX_TOKENS,
                            return_tensors="pt")
    with torch.no_grad():
        emb = _pooled(clap.model.get_text_features(input_ids=tokens["input_ids"].to(clap.device),
                                                   attention_mask=tokens["attention_mask"].to(clap.device)))
    return torch.nn.functional.normalize(emb.double(), dim=-1).cpu().numpy()
