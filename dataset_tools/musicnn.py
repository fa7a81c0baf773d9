"""musicnn (Pons & Serra, MTG; ISC licence) in torch: 50 music tags per 3 s of audio.

The two pretrained taggers of the ``musicnn`` wheel on PyPI, ``MTT_musicnn`` (MagnaTagATune:
instruments, vocals, tempo/loudness words, styles) and ``MSD_musicnn`` (Million Song Dataset
last.fm tags: genres, moods, decades), re-implemented here so that they run on the torch this
project installs (the package itself pins numpy<1.17 and builds TF1 graphs). Their weights are
converted once from the wheel's TensorFlow checkpoints by ``musicnn_fetch`` (``python -m
dataset_tools fetch-tagger musicnn``) into safetensors, which ``load_musicnn`` reads.

Input: a log-mel spectrogram of 16 kHz mono audio (``resampled_16k``: resampy's kaiser_best, as
musicnn was trained; ``log_mel``: 512-point STFT, hop 256, 96
Slaney mel bands, ``log10(10000 * power + 1)``), cut into patches of ``PATCH_FRAMES`` = 187
frames (3 s, what the models were trained on; ``patches``). The network (``MusicnnNet``):

* front-end, on ``[B, 1, T, 96]`` after a one-channel batch norm: two *timbral* convolutions
  spanning 7 frames and 38 / 67 mel bands (time zero-padded by 3 on each side, so T is kept)
  and three *temporal* ones spanning 128 / 64 / 32 frames and one band ("same" padding);
  each is ReLU, batch norm, then the maximum over the remaining frequency axis:
  ``[B, 204 + 204 + 51 + 51 + 51 = 561, T]``;
* mid-end: three 1-D convolutions of 7 frames (64 filters, ReLU, batch norm), the 2nd and 3rd
  with residual connections; the front-end and the three outputs are concatenated:
  ``[B, 561 + 3 * 64 = 753, T]``;
* back-end: the maximum and the mean over time, interleaved per feature as TF flattened them
  (``[max_0, mean_0, max_1, ...]``, ``[B, 1506]``), batch norm, a dense layer of 200 (ReLU,
  batch norm) and the output layer: ``[B, 50]`` logits; tag probabilities are their sigmoids
  (independent tags, not a softmax).

Batch norms are in inference mode with TF's epsilon (1e-3). Widths are arguments so that
``tiny_musicnn`` (tests) can build a small random one; its tags mean nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# torch is imported inside the functions, as in clap.py: prepare imports this module's names.

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187          # librosa.time_to_frames(3 s) + 1, as musicnn's extractor feeds its models
BN_EPS = 1e-3               # tf.compat.v1.layers.batch_normalization's default
# A patch whose RMS is below -60 dBFS is near silence: the nets still give it tags (digital
# silence scores "guitar" 0.31), so it is left out of a track's mean.
SILENT_RMS = 1e-3
RESAMPLER = "kaiser_best"   # resampy's filter: librosa.load(sr=16000) in the librosa musicnn was trained with
# Bumped whenever the audio -> probabilities path changes, so cached tag vectors are recomputed
# (it is part of the taggers' identity, hence of the cache keys). 2: resampy kaiser_best, not soxr;
# near-silent patches left out of the mean.
PREPROCESSING_VERSION = 2
MODELS = ("mtt", "msd")
WEIGHT_FILES = {"mtt": "musicnn-mtt.safetensors", "msd": "musicnn-msd.safetensors"}
INFO_FILE = "musicnn.json"
# The models' tags, in their output order (musicnn's configuration.py).
MTT_TAGS = ("guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
            "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
            "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal",
            "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age",
            "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird", "country",
            "metal", "female voice", "choral")
MSD_TAGS = ("rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
            "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
            "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
            "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist",
            "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy", "catchy", "funk",
            "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy")
TAGS = {"mtt": MTT_TAGS, "msd": MSD_TAGS}
# Widths of the released models (musicnn's build_musicnn: 1.6 * 128 and 1.6 * 32 front-end filters).
FULL = dict(timbral=204, temporal=51, mid=64, dense=200)
TINY = dict(timbral=6, temporal=3, mid=4, dense=8)


def _net_class():
    import torch
    from torch import nn

    def bn2(c):
        return nn.BatchNorm2d(c, eps=BN_EPS)

    def bn1(c):
        return nn.BatchNorm1d(c, eps=BN_EPS)

    class MusicnnNet(nn.Module):
        """``[B, T, 96]`` log-mel patches -> ``[B, classes]`` logits (see the module docstring)."""

        def __init__(self, timbral=204, temporal=51, mid=64, dense=200, classes=50):
            super().__init__()
            self.input_bn = bn2(1)
            # (name, frames, mel bands, filters): the order TF created (and concatenated) them in.
            self.front_spec = [("timbral74", 7, int(0.4 * N_MELS), timbral),
                               ("timbral77", 7, int(0.7 * N_MELS), timbral),
                               ("temporal128", 128, 1, temporal), ("temporal64", 64, 1, temporal),
                               ("temporal32", 32, 1, temporal)]
            self.front = nn.ModuleDict({name: nn.Conv2d(1, n, (frames, bands))
                                        for name, frames, bands, n in self.front_spec})
            self.front_bn = nn.ModuleDict({name: bn2(n) for name, _, _, n in self.front_spec})
            width = 2 * timbral + 3 * temporal
            self.mid = nn.ModuleList([nn.Conv1d(width, mid, 7), nn.Conv1d(mid, mid, 7), nn.Conv1d(mid, mid, 7)])
            self.mid_bn = nn.ModuleList([bn1(mid) for _ in range(3)])
            features = width + 3 * mid
            self.pool_bn = bn1(2 * features)
            self.dense = nn.Linear(2 * features, dense)
            self.dense_bn = bn1(dense)
            self.out = nn.Linear(dense, classes)

        def forward(self, x):
            """``x`` ``[B, T, 96]`` -> logits ``[B, classes]`` (any T >= 1; trained on T = 187)."""
            f = torch.nn.functional
            x = self.input_bn(x.unsqueeze(1))                                   # [B, 1, T, 96]
            fronts = []
            for name, frames, bands, _ in self.front_spec:
                if frames == 7:      # timbral: zero rows around the normalised input, "valid" bands
                    padded = f.pad(x, (0, 0, 3, 3))
                else:                # temporal: TF "same" for an even kernel puts the extra row after
                    padded = f.pad(x, (0, 0, (frames - 1) // 2, frames // 2))
                y = self.front_bn[name](torch.relu(self.front[name](padded)))   # [B, n, T, bands']
                fronts.append(y.amax(dim=3))                                    # [B, n, T]
            front = torch.cat(fronts, dim=1)                                    # [B, 561, T]
            outs, h = [front], front
            for i, (conv, bn) in enumerate(zip(self.mid, self.mid_bn)):
                y = bn(torch.relu(conv(f.pad(h, (3, 3)))))                      # [B, 64, T]
                h = y if i == 0 else y + h
                outs.append(h)
            feats = torch.cat(outs, dim=1)                                      # [B, 753, T]
            pooled = torch.stack([feats.amax(dim=2), feats.mean(dim=2)], dim=2).flatten(1)  # [B, 1506]
            hidden = self.dense_bn(torch.relu(self.dense(self.pool_bn(pooled))))
            return self.out(hidden)

    return MusicnnNet


def musicnn_net(**widths):
    """A ``MusicnnNet`` (``FULL`` widths unless given), in eval mode."""
    return _net_class()(**(widths or FULL)).eval()


# --- preprocessing ----------------------------------------------------------------------------
def log_mel(wave: np.ndarray) -> np.ndarray:
    """``[T, 96]`` float32 of ``[n]`` mono 16 kHz samples: librosa's ``melspectrogram`` (centred
    frames, reflect padding as the librosa of musicnn's time used, periodic Hann window, power 2,
    Slaney mel bands), rounded to float16 as musicnn stored it, then ``log10(10000 * mel + 1)``
    in float32 (musicnn's extractor takes this log in float16, which overflows to inf above a mel
    power of 6.55: loud bins of ordinary music)."""
    import librosa
    import torch
    wave = torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32))
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect",
                      return_complex=True).abs() ** 2                             # [257, T]
    bank = torch.as_tensor(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS))  # [96, 257]
    mel = (bank @ spec).T.numpy().astype(np.float16).astype(np.float32)
    return np.log10(10000.0 * mel + 1.0).astype(np.float32)


def resampled_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """``[m]`` float32 16 kHz mono of ``wave`` (``[n]`` or ``[channels, n]``) resampled with
    resampy's ``kaiser_best``: what ``librosa.load(sr=16000)`` did when musicnn was trained and
    what its extractor still assumes. soxr (this project's resampler elsewhere) keeps more of
    the band near 8 kHz, which moves the upper mel bands (mean 0.1-0.2 log10) and the tags."""
    import librosa
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim > 1:
        wave = wave.mean(axis=0)
    if int(sample_rate) != SAMPLE_RATE:
        wave = librosa.resample(wave, orig_sr=int(sample_rate), target_sr=SAMPLE_RATE, res_type=RESAMPLER)
    return np.ascontiguousarray(wave, dtype=np.float32)


def audible(wave: np.ndarray, count: int) -> np.ndarray:
    """``[count]`` bool: which of the ``count`` patches of ``wave`` (``[n]`` 16 kHz; ``patches``
    of its spectrogram) have an RMS of at least ``SILENT_RMS``. One repeated patch (a clip
    under 3 s) is judged on the whole clip."""
    span = PATCH_FRAMES * HOP
    parts = [wave] if len(wave) < span else [wave[i * span:(i + 1) * span] for i in range(count)]
    return np.array([len(p) > 0 and float(np.sqrt(np.mean(np.square(p, dtype=np.float64)))) >= SILENT_RMS
                     for p in parts], dtype=bool)


def patches(spec: np.ndarray, frames: int = PATCH_FRAMES) -> np.ndarray:
    """``[P, frames, 96]``: ``spec`` ``[T, 96]`` cut into consecutive patches (the remainder
    dropped, as musicnn's extractor does); a spectrogram shorter than one patch is repeated to
    fill it (the training's ``repeat-pad``)."""
    if len(spec) < frames:
        spec = np.tile(spec, (-(-frames // max(len(spec), 1)), 1))[:frames]
    count = len(spec) // frames
    return np.ascontiguousarray(spec[:count * frames].reshape(count, frames, spec.shape[1]))


# --- the two taggers together -------------------------------------------------------------------
@dataclass
class Musicnn:
    """The MTT and MSD taggers (``nets``) and their tags; ``name`` is its identity."""
    nets: dict
    name: str

    @property
    def tags(self) -> list[str]:
        """The ``2 * 50`` tags of ``probabilities``, as ``"mtt:guitar"``... (MTT first)."""
        return [f"{m}:{t}" for m in MODELS for t in TAGS[m]]

    def patch_probabilities(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """``[P, 100]`` float64: the tag probabilities (MTT then MSD) of each 3 s patch of
        ``wave`` (``[n]`` mono at ``sample_rate``; a clip under 3 s is one repeated patch) that
        is not near silence (``audible``): P may be 0."""
        import torch
        wave = resampled_16k(wave, sample_rate)
        x = patches(log_mel(wave))
        x = torch.as_tensor(x[audible(wave, len(x))])
        if not len(x):
            return np.zeros((0, sum(len(TAGS[m]) for m in MODELS)))
        with torch.no_grad():
            probs = [torch.sigmoid(self.nets[m](x)).double() for m in MODELS]
        return torch.cat(probs, dim=1).numpy()


def tiny_musicnn(seed: int = 0) -> Musicnn:
    """Small random MTT and MSD nets (tests only: their tags mean nothing); same seed, same weights."""
    import torch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = {m: musicnn_net(**TINY) for m in MODELS}
        for net in nets.values():   # spread the outputs so that thresholds pick some tags
            torch.nn.init.normal_(net.out.bias, std=1.0)
    return Musicnn(nets, f"tiny-musicnn:{seed}")


def weight_paths(folder) -> dict:
    """``{"mtt": path, "msd": path, "info": path}`` of the converted files in ``folder``."""
    folder = Path(folder)
    return dict({m: folder / WEIGHT_FILES[m] for m in MODELS}, info=folder / INFO_FILE)


def load_musicnn(folder) -> Musicnn:
    """The converted taggers in ``folder`` (``fetch-tagger musicnn`` wrote them): safetensors
    only, every tensor name and shape checked (``load_state_dict(strict=True)``)."""
    from safetensors.torch import load_file
    paths = weight_paths(folder)
    json.loads(paths["info"].read_text(encoding="utf-8"))
    nets = {}
    for m in MODELS:
        net = musicnn_net()
        net.load_state_dict(load_file(str(paths[m])), strict=True)
        nets[m] = net.eval()
    return Musicnn(nets, f"musicnn:{Path(folder).resolve()}")
