"""A tiny MusicGen built offline from audiocraft's own classes.

Same structure as the released models, random weights, a few million parameters:

- compression model: audiocraft's ``EncodecModel`` (SEANet encoder/decoder + residual
  vector quantiser) at 32 kHz, 4 codebooks of 2048 codes, 50 frames per second;
- language model: audiocraft's ``LMModel`` with the delay codebook pattern, cross-attention
  on the text condition and classifier-free guidance dropout;
- text conditioner: audiocraft's ``T5Conditioner`` whose T5 encoder is a randomly
  initialised ``transformers.T5EncoderModel`` and whose tokenizer is the byte-level
  ``ByT5Tokenizer`` (needs no vocabulary file, so it is built with no download).

Everything is deterministic for a given seed. The frozen T5 is not part of the LM state
dict (audiocraft keeps it out on purpose), so exports of tiny models carry its weights
separately (``tiny_export_extras``, written by ``exports.export_model``).

``tiny-melody`` (last section) adds musicgen-melody's chroma conditioning and layout (chroma and
caption prepended to the input, no cross-attention), over a small random demucs separator whose
weights exports carry the same way.
"""
from __future__ import annotations

import copy
import typing as tp
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from .runtime import MUSICGEN_CARD, MUSICGEN_CODEBOOKS, MUSICGEN_MAX_SECONDS, MUSICGEN_SAMPLE_RATE, to_device

TINY_NAME = "tiny"
TINY_STEREO_NAME = "tiny-stereo"
# T5Conditioner only knows hub names: the local encoder borrows the name of the released T5
# of the same width, so that the exported config is one audiocraft's builder accepts.
T5_ALIASES = {512: "t5-small", 768: "t5-base", 1024: "t5-large"}


@dataclass
class TinyConfig:
    """Sizes of the tiny model. Defaults keep a CPU train+generate test to seconds."""
    seed: int = 0
    lm_dim: int = 64
    lm_heads: int = 4
    lm_layers: int = 2
    t5_dim: int = 512
    t5_layers: int = 1
    t5_heads: int = 4
    t5_ff: int = 256
    codec_filters: int = 4
    codec_dim: int = 32
    codec_lstm: int = 0
    max_duration: float = MUSICGEN_MAX_SECONDS
    cfg_dropout: float = 0.3
    word_dropout: float = 0.3
    stereo: bool = False  # 2 channels, 8 interleaved codebooks, as facebook/musicgen-stereo-*

    def __post_init__(self):
        if self.lm_dim % self.lm_heads:
            raise ValueError(f"lm_dim ({self.lm_dim}) must be divisible by lm_heads ({self.lm_heads})")
        if self.max_duration <= 0:
            raise ValueError("max_duration must be positive")
        if self.t5_dim not in T5_ALIASES:
            raise ValueError(f"t5_dim must be one of {sorted(T5_ALIASES)}")


# Random models with the released models' sizes (LM as in audiocraft's model_scale configs,
# T5 and EnCodec as in the checkpoints): offline stand-ins for benchmarks and memory checks.
RANDOM_PRESETS = {
    "small": dict(lm_dim=1024, lm_heads=16, lm_layers=24),
    "medium": dict(lm_dim=1536, lm_heads=24, lm_layers=48),
    "large": dict(lm_dim=2048, lm_heads=32, lm_layers=48),
}
_RELEASED_T5_AND_CODEC = dict(t5_dim=768, t5_layers=12, t5_heads=12, t5_ff=3072,
                              codec_filters=64, codec_dim=128, codec_lstm=2)


def random_preset(size: str, seed: int = 0) -> TinyConfig:
    """TinyConfig with the sizes of facebook/musicgen-{size} (random weights)."""
    if size not in RANDOM_PRESETS:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(RANDOM_PRESETS)}")
    return TinyConfig(seed=seed, **RANDOM_PRESETS[size], **_RELEASED_T5_AND_CODEC)


def t5_config_dict(cfg: TinyConfig) -> dict:
    """Keyword arguments of the tiny ``transformers.T5Config`` (byte-level vocabulary)."""
    return dict(vocab_size=384, d_model=cfg.t5_dim, d_kv=cfg.t5_dim // cfg.t5_heads, d_ff=cfg.t5_ff,
                num_layers=cfg.t5_layers, num_heads=cfg.t5_heads, dropout_rate=0.0,
                feed_forward_proj="relu", is_encoder_decoder=False, use_cache=False,
                pad_token_id=0, eos_token_id=1)


def _make_text_conditioner_class():
    # Imported lazily: audiocraft's conditioners module pulls in spacy and xformers.
    from audiocraft.modules.conditioners import T5Conditioner, TextConditioner
    from audiocraft.utils.autocast import TorchAutocast

    class TinyT5Conditioner(T5Conditioner):
        """``T5Conditioner`` with a local random T5 encoder and a byte-level tokenizer.

        Only ``__init__`` differs: tokenisation, word dropout, masking and the trainable
        output projection are audiocraft's own code.
        """

        def __init__(self, output_dim: int, device: str, t5_config: dict,
                     word_dropout: float = 0.0, t5_state: tp.Optional[dict] = None, tokenizer=None):
            from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
            TextConditioner.__init__(self, t5_config["d_model"], output_dim)
            self.device = device
            self.name = T5_ALIASES[t5_config["d_model"]]
            self.finetune = False
            self.word_dropout = word_dropout
            self.autocast = TorchAutocast(enabled=False)
            self.normalize_text = False
            # ByT5 appends </s>, so an empty (null) caption still yields one token.
            # A model converted from transformers' format brings its own (e.g. t5-base's sentencepiece).
            self.t5_tokenizer = tokenizer if tokenizer is not None else ByT5Tokenizer()
            t5 = T5EncoderModel(T5Config(**t5_config)).eval()
            if t5_state is not None:
                t5.load_state_dict(t5_state)
            t5.requires_grad_(False)
            # Kept out of the module tree, as audiocraft does for a frozen T5.
            self.__dict__["t5"] = t5.to(device)

    return TinyT5Conditioner


_CONDITIONER_CLASS = None


def tiny_text_conditioner(output_dim: int, device: str, t5_config: dict, word_dropout: float,
                          t5_state: tp.Optional[dict] = None, tokenizer=None):
    global _CONDITIONER_CLASS
    if _CONDITIONER_CLASS is None:
        _CONDITIONER_CLASS = _make_text_conditioner_class()
    return _CONDITIONER_CLASS(output_dim, device, t5_config, word_dropout, t5_state, tokenizer)


def _named_tokenizer(xp_cfg: DictConfig, export_folder=None):
    """The tokenizer an ``xp.cfg`` names (``musicgen_trainer.tokenizer``, set for models converted
    from transformers' format with a sentencepiece T5): the export's own copy
    (``musicgen_trainer.tokenizer_folder``, a name inside ``export_folder``: see
    ``export_tokenizer``), else by hub name from the cache, as audiocraft's own ``T5Conditioner``
    loads it; None for the byte-level default. ValueError (one line) otherwise.

    The xp.cfg comes with a downloaded export, so both values are the sender's: only the T5 names
    are accepted, the folder must lie inside the export (no absolute path, ``..`` or link out),
    and the tokenizer is built by transformers' own ``T5Tokenizer`` class, never by an ``Auto*``
    class that would offer to run code shipped beside it."""
    from .export_tokenizer import tokenizer_folder_in
    ours = xp_cfg.musicgen_trainer
    name = ours.get("tokenizer", None)
    if not name or name == "byt5":
        return None
    if str(name) not in T5_ALIASES.values():
        raise TokenizerUnavailable(f"the model names an unknown text tokenizer {str(name)[:80]!r} "
                                   f"(expected byt5 or {', '.join(T5_ALIASES.values())})")
    relative = ours.get("tokenizer_folder", None)
    if relative:
        if export_folder is None:  # only an export's config names a folder (in memory: the tokenizer itself)
            raise TokenizerUnavailable("the model names a text tokenizer folder but no export folder holds it")
        try:
            folder = tokenizer_folder_in(export_folder, str(relative))
        except ValueError as exc:
            raise TokenizerUnavailable(str(exc)) from None
        return load_t5_tokenizer(str(folder), local=True)
    return load_t5_tokenizer(str(name), local=False)


T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def load_t5_tokenizer(source: str, local: bool):
    """A sentencepiece T5 tokenizer from a folder (``local``) or the hub cache, with transformers'
    concrete ``T5Tokenizer`` (files are read as data: no custom code, ``trust_remote_code=False``).
    A folder must hold its vocabulary (``tokenizer.json`` or ``spiece.model``): without one,
    transformers builds a tokenizer of special tokens only that turns every caption into unknowns.
    ``TokenizerUnavailable`` (one line) otherwise."""
    import os
    from transformers import T5Tokenizer
    if local and not any(os.path.isfile(os.path.join(source, f)) for f in T5_TOKENIZER_FILES):
        raise TokenizerUnavailable(f"the model's text tokenizer folder {source} has no vocabulary "
                                   f"({' or '.join(T5_TOKENIZER_FILES)})")
    try:
        if not local and not _hub_vocabulary(source):
            raise TokenizerUnavailable(f"the model's text tokenizer ({source}) is neither cached nor downloadable "
                                       f"(no {' or '.join(T5_TOKENIZER_FILES)})")
        return T5Tokenizer.from_pretrained(source, local_files_only=local, trust_remote_code=False)
    except TokenizerUnavailable:
        raise
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise TokenizerUnavailable(f"the model's text tokenizer ({source}) cannot be loaded: {first}") from None


def _hub_vocabulary(name: str) -> bool:
    """Whether the hub repo ``name`` (cache first, as transformers does) has a T5 vocabulary file."""
    from transformers.utils import cached_file
    return any(cached_file(name, f, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False) for f in T5_TOKENIZER_FILES)


class TokenizerUnavailable(ValueError):
    """A converted model's named tokenizer is neither in its folder nor in the cache (one line)."""


def tiny_xp_config(cfg: TinyConfig) -> DictConfig:
    """The audiocraft experiment config (``xp.cfg``) describing a tiny model.

    It has the keys audiocraft's builders read, shaped like musicgen-small's, so the
    export is loadable by ``audiocraft.models.loaders``. The extra ``musicgen_trainer``
    section records what audiocraft cannot know: that T5 is the local tiny one.
    """
    xp = OmegaConf.create({
        "sample_rate": MUSICGEN_SAMPLE_RATE,
        "channels": 1,
        "device": "cpu",
        "dtype": "float32",
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": MUSICGEN_SAMPLE_RATE,
                    "channels": 1, "causal": False, "renormalize": False},
        "seanet": {"dimension": cfg.codec_dim, "channels": 1, "causal": False,
                   "n_filters": cfg.codec_filters, "n_residual_layers": 1,
                   "ratios": [8, 5, 4, 4],  # hop 640 -> 50 frames/s at 32 kHz, as released
                   "activation": "ELU", "activation_params": {"alpha": 1.0},
                   "norm": "weight_norm", "norm_params": {}, "kernel_size": 7,
                   "residual_kernel_size": 3, "last_kernel_size": 7, "dilation_base": 2,
                   "pad_mode": "constant", "true_skip": True, "compress": 2, "lstm": cfg.codec_lstm,
                   "disable_norm_outer_blocks": 0,
                   "decoder": {"trim_right_ratio": 1.0, "final_activation": None,
                               "final_activation_params": None},
                   "encoder": {}},
        "rvq": {"n_q": MUSICGEN_CODEBOOKS, "q_dropout": False, "bins": MUSICGEN_CARD, "decay": 0.99,
                # kmeans_init=True would leave the codebooks at zero until trained.
                "kmeans_init": False, "kmeans_iters": 50, "threshold_ema_dead_code": 2,
                "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {"modeling": "delay",
                              "delay": {"delays": list(range(MUSICGEN_CODEBOOKS)),
                                        "flatten_first": 0, "empty_initial": 0}},
        "transformer_lm": {
            "dim": cfg.lm_dim, "num_heads": cfg.lm_heads, "num_layers": cfg.lm_layers,
            "hidden_scale": 4, "n_q": MUSICGEN_CODEBOOKS, "card": MUSICGEN_CARD, "dropout": 0.0,
            "emb_lr": None, "activation": "gelu", "norm_first": True, "bias_ff": False,
            "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True,
            "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "layer_scale": None, "positional_embedding": "sin", "xpos": False,
            "checkpointing": "none", "weight_init": "gaussian", "depthwise_init": "current",
            "zero_bias_init": True, "norm": "layer_norm", "cross_attention": True,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None,
            "kv_repeat": 1, "two_step_cfg": False},
        "classifier_free_guidance": {"training_dropout": cfg.cfg_dropout, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                  "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {
            "name": T5_ALIASES[cfg.t5_dim], "finetune": False, "word_dropout": cfg.word_dropout,
            "normalize_text": False}}},
        "dataset": {"segment_duration": cfg.max_duration},
        "musicgen_trainer": {"text_encoder": "tiny", "t5_config": t5_config_dict(cfg),
                             "tiny": asdict(cfg)},
    })
    return stereo_xp_config(xp) if cfg.stereo else xp


def stereo_xp_config(xp: DictConfig) -> DictConfig:
    """A mono ``xp.cfg`` turned into its stereo variant, as audiocraft's stereo fine-tuning grid
    (``grids/musicgen/musicgen_stereo_finetune_32khz.py``) makes the released stereo models.

    The codec itself stays mono: on load, ``MusicGen`` wraps it in
    ``InterleaveStereoCompressionModel`` (because of ``interleave_stereo_codebooks``), which
    encodes left and right separately and interleaves their codebooks, ``[B, 2 x 4, T]`` ordered
    L1 R1 L2 R2 ...; the LM predicts the 8 streams with delays 0 0 1 1 2 2 3 3, so each
    left/right pair of a level shares a delay.
    """
    xp.channels = 2
    xp.transformer_lm.n_q = 2 * MUSICGEN_CODEBOOKS
    xp.codebooks_pattern.delay.delays = [d for d in range(MUSICGEN_CODEBOOKS) for _ in range(2)]
    xp.interleave_stereo_codebooks = {"use": True, "per_timestep": False}
    return xp


def build_lm_from_config(xp_cfg: DictConfig, device: str = "cpu",
                         t5_state: tp.Optional[dict] = None, demucs_state: tp.Optional[dict] = None,
                         tokenizer=None, export_folder=None):
    """Build audiocraft's ``LMModel`` from an ``xp.cfg`` whose text encoder is the tiny T5.

    Mirrors ``audiocraft.models.builders.get_lm_model`` except for the conditioners, which
    audiocraft would download from the hub (T5; for tiny-melody also the demucs separator).
    ``tokenizer``: the text tokenizer (default: the one the config names, see ``_named_tokenizer``;
    ``export_folder``: the export the config comes from, which holds its tokenizer copy).
    """
    from audiocraft.models import builders
    from audiocraft.models.lm import LMModel
    from audiocraft.modules.conditioners import ConditioningProvider
    from audiocraft.utils.utils import dict_from_config

    kwargs = dict_from_config(xp_cfg.transformer_lm)
    kwargs.pop("q_modeling", None)
    # As audiocraft's builder: cross-attention layers when the config asks for them or the fuser
    # cross-attends to a condition (tiny: the caption); none for tiny-melody, which prepends both.
    kwargs["cross_attention"] = bool(kwargs.get("cross_attention")) or len(xp_cfg.fuser.cross) > 0
    t5_cfg = xp_cfg.conditioners.description.t5
    conditioner = tiny_text_conditioner(
        output_dim=kwargs["dim"], device=device,
        t5_config=OmegaConf.to_container(xp_cfg.musicgen_trainer.t5_config),
        word_dropout=float(t5_cfg.word_dropout), t5_state=t5_state,
        tokenizer=tokenizer if tokenizer is not None else _named_tokenizer(xp_cfg, export_folder))
    conditioners = {"description": conditioner}
    if "self_wav" in xp_cfg.conditioners:  # tiny-melody (see the section below)
        conditioners["self_wav"] = tiny_chroma_conditioner(xp_cfg, kwargs["dim"], device, demucs_state)
    # In the config's order, as audiocraft's builder does.
    conditioners = {name: conditioners[name] for name in xp_cfg.conditioners}
    provider = ConditioningProvider(conditioners, device=device)
    cfg_free = xp_cfg.classifier_free_guidance
    lm = LMModel(
        pattern_provider=builders.get_codebooks_pattern_provider(kwargs["n_q"], xp_cfg.codebooks_pattern),
        condition_provider=provider,
        fuser=builders.get_condition_fuser(xp_cfg),
        cfg_dropout=cfg_free.training_dropout,
        cfg_coef=cfg_free.inference_coef,
        attribute_dropout=dict_from_config(xp_cfg.attribute_dropout),
        dtype=getattr(torch, xp_cfg.dtype),
        device=device,
        **kwargs,
    ).to(device)
    lm.cfg = xp_cfg
    return lm


def build_tiny_musicgen(config: tp.Optional[TinyConfig] = None, device: str = "cpu", name: str = TINY_NAME):
    """Return a randomly initialised tiny ``audiocraft.models.MusicGen``.

    The global RNG state is left untouched; the weights depend only on ``config.seed``.
    """
    config = config or TinyConfig()
    return _build_from_xp_config(tiny_xp_config(config), config, device, name)


def _build_from_xp_config(xp_cfg: DictConfig, config: TinyConfig, device: str, name: str,
                          finish_lm: tp.Optional[tp.Callable] = None):
    """A random ``MusicGen`` from a tiny ``xp.cfg`` (weights depend only on ``config.seed``);
    ``finish_lm(lm)`` adjusts the LM before it is wrapped (e.g. melody loading settings)."""
    from audiocraft.models import MusicGen, builders

    # Built on the CPU so that the weights are the same whatever the device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        compression_model = builders.get_compression_model(copy.deepcopy(xp_cfg))
        lm = build_lm_from_config(xp_cfg, device="cpu")
    if finish_lm is not None:
        finish_lm(lm)
    # MusicGen's constructor sets audiocraft's default 18 s extension stride, which must be
    # shorter than the window: build with a 30 s window, then set the requested one.
    model = MusicGen(name, compression_model.eval(), lm.eval(), max_duration=max(config.max_duration, 30.0))
    if config.max_duration < 30.0:
        model.max_duration = config.max_duration
        model.set_generation_params(duration=config.max_duration, extend_stride=config.max_duration / 2)
    return to_device(model, device)


# --- tiny exports (everything "tiny" lives here) ------------------------------------------

def is_tiny_config(xp_cfg: dict) -> bool:
    """Whether an export's ``xp.cfg`` (a plain dict) describes a tiny model (local T5)."""
    return ((xp_cfg or {}).get("musicgen_trainer") or {}).get("text_encoder") == "tiny"


def tiny_export_extras(model) -> dict:
    """What a tiny export carries beside audiocraft's keys: the frozen local T5's weights,
    which audiocraft keeps out of the LM state dict (a released T5 is re-downloaded instead)."""
    conditioners = model.lm.condition_provider.conditioners
    t5 = conditioners["description"].__dict__["t5"]
    extras = {"text_encoder_state": {k: v.cpu() for k, v in t5.state_dict().items()}}
    if "self_wav" in conditioners and not uses_htdemucs(model.lm.cfg):  # tiny-melody: its random
        demucs = conditioners["self_wav"].__dict__["demucs"]  # stem separator, also outside the LM
        extras["demucs_state"] = {k: v.cpu() for k, v in demucs.state_dict().items()}
    return extras


def load_tiny_export(folder, lm_pkg: dict, xp_cfg: dict, device: str):
    """A tiny model from its export package (weights-only loaded by ``models``); ``ValueError``
    with one line when the package does not fit its config."""
    from audiocraft.models import MusicGen
    from audiocraft.models.loaders import load_compression_model
    from omegaconf import OmegaConf

    if "text_encoder_state" not in lm_pkg:
        raise ValueError(f"{folder} is a tiny-model export without its text encoder weights")
    xp_cfg = OmegaConf.create(xp_cfg)
    xp_cfg.device = "cpu"
    if "self_wav" in xp_cfg.conditioners and "demucs_state" not in lm_pkg and not uses_htdemucs(xp_cfg):
        raise ValueError(f"{folder} is a tiny-melody export without its stem separator weights")
    try:
        lm = build_lm_from_config(xp_cfg, device="cpu", t5_state=lm_pkg["text_encoder_state"],
                                  demucs_state=lm_pkg.get("demucs_state"), export_folder=folder)
        lm.load_state_dict(lm_pkg["best_state"])
        compression_model = load_compression_model(str(folder), device="cpu")
    except (TokenizerUnavailable, SeparatorUnavailable):
        raise
    except (RuntimeError, KeyError, ValueError) as exc:  # weights of another shape, a damaged package
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{folder} holds weights that do not match its config: {first}") from None
    as_get_pretrained_does(lm)
    model = MusicGen(TINY_NAME, compression_model, lm.eval())
    model.name = str(folder)
    return to_device(model, device)


# --- tiny melody model ("tiny-melody") -----------------------------------------------------
#
# musicgen-melody's shape at tiny size, as audiocraft's chroma2music conditioner config (which
# grids/musicgen/musicgen_melody_32khz.py trains with) sets it: a ``ChromaStemConditioner`` for
# the ``self_wav`` attribute (the chroma of the vocals + other stems of a clip, projected), the
# fuser prepending ``[self_wav, description]`` to the LM input and cross-attending to nothing, so
# the transformer has no cross-attention layers (``transformer_lm.cross_attention`` false, as
# in the released checkpoints), and attribute dropout of ``self_wav`` at 0.5. The
# released conditioner downloads htdemucs; the tiny one separates with a small random
# ``demucs.htdemucs.HTDemucs`` (same sources), built from the seed and, like T5, kept out of
# the LM state dict (exports carry its weights as ``demucs_state``).

TINY_MELODY_NAME = "tiny-melody"
# cac=False with 0 Wiener iterations: each stem is a ratio mask of the mix's spectrogram, so the
# pitches of the input survive random weights (with cac=True a random net outputs noise and
# every clip's chroma is the same).
TINY_DEMUCS = dict(sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100,
                   channels=4, depth=2, nfft=512, t_layers=1, t_heads=1, dconv_comp=2, segment=2,
                   cac=False, wiener_iters=0)
MELODY_ATTRIBUTE_DROPOUT = 0.5  # audiocraft's chroma2music: self_wav dropped half the time


def tiny_melody_xp_config(cfg: TinyConfig) -> DictConfig:
    """``tiny_xp_config`` with musicgen-melody's conditioning: ``self_wav`` chroma (n_chroma 12,
    radix2_exp 14, argmax) and the caption both prepended to the input (input = [chroma frames,
    caption tokens, audio tokens]), no cross-attention."""
    xp = tiny_xp_config(cfg)
    xp.attribute_dropout = {"args": {"active_on_eval": False}, "text": {},
                            "wav": {"self_wav": MELODY_ATTRIBUTE_DROPOUT}}
    xp.fuser.prepend = ["self_wav", "description"]
    xp.fuser.cross = []
    xp.transformer_lm.cross_attention = False
    xp.conditioners = {
        "self_wav": {"model": "chroma_stem", "chroma_stem": {
            "sample_rate": MUSICGEN_SAMPLE_RATE, "n_chroma": 12, "radix2_exp": 14, "argmax": True,
            "match_len_on_eval": False, "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None}},
        "description": OmegaConf.to_container(xp.conditioners.description)}
    xp.musicgen_trainer.demucs_config = dict(TINY_DEMUCS)
    return xp


def tiny_demucs(config: dict, seed: int, state: tp.Optional[dict] = None):
    """A random ``HTDemucs`` (eval mode, frozen) built from ``seed``, or loaded from ``state``."""
    from demucs.htdemucs import HTDemucs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HTDemucs(**config)
    if state is not None:
        model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def _make_chroma_conditioner_class():
    from audiocraft.modules.chroma import ChromaExtractor
    from audiocraft.modules.conditioners import ChromaStemConditioner, WaveformConditioner
    from audiocraft.utils.autocast import TorchAutocast

    class TinyChromaStemConditioner(ChromaStemConditioner):
        """``ChromaStemConditioner`` whose stem separator is given instead of downloaded.

        Only ``__init__`` differs (the same attributes as audiocraft's, no evaluation wavs,
        no embedding cache): separation, chroma, length matching and the trainable output
        projection are audiocraft's own code.
        """

        def __init__(self, output_dim: int, sample_rate: int, n_chroma: int, radix2_exp: int,
                     duration: float, demucs, match_len_on_eval: bool = True,
                     device: str = "cpu", **kwargs):
            WaveformConditioner.__init__(self, dim=n_chroma, output_dim=output_dim, device=device)
            self.autocast = TorchAutocast(enabled=device != "cpu", device_type=self.device, dtype=torch.float32)
            self.sample_rate = sample_rate
            self.match_len_on_eval = match_len_on_eval
            if match_len_on_eval:
                self._use_masking = False
            self.duration = duration
            self.__dict__["demucs"] = demucs.to(device)
            sources = list(demucs.sources)
            self.stem_indices = torch.LongTensor([sources.index("vocals"), sources.index("other")]).to(device)
            self.chroma = ChromaExtractor(sample_rate=sample_rate, n_chroma=n_chroma, radix2_exp=radix2_exp,
                                          **kwargs).to(device)
            self.chroma_len = self._get_chroma_len()
            self.eval_wavs = None
            self.cache = None

    return TinyChromaStemConditioner


_CHROMA_CONDITIONER_CLASS = None


def tiny_chroma_conditioner(xp_cfg: DictConfig, output_dim: int, device: str,
                            demucs_state: tp.Optional[dict] = None):
    """The tiny melody model's ``self_wav`` conditioner, as ``xp_cfg`` describes it."""
    global _CHROMA_CONDITIONER_CLASS
    if _CHROMA_CONDITIONER_CLASS is None:
        _CHROMA_CONDITIONER_CLASS = _make_chroma_conditioner_class()
    ours = xp_cfg.musicgen_trainer
    if uses_htdemucs(xp_cfg):
        demucs = released_separator()
    else:
        demucs = tiny_demucs(OmegaConf.to_container(ours.demucs_config), int(ours.tiny.seed), demucs_state)
    args = OmegaConf.to_container(xp_cfg.conditioners.self_wav.chroma_stem)
    for unused in ("eval_wavs", "n_eval_wavs", "cache_path"):  # released-model dataset options
        args.pop(unused, None)
    return _CHROMA_CONDITIONER_CLASS(output_dim=output_dim, duration=float(xp_cfg.dataset.segment_duration),
                                     demucs=demucs, device=device, **args)


HTDEMUCS = "htdemucs"


def uses_htdemucs(xp_cfg) -> bool:
    """Whether a melody ``xp.cfg`` separates stems with the released htdemucs (a melody model
    converted from transformers' format: its separator is not part of that format) rather than
    the tiny random one."""
    ours = (xp_cfg or {}).get("musicgen_trainer") or {}
    return ours.get("separator", None) == HTDEMUCS


def released_separator():
    """htdemucs, as audiocraft's ``ChromaStemConditioner`` loads it (torch hub's cache, checked
    weights-only first); ``SeparatorUnavailable`` (one line) when it is missing offline."""
    from dataset_tools.separation.errors import SeparatorLoadError
    from dataset_tools.separation.model import check_pretrained_cache
    try:
        check_pretrained_cache(HTDEMUCS)
    except SeparatorLoadError as exc:
        raise SeparatorUnavailable(f"the melody conditioning needs the {HTDEMUCS} stem separator: {exc}") from None
    from demucs import pretrained
    return pretrained.get_model(HTDEMUCS).eval().requires_grad_(False)


class SeparatorUnavailable(ValueError):
    """The released stem separator is not in the cache (one line)."""


def as_get_pretrained_does(lm) -> None:
    """What ``MusicGen.get_pretrained`` sets on a melody LM after building it: the chroma is
    repeated or cut to the training window's length, and never masked."""
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False


def build_tiny_melody_musicgen(config: tp.Optional[TinyConfig] = None, device: str = "cpu",
                               name: str = TINY_MELODY_NAME):
    """A randomly initialised tiny melody MusicGen (weights depend only on ``config.seed``)."""
    config = config or TinyConfig()
    return _build_from_xp_config(tiny_melody_xp_config(config), config, device, name, as_get_pretrained_does)
