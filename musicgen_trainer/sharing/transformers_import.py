"""A transformers MusicGen folder (config + safetensors tensors) -> audiocraft's ``MusicGen``
(``load_transformers_folder``, called by ``models.load_model``). Weights are read with
safetensors only: a folder with only ``pytorch_model.bin`` (a pickle) is refused.

The model is described by an ``xp.cfg`` of the kind ``tiny.py`` builds (its local-T5
conditioner: the folder's own T5 weights, nothing downloaded), with the sizes read from the
folder's ``config.json``. So training from it, exporting it (audiocraft layout, which then carries
the T5 weights as tiny exports do) and exporting it back to transformers all work as for ``tiny``.
"""
from __future__ import annotations

import json
import math
import os
import typing as tp
from pathlib import Path

import torch

from .transformers_weights import NotExpressible, codec_from_transformers, lm_from_transformers

RECORD_FILE = "musicgen_trainer_transformers.json"
RECORD_FORMAT = "musicgen_trainer.transformers_export"
MODEL_TYPES = ("musicgen", "musicgen_melody")

# The T5Config fields that shape the encoder (the rest of a saved config is bookkeeping).
_T5_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
              "relative_attention_max_distance", "dropout_rate", "layer_norm_epsilon", "feed_forward_proj",
              "pad_token_id", "eos_token_id")


def _tokenizer_class(folder: Path) -> str:
    try:
        return str(json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class") or "")
    except (OSError, ValueError):
        return ""


def _lstm_is_zero(state: dict) -> bool:
    lstm = [v for k, v in state.items() if k.startswith("audio_encoder.") and ".lstm." in k]
    return bool(lstm) and not any(bool(v.any()) for v in lstm)


def xp_config_from_transformers(config: dict, state: dict, record: dict, tokenizer: str):
    """The audiocraft ``xp.cfg`` (OmegaConf) of the folder's model; ``NotExpressible`` otherwise."""
    from ..tiny import HTDEMUCS, T5_ALIASES, TinyConfig, tiny_melody_xp_config, tiny_xp_config
    dec, te, ae = config.get("decoder") or {}, config.get("text_encoder") or {}, config.get("audio_encoder") or {}
    melody = config.get("model_type") == "musicgen_melody"
    if int(te.get("d_model", 0)) not in T5_ALIASES:
        raise NotExpressible(f"text encoder width {te.get('d_model')} is not a T5 width this project knows "
                             f"({', '.join(map(str, sorted(T5_ALIASES)))})")
    hidden = int(dec["hidden_size"])
    if int(te["d_model"]) == hidden:
        raise NotExpressible("the text encoder and the decoder have the same width: the folder has no "
                             "enc_to_dec_proj for audiocraft's caption projection")
    if (ae.get("codebook_dim") or ae["hidden_size"]) != ae["hidden_size"]:
        raise NotExpressible("the codec's codebook width differs from its latent width (projections audiocraft's "
                             "loader does not build here)")
    if ae.get("use_conv_shortcut", True) or ae.get("normalize", False) or ae.get("norm_type") != "weight_norm":
        raise NotExpressible("the audio codec is not MusicGen's 32 kHz EnCodec kind (conv shortcuts, input "
                             "normalisation or another norm)")
    tiny = _trusted_tiny_facts(record)
    ratios = [int(r) for r in ae["upsampling_ratios"]]
    frame_rate = math.ceil(int(ae["sampling_rate"]) / math.prod(ratios))
    n_q = int(1000 * float(ae["target_bandwidths"][-1]) // (frame_rate * math.ceil(math.log2(ae["codebook_size"]))))
    channels = int(dec.get("audio_channels", 1))
    if int(dec["num_codebooks"]) != n_q * channels:
        raise NotExpressible(f"the decoder predicts {dec['num_codebooks']} codebooks, the codec has {n_q} "
                             f"per channel")
    cfg = TinyConfig(seed=int(tiny.get("seed", 0)), lm_dim=hidden, lm_heads=int(dec["num_attention_heads"]),
                     lm_layers=int(dec["num_hidden_layers"]), t5_dim=int(te["d_model"]),
                     t5_layers=int(te["num_layers"]), t5_heads=int(te["num_heads"]), t5_ff=int(te["d_ff"]),
                     codec_filters=int(ae["num_filters"]), codec_dim=int(ae["hidden_size"]),
                     codec_lstm=0 if _lstm_is_zero(state) else int(ae["num_lstm_layers"]),
                     max_duration=_record_window(record), stereo=channels == 2)
    xp = tiny_melody_xp_config(cfg) if melody else tiny_xp_config(cfg)
    causal = bool(ae.get("use_causal_conv", False))
    xp.sample_rate = xp.encodec.sample_rate = int(ae["sampling_rate"])
    xp.encodec.causal = causal
    xp.seanet.update({"causal": causal, "n_residual_layers": int(ae["num_residual_layers"]), "ratios": ratios,
                      "kernel_size": int(ae["kernel_size"]), "last_kernel_size": int(ae["last_kernel_size"]),
                      "residual_kernel_size": int(ae["residual_kernel_size"]),
                      "dilation_base": int(ae["dilation_growth_rate"]), "pad_mode": str(ae["pad_mode"]),
                      "compress": int(ae["compress"]),
                      "decoder": {"trim_right_ratio": float(ae.get("trim_right_ratio", 1.0)),
                                  "final_activation": None, "final_activation_params": None}})
    xp.rvq.n_q, xp.rvq.bins = n_q, int(ae["codebook_size"])
    xp.transformer_lm.update({"n_q": int(dec["num_codebooks"]), "card": int(dec["vocab_size"]),
                              "hidden_scale": int(dec["ffn_dim"]) / hidden})
    delays = [d for d in range(n_q) for _ in range(channels)]
    xp.codebooks_pattern.delay.delays = delays
    xp.musicgen_trainer.t5_config = {k: te[k] for k in _T5_FIELDS if k in te}
    xp.musicgen_trainer.t5_config.update({"is_encoder_decoder": False, "use_cache": False})
    # The tokenizer's name only: the model in memory holds the folder's tokenizer itself, and an
    # audiocraft export of it carries a copy (export_tokenizer.py), never this folder's path.
    xp.musicgen_trainer.tokenizer = tokenizer
    if melody:
        if "demucs_config" in tiny:  # a tiny-melody export of ours: its random separator, rebuilt from the seed
            xp.musicgen_trainer.demucs_config = tiny["demucs_config"]
        else:  # transformers' format has no separator: audiocraft's melody models use htdemucs
            del xp.musicgen_trainer["demucs_config"]
            xp.musicgen_trainer.separator = HTDEMUCS
        xp.conditioners.self_wav.chroma_stem.n_chroma = int(config.get("num_chroma", 12))
    return xp


def _record_window(record: dict) -> float:
    """The export's context window from our record (a pushed record is the sender's): a number of
    seconds in (0, MUSICGEN_MAX_SECONDS], else MusicGen's 30 s."""
    from ..runtime import MUSICGEN_MAX_SECONDS
    try:
        value = float(record.get("max_duration", 30.0))
    except (TypeError, ValueError):
        return 30.0
    return value if 0 < value <= MUSICGEN_MAX_SECONDS else 30.0


def _trusted_tiny_facts(record: dict) -> dict:
    """The record's tiny-melody separator facts, only when they describe the separator ``tiny``
    builds (its config, an integer seed): anything else would build an HTDemucs of the sender's
    choosing, so the folder is treated as one we did not write (htdemucs)."""
    from ..tiny import TINY_DEMUCS
    tiny = record.get("tiny")
    if not isinstance(tiny, dict) or tiny.get("demucs_config") != dict(TINY_DEMUCS):
        return {}
    seed = tiny.get("seed", 0)
    return tiny if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2 ** 32 else {}


def build_musicgen(folder: Path, config: dict, state: dict, record: dict, device: str):
    """audiocraft ``MusicGen`` (eval mode, on ``device``) from the folder's config and tensors."""
    from audiocraft.models import MusicGen, builders
    from transformers import EncodecConfig, EncodecModel

    from ..runtime import to_device
    from ..tiny import T5_ALIASES, as_get_pretrained_does, build_lm_from_config
    try:
        byt5 = _tokenizer_class(folder).startswith("ByT5")
        tokenizer = "byt5" if byt5 else T5_ALIASES[int(config["text_encoder"]["d_model"])]
        xp = xp_config_from_transformers(config, state, record, tokenizer)
        gen = _generation_config(folder)
        if gen.get("guidance_scale") is not None:  # None: transformers' "not set" (the config's own stays)
            xp.classifier_free_guidance.inference_coef = _guidance_scale(folder, gen["guidance_scale"])
        t5_state = {k[len("text_encoder."):]: v.float() for k, v in state.items() if k.startswith("text_encoder.")}
        # save_pretrained stores T5's tied input embedding once, as shared.weight.
        t5_state.setdefault("encoder.embed_tokens.weight", t5_state.get("shared.weight"))
        # The folder's own tokenizer (its files are there), whatever name the config records.
        local_tokenizer = None if byt5 else _folder_tokenizer(folder, int(config["text_encoder"]["vocab_size"]))
        lm = build_lm_from_config(xp, device="cpu", t5_state=t5_state, tokenizer=local_tokenizer)
        cross = len(xp.fuser.cross) > 0
        melody = "self_wav" in xp.conditioners
        lm_state = lm_from_transformers(state, len(lm.transformer.layers), lm.n_q, cross, melody)
        missing, unexpected = lm.load_state_dict({k: v.float() for k, v in lm_state.items()}, strict=False)
        missing = [k for k in missing if not k.endswith("chroma.spec.window")]  # a buffer, rebuilt
        if missing or unexpected:
            raise NotExpressible(f"LM weights do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.random.fork_rng(devices=[]):
            codec = builders.get_compression_model(xp)
        with torch.device("meta"):  # only its tensor names and shapes are read
            hf_codec = EncodecModel(EncodecConfig.from_dict(config["audio_encoder"]))
        codec_state = codec_from_transformers(state, codec, hf_codec)
        codec.load_state_dict({k: v.float() for k, v in codec_state.items()}, strict=True)
    except KeyError as exc:
        raise ValueError(f"{folder}: config.json or the weights lack {exc}; not a complete transformers MusicGen "
                         f"folder") from None
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{folder}: weights do not match config.json: {first}") from None
    as_get_pretrained_does(lm)
    model = MusicGen(str(folder), codec.eval(), lm.eval(), max_duration=max(float(xp.dataset.segment_duration), 30.0))
    window = float(xp.dataset.segment_duration)
    if window < 30.0:
        model.max_duration = window
        model.set_generation_params(duration=window, extend_stride=window / 2)
    return to_device(model, device)


def _full_config(folder: Path) -> dict:
    """``config.json`` through transformers' own config classes: every field, defaults included
    (a saved config may leave out the values that equal the defaults)."""
    from transformers import MusicgenConfig, MusicgenMelodyConfig
    from transformers.utils import logging
    raw = read_config(folder) or {}
    # transformers' own config class, never AutoConfig: a config.json's auto_map must not pick code.
    cls = MusicgenMelodyConfig if raw.get("model_type") == "musicgen_melody" else MusicgenConfig
    level = logging.get_verbosity()
    logging.set_verbosity_error()  # the special token 2048 "outside the vocabulary": MusicGen's design
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False).to_dict()
    except Exception as exc:  # noqa: BLE001 - e.g. strict-dataclass field errors: the file's fault, one line
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{folder}: transformers cannot read its config.json: {first}") from None
    finally:
        logging.set_verbosity(level)


def _generation_config(folder: Path) -> dict:
    return _small_json(folder / "generation_config.json") or {}


def guidance_scale_of(folder: tp.Union[str, os.PathLike]) -> tp.Optional[float]:
    """The folder's own guidance (``generation_config.json``'s ``guidance_scale``) without loading
    it: None when it sets none (the model's default, 3, applies); ValueError as ``_guidance_scale``."""
    folder = Path(folder)
    value = _generation_config(folder).get("guidance_scale")
    return None if value is None else _guidance_scale(folder, value)


def _guidance_scale(folder: Path, value) -> float:
    """``generation_config.json``'s ``guidance_scale`` as the model's guidance coefficient: a finite
    number in ``GenerationConfig.cfg_coef``'s range [0, 100], else ValueError (one line). Refused
    rather than ignored: the sender's model would otherwise sound unlike what its author set, with no
    sign of it, while a NaN or 1e30 would crash or ruin every generation that uses the default."""
    from ..generation import CFG_COEF_RANGE
    low, high = CFG_COEF_RANGE
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"{folder}: generation_config.json's guidance_scale {str(value)[:40]!r} is not a number "
                         f"from {low:g} to {high:g}: fix or remove it")
    return number


def _folder_tokenizer(folder: Path, vocab_size: int):
    """The folder's sentencepiece T5 tokenizer (``tiny.load_t5_tokenizer``: transformers' own class,
    never code from the folder); ValueError (one line) when it has no vocabulary or more tokens
    than the text encoder's embedding has rows."""
    from ..tiny import TokenizerUnavailable, load_t5_tokenizer
    try:
        tokenizer = load_t5_tokenizer(str(folder), local=True)
    except TokenizerUnavailable as exc:
        raise ValueError(f"{folder}: cannot load its tokenizer: {exc}") from None
    if len(tokenizer) > vocab_size:
        raise ValueError(f"{folder}: its tokenizer has {len(tokenizer)} tokens, more than the text encoder's "
                         f"{vocab_size} embeddings")
    return tokenizer


JSON_MAX_BYTES = 1 << 20  # a MusicGen config.json or our record is a few KB; a larger one is neither


def _small_json(path: Path) -> tp.Optional[dict]:
    """The JSON object in ``path`` when it is a regular file of at most ``JSON_MAX_BYTES``, else None.
    The app lists every folder under checkpoints/ this way at start-up: a config.json linked to
    /dev/zero, a FIFO or a huge file must not hang or exhaust memory."""
    try:
        if not path.is_file() or path.stat().st_size > JSON_MAX_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read(JSON_MAX_BYTES + 1))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(folder: Path) -> tp.Optional[dict]:
    """Our record of a transformers export (what we wrote), or None for a folder we did not write."""
    data = _small_json(Path(folder) / RECORD_FILE)
    return data if data is not None and data.get("format") == RECORD_FORMAT else None


def read_config(folder: Path) -> tp.Optional[dict]:
    return _small_json(Path(folder) / "config.json")


def is_transformers_folder(folder: tp.Union[str, os.PathLike]) -> bool:
    """A folder whose ``config.json`` says transformers' MusicGen (``musicgen`` / ``musicgen_melody``)."""
    config = read_config(Path(folder))
    return bool(config) and config.get("model_type") in MODEL_TYPES


def read_safetensors(folder: Path) -> dict:
    """Every tensor of the folder's safetensors weights (one file or shards); never a pickle."""
    from safetensors.torch import load_file
    files = _weight_files(folder)
    if not files:
        pickles = [p.name for p in folder.glob("*.bin")]
        found = f" (only {', '.join(pickles)}: pickles, not loaded)" if pickles else ""
        raise ValueError(f"{folder} has no model.safetensors weights{found}; convert it to safetensors first")
    state: dict = {}
    for path in files:
        state.update(load_file(str(path)))
    return state


def _weight_files(folder: Path) -> tp.List[Path]:
    """The files transformers itself would read: ``model.safetensors``, else the shards that
    ``model.safetensors.index.json`` maps (inside the folder); never any other stray .safetensors,
    whose tensors would override the model's."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = _small_json(folder / "model.safetensors.index.json") or {}
    names = sorted({str(n) for n in (index.get("weight_map") or {}).values()}) if isinstance(
        index.get("weight_map"), dict) else []
    shards = [folder / n for n in names if "/" not in n and "\\" not in n and not n.startswith(".")]
    return shards if shards and all(p.is_file() for p in shards) else []


def check_weights_fit_config(folder: Path, config: dict, state: dict) -> None:
    """ValueError (one line) unless every tensor transformers' model of ``config`` has is in
    ``state`` with the same shape. Checked before anything is built for real: config.json is the
    sender's, and its sizes (vocabularies, widths, layers, codec filters) decide what is allocated;
    the tensors' own shapes bound that by the size of the downloaded weights."""
    from transformers import (MusicgenConfig, MusicgenForConditionalGeneration, MusicgenMelodyConfig,
                              MusicgenMelodyForConditionalGeneration)
    # Layer counts first: building thousands of layers, even on the meta device, takes minutes.
    for prefix, section, field in (("decoder.model.decoder.layers.", "decoder", "num_hidden_layers"),
                                   ("text_encoder.encoder.block.", "text_encoder", "num_layers")):
        found = len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})
        wanted = (config.get(section) or {}).get(field)
        if wanted != found:
            raise ValueError(f"{folder}: config.json says {section}.{field} = {str(wanted)[:20]}, "
                             f"the weights have {found}")
    melody = config.get("model_type") == "musicgen_melody"
    config_cls, model_cls = ((MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration) if melody
                             else (MusicgenConfig, MusicgenForConditionalGeneration))
    from transformers.utils import logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()  # the special token 2048 "outside the vocabulary": MusicGen's design
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = model_cls(config_cls.from_dict(config)).state_dict()
    except Exception as exc:  # noqa: BLE001 - any value transformers rejects is the file's fault: one line
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{folder}: transformers cannot build its config.json: {type(exc).__name__}: "
                         f"{first}") from None
    finally:
        logging.set_verbosity(level)
    for key, tensor in expected.items():
        if key == "text_encoder.encoder.embed_tokens.weight":  # tied to shared.weight, stored once
            key = "text_encoder.shared.weight"
        if key not in state:
            raise ValueError(f"{folder}: the weights lack {key} (config.json describes a different model)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{folder}: {key} has shape {tuple(state[key].shape)}, config.json says "
                             f"{tuple(tensor.shape)}")


def load_transformers_folder(folder: tp.Union[str, os.PathLike], device: str = "cpu"):
    """audiocraft's ``MusicGen`` from a transformers MusicGen folder (ValueError, one line, when it
    cannot be read or converted)."""
    folder = Path(folder)
    state = read_safetensors(folder)
    config = _full_config(folder)
    check_weights_fit_config(folder, config, state)
    return build_musicgen(folder, config, state, read_record(folder) or {}, device)
