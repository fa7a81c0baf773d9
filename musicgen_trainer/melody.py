"""Melody models (musicgen-melody, -melody-large, -stereo-melody): the training clip's chroma.

As audiocraft's solver does, a melody model trains with the clip itself as its ``self_wav``
condition: the ``ChromaStemConditioner`` separates the clip with demucs, keeps the vocals +
other stems, takes their chroma (``[T, 12]`` frames, hop ``2**radix2_exp / 4`` samples at
32 kHz), projects it (``output_proj``, trained) and the fuser prepends it, with the caption's
T5 tokens, to the LM input. Half the micro-batches (``attribute_dropout.wav.self_wav``) drop
it, and classifier-free guidance dropout drops it with the caption.

The condition tensors are computed with the conditioner settings ``MusicGen.get_pretrained``
applies (``match_len_on_eval=True``, no masking), not with the solver's (chroma2music:
``match_len_on_eval`` false, masking on), so that training sees exactly the condition the
exported model gets at generation (``get_pretrained`` + ``generate``/``generate_with_chroma``):

- a crop's chroma is repeated or cut to ``conditioner.chroma_len`` frames (the model's own
  window: 235 for 30 s), as at generation; the solver feeds the window's frames as they are;
- a dropped melody is the null wav's chroma (one-hot pitch class 0) repeated to
  ``chroma_len`` frames and projected: 235 frames of ``output_proj(one-hot)`` for the released
  models, as ``generate`` without a melody; the solver masks it to one zero vector;
- frames past a short clip's end hold the projected chroma of silence (one-hot pitch class 0);
  the solver masks them to zero vectors.

Here the chroma of every clip is computed once, by the conditioner's own code, and cached
next to the codes (``ChromaCache``: keyed by file and by a fingerprint of the separator and
chroma settings, so a changed file or model recomputes). ``MelodyCrops`` cuts the frames that
match a code crop, and ``condition_tensors`` turns them into the LM's condition tensors
(``lm(sequence, [], condition_tensors=...)``), as the conditioner's ``forward`` (get_pretrained's
settings) would from audio whose stems are the crop of the whole clip's stems. A clip no longer
than the training window is separated as audiocraft's solver separates it: zero-padded to the
window (its dataset pads short segments; demucs normalises its input by the padded clip's mean
and standard deviation, and the frames at the clip's end see the padding), so for prepared
datasets (segments no longer than the window) the chroma is the solver's. A clip longer than the
window is separated whole, never a window of it, as audiocraft's own chroma cache does (the stems
of a crop can differ slightly from separating that crop alone). Non-melody models never reach
this module.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import typing as tp
from pathlib import Path

import numpy as np
import torch

from .data import Clip

from .code_cache import _entry_name, _save_atomic, DEFAULT_CACHE_DIR

logger = logging.getLogger(__name__)

MELODY_ATTRIBUTE = "self_wav"
# lm attribute: audiocraft's attribute-dropout probabilities as loaded, kept by
# step.prepare_lm_for_training before it switches the module off
ATT_DROPOUT_AS_LOADED = "_musicgen_att_dropout_p"
CHROMA_SHIFT_SEED = 0  # demucs' apply_model shifts the audio by a random.randint offset: fixed here


def melody_conditioner(lm):
    """The LM's ``ChromaStemConditioner``, or None for a model without melody conditioning."""
    conditioners = lm.condition_provider.conditioners
    return conditioners[MELODY_ATTRIBUTE] if MELODY_ATTRIBUTE in conditioners else None


def melody_dropout_rate(lm) -> float:
    """audiocraft's attribute-dropout probability of ``self_wav`` for this model (0.5 for the
    released melody models): from its config's ``attribute_dropout.wav.self_wav``, else from its
    ``AttributeDropout`` module as loaded (``step.prepare_lm_for_training`` empties the module,
    so it keeps a copy of what it held). A model that sets none gets 0 with a warning."""
    from omegaconf import OmegaConf
    cfg = getattr(lm, "cfg", None)
    value = OmegaConf.select(cfg, f"attribute_dropout.wav.{MELODY_ATTRIBUTE}") if cfg is not None else None
    if value is None:
        loaded = getattr(lm, ATT_DROPOUT_AS_LOADED, None)
        loaded = lm.att_dropout.p if loaded is None else loaded
        value = dict(loaded.get("wav", {})).get(MELODY_ATTRIBUTE)
    if value is None:
        logger.warning("the model sets no self_wav attribute dropout: its melody is never dropped in training")
        return 0.0
    return float(value)


@contextlib.contextmanager
def seeded_python_random(seed: int = CHROMA_SHIFT_SEED):
    """Python's global ``random`` seeded inside, restored after: demucs draws its time shift
    from it, so the same audio gives the same stems (and chroma) every time."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def chroma_fingerprint(conditioner) -> str:
    """Hash of what the chroma depends on: the separator's weights and stems, the chroma
    extractor's settings and filter bank (16 hex chars)."""
    demucs, chroma = conditioner.__dict__["demucs"], conditioner.chroma
    h = hashlib.sha1()
    h.update(f"{type(demucs).__name__}|{list(demucs.sources)}|{demucs.samplerate}|{demucs.audio_channels}|"
             f"{conditioner.stem_indices.tolist()}|{conditioner.sample_rate}|{chroma.n_chroma}|{chroma.nfft}|"
             f"{chroma.winlen}|{chroma.winhop}|{chroma.argmax}|{chroma.norm}|{CHROMA_SHIFT_SEED}".encode())
    tensors = sorted(demucs.state_dict().items()) + [("fbanks", chroma.fbanks)]
    for name, tensor in tensors:
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def clip_chroma(conditioner, path: Path, min_samples: int = 0) -> np.ndarray:
    """The chroma of a whole file as the conditioner computes it from the decoded clip at its
    sample rate (mono, as audiocraft's condition provider makes it), zero-padded to
    ``min_samples`` first when shorter (a clip shorter than the training window, as audiocraft's
    dataset pads it).

    Returns:
        float32 ``[T, n_chroma]``, T = 1 + max(samples, min_samples) // hop.
    """
    from dataset_tools.audio_io import load_audio
    audio, _ = load_audio(path, sample_rate=conditioner.sample_rate, mono=True)
    if audio.shape[-1] < min_samples:
        audio = np.pad(audio, (0, min_samples - audio.shape[-1]))
    wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None]  # [1, 1, n]
    with seeded_python_random():
        chroma = conditioner._compute_wav_embedding(wav.to(conditioner.device), conditioner.sample_rate)
    return chroma[0].float().cpu().numpy()


class ChromaCache:
    """Chroma of a dataset's clips for one melody conditioner, beside the code cache:
    ``<cache_dir>/chroma-<fingerprint>/<entry>.npy`` with the code cache's entry keys."""

    def __init__(self, conditioner, cache_dir: tp.Union[str, Path, None] = None, window_samples: int = 0):
        self.conditioner = conditioner
        self.fingerprint = chroma_fingerprint(conditioner)
        self.window_samples = int(window_samples)  # clips shorter than this are zero-padded to it
        self.dir = Path(cache_dir or DEFAULT_CACHE_DIR) / f"chroma-{self.fingerprint}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _padded(self, clip: Clip) -> bool:
        """Whether ``clip`` is (or may be: unknown length) shorter than the window."""
        if not self.window_samples:
            return False
        seconds = _header_seconds(clip.path)
        return seconds is None or seconds * self.conditioner.sample_rate < self.window_samples

    def entry(self, clip: Clip) -> Path:
        # A short clip's chroma depends on the window it is padded to; a long one's does not.
        key = f"{self.fingerprint}|pad{self.window_samples}" if self._padded(clip) else self.fingerprint
        return self.dir / _entry_name(clip.path, key)

    def chroma_for(self, clips: tp.Sequence[Clip], progress: bool = True) -> list:
        """``[T, n_chroma]`` float32 arrays (memory-mapped), computing the missing ones.
        ``clips`` are ones the code cache could read."""
        from tqdm.auto import tqdm
        entries = [self.entry(clip) for clip in clips]
        missing = sum(not e.exists() for e in entries)
        bar = tqdm(total=missing, desc="melody chroma (once)", unit="file", disable=not progress or not missing)
        out = []
        for clip, entry in zip(clips, entries):
            if not entry.exists():
                pad = self.window_samples if self._padded(clip) else 0
                _save_atomic(clip_chroma(self.conditioner, clip.path, pad), entry)
                bar.update(1)
            out.append(np.load(entry, mmap_mode="r"))
        bar.close()
        return out


def _header_seconds(path: Path) -> tp.Optional[float]:
    """A file's duration from its header (None when the header cannot tell)."""
    import soundfile as sf
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate if info.samplerate else None
    except Exception:  # not a libsndfile format (mp3 via ffmpeg...): unknown
        return None


class MelodyCrops:
    """Chroma frames matching code crops, for ``CropSampler`` and validation batches.

    Args:
        chromas: per clip, ``[T, n_chroma]`` (``ChromaCache.chroma_for``), in the codes' order.
        frame_rate: the codes' frames per second (50).
        dropout: probability that a micro-batch's ``self_wav`` is dropped (the sampler draws it).
    """

    def __init__(self, chromas: tp.Sequence[np.ndarray], conditioner, frame_rate: float, dropout: float = 0.0):
        self.chromas = list(chromas)
        self.frame_rate, self.dropout = float(frame_rate), float(dropout)
        self.sample_rate = conditioner.sample_rate
        self.hop, self.nfft = conditioner.chroma.winhop, conditioner.chroma.nfft
        # Frames past a clip's end: the chroma of silence (the window's zero padding) under
        # get_pretrained's settings (audiocraft's solver masks them to zero vectors instead).
        with torch.no_grad():
            zeros = torch.zeros(1, self.nfft, device=conditioner.chroma.fbanks.device)
            self.silence = conditioner.chroma(zeros)[0, 0].float().cpu().numpy()

    def crop(self, index: int, start: int, n_frames: int) -> np.ndarray:
        """Chroma of the window of ``n_frames`` codes from code frame ``start`` of clip ``index``.

        Returns:
            float32 ``[1 + max(window samples, nfft) // hop, n_chroma]``: the frames the
            conditioner computes from that window's audio (centred STFT frames, frame j at
            ``start`` seconds + j hops), silence past the clip's end.
        """
        samples = int(round(n_frames * self.sample_rate / self.frame_rate))
        length = 1 + max(samples, self.nfft) // self.hop
        first = int(round(start / self.frame_rate * self.sample_rate / self.hop))
        full = self.chromas[index]
        out = np.empty((length, full.shape[-1]), dtype=np.float32)
        part = np.asarray(full[first:first + length], dtype=np.float32)
        out[:len(part)] = part
        out[len(part):] = self.silence
        return out


def _match_length(conditioner, chroma: torch.Tensor) -> torch.Tensor:
    """``ChromaStemConditioner._get_wav_embedding``'s last step: repeat or cut the chroma to
    the training window's frame count (always on for models loaded by ``MusicGen``)."""
    if not conditioner.match_len_on_eval:
        return chroma
    target = conditioner.chroma_len
    if chroma.shape[1] < target:
        chroma = chroma.repeat(1, -(-target // chroma.shape[1]), 1)
    return chroma[:, :target]


def null_chroma(conditioner, batch: int) -> torch.Tensor:
    """The chroma of the null melody (dropout, or generation without a melody): what the
    conditioner computes from audiocraft's null wav. ``[batch, T, n_chroma]``."""
    from audiocraft.modules.conditioners import WavCondition
    device = conditioner.output_proj.weight.device
    null = WavCondition(torch.zeros(1, 1, 1, device=device), torch.zeros(1, dtype=torch.long, device=device),
                        [conditioner.sample_rate], [None], [None])
    with torch.no_grad():
        chroma = conditioner._get_wav_embedding(null)
    return chroma.expand(batch, -1, -1)


def melody_tensors(conditioner, chroma: tp.Optional[torch.Tensor], batch: int) -> tuple:
    """The conditioner's ``forward`` from chroma instead of audio.

    Args:
        chroma: ``[B, T, n_chroma]`` crops (``MelodyCrops.crop``), or None for the null melody.
    Returns:
        (embeddings ``[B, T', dim]``, mask ``[B, T']``), T' the matched length; the projection
        carries gradients.
    """
    # MusicGen.get_pretrained (and our loaders) turn masking off on melody models: every chroma
    # frame counts, so no lengths are needed.
    assert not conditioner._use_masking, "melody conditioner with masking: load the model with load_model"
    chroma = null_chroma(conditioner, batch) if chroma is None else _match_length(conditioner, chroma)
    embeds = conditioner.output_proj(chroma.to(conditioner.output_proj.weight))
    mask = torch.ones_like(embeds[..., 0])
    return embeds * mask.unsqueeze(-1), mask


def condition_tensors(lm, captions: tp.Sequence[tp.Optional[str]], chroma: tp.Optional[torch.Tensor]) -> dict:
    """Condition tensors of a melody LM for captions (None: null caption) and chroma crops
    (None: null melody), in the order the condition provider produces them (text, then wav),
    which is the order the fuser concatenates them in."""
    provider = lm.condition_provider
    out = {}
    for name in provider.text_conditions:
        if name != "description":  # the only text attribute of the released models (and of conditions_for)
            raise ValueError(f"melody models with a {name!r} text condition are not supported")
        text = provider.conditioners[name]
        out[name] = text(text.tokenize(list(captions)))
    out[MELODY_ATTRIBUTE] = melody_tensors(provider.conditioners[MELODY_ATTRIBUTE], chroma, len(captions))
    return out


def prepare_melody(model, train_clips, valid_clips, cache_dir, progress: bool = True,
                   window_seconds: float = 0.0):
    """(train crops with audiocraft's self_wav dropout rate, valid crops without dropout) for a
    melody model, computing missing chroma (clips shorter than ``window_seconds``, the training
    window, zero-padded to it first); (None, None) for other models."""
    conditioner = melody_conditioner(model.lm)
    if conditioner is None:
        return None, None
    cache = ChromaCache(conditioner, cache_dir, int(round(window_seconds * conditioner.sample_rate)))
    train = MelodyCrops(cache.chroma_for(train_clips, progress), conditioner, model.frame_rate,
                        melody_dropout_rate(model.lm))
    valid = MelodyCrops(cache.chroma_for(valid_clips, progress), conditioner, model.frame_rate)
    return train, valid
