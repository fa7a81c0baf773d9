"""MusicGen in Hugging Face transformers' format, both ways.

``export_transformers(source, out)`` writes a folder that ``MusicgenForConditionalGeneration``
(``MusicgenMelodyForConditionalGeneration`` for melody models), ``AutoProcessor`` and
``pipeline("text-to-audio")`` load offline: ``config.json``, ``generation_config.json``,
``model.safetensors`` (text encoder + codec + decoder), the processor's files, and our record
``musicgen_trainer_transformers.json`` (what we wrote, so that ``overwrite`` removes only that).

``is_transformers_folder`` / ``load_transformers_folder`` do the reverse for ``models.load_model``:
a transformers MusicGen folder (ours or e.g. a fine-tune from the Hub) becomes audiocraft's
``MusicGen``, built with this project's local-T5 conditioner (``tiny.py``) so that the folder's
own text encoder weights are used and nothing is downloaded. Weights are read with safetensors
only: a folder with only ``pytorch_model.bin`` (a pickle) is refused.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing as tp
from pathlib import Path

import torch

from .transformers_weights import (NotExpressible, codec_config, codec_from_transformers, codec_to_transformers,
                                   decoder_config, is_melody, lm_from_transformers, lm_to_transformers, mono_codec,
                                   text_encoder)

RECORD_FILE = "musicgen_trainer_transformers.json"
RECORD_FORMAT = "musicgen_trainer.transformers_export"
MODEL_TYPES = ("musicgen", "musicgen_melody")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- audiocraft -> transformers ----------------------------------------------------------

def transformers_model(model, dtype: str = "fp32"):
    """A transformers ``Musicgen(Melody)ForConditionalGeneration`` holding ``model``'s weights
    (audiocraft ``MusicGen``); ``NotExpressible`` (one line) when transformers cannot hold it."""
    from transformers import (EncodecConfig, EncodecModel, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration)
    lm = model.lm
    t5 = text_encoder(lm)
    melody = is_melody(lm)
    if int(t5.config.d_model) == int(lm.dim):
        # transformers adds enc_to_dec_proj only when the widths differ; audiocraft always projects.
        raise NotExpressible(f"the text encoder and the LM have the same width ({lm.dim}): transformers' MusicGen "
                             f"then has no projection for the caption conditioner's output_proj; cannot export")
    cross = hasattr(lm.transformer.layers[0], "cross_attention") and lm.transformer.layers[0].cross_attention is not None
    if melody == cross:
        raise NotExpressible("a melody model must prepend its conditions and a text model cross-attend to the "
                             "caption, as the released ones; cannot export")
    codec_kwargs = codec_config(model.compression_model, int(model.sample_rate))
    dec_kwargs = decoder_config(lm, int(model.audio_channels), float(model.max_duration))
    t5_cfg = t5.config.to_dict()
    if melody:
        chroma = lm.condition_provider.conditioners["self_wav"]
        config = MusicgenMelodyConfig(text_encoder=t5_cfg, audio_encoder=EncodecConfig(**codec_kwargs),
                                      decoder=MusicgenMelodyDecoderConfig(**dec_kwargs),
                                      num_chroma=int(chroma.dim), chroma_length=int(chroma.chroma_len))
        cls = MusicgenMelodyForConditionalGeneration
    else:
        config = MusicgenConfig(text_encoder=t5_cfg, audio_encoder=EncodecConfig(**codec_kwargs),
                                decoder=MusicgenDecoderConfig(**dec_kwargs))
        cls = MusicgenForConditionalGeneration
    with torch.device("meta"):
        hf = cls(config)
    state = {"text_encoder." + k: v for k, v in t5.state_dict().items()}
    state.update(lm_to_transformers(lm.state_dict(), len(lm.transformer.layers), lm.n_q, cross, melody))
    state.update(codec_to_transformers(mono_codec(model.compression_model), EncodecModel(config.audio_encoder)))
    state = {k: v.detach().to("cpu", DTYPES[dtype] if v.is_floating_point() else v.dtype).clone()
             for k, v in state.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if unexpected or missing:
        raise NotExpressible(f"weight mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    _rebuild_buffers(hf)
    return hf.eval()


def _rebuild_buffers(hf) -> None:
    """Non-persistent buffers are not in a state dict: recompute the ones left on the meta device
    (sinusoidal positions, the codec's padding constants) by rebuilding those modules on the CPU."""
    for name, module in list(hf.named_modules()):
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                fresh = _fresh_module(module)
                module._buffers[bname] = getattr(fresh, bname)


def _fresh_module(module):
    cls = type(module)
    if cls.__name__.endswith("SinusoidalPositionalEmbedding"):
        return cls(module.num_positions, module.embedding_dim)
    if cls.__name__ in ("EncodecConv1d",):
        conv = module.conv
        fresh = torch.nn.Module()
        kernel = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1
        fresh.stride = torch.tensor(conv.stride[0], dtype=torch.int64)
        fresh.kernel_size = torch.tensor(kernel, dtype=torch.int64)
        fresh.padding_total = torch.tensor(kernel - conv.stride[0], dtype=torch.int64)
        return fresh
    raise NotExpressible(f"cannot rebuild the buffers of {cls.__name__}")


def processor_for(model, hf):
    """The transformers processor of the export: the model's own tokenizer + feature extractor."""
    tokenizer = model.lm.condition_provider.conditioners["description"].t5_tokenizer
    if is_melody(model.lm):
        from transformers import MusicgenMelodyFeatureExtractor, MusicgenMelodyProcessor
        features = MusicgenMelodyFeatureExtractor(sampling_rate=int(model.sample_rate),
                                                  feature_size=int(hf.config.num_chroma))
        return MusicgenMelodyProcessor(feature_extractor=features, tokenizer=tokenizer)
    from transformers import EncodecFeatureExtractor, MusicgenProcessor
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=int(model.sample_rate), padding_value=0.0)
    return MusicgenProcessor(feature_extractor=features, tokenizer=tokenizer)


def generation_config_for(model):
    """audiocraft's default sampling (top-k 250, guidance 3) for the model's window."""
    from transformers import GenerationConfig
    card = int(model.lm.card)
    return GenerationConfig(do_sample=True, top_k=250, guidance_scale=float(model.lm.cfg_coef),
                            max_length=int(round(model.max_duration * model.frame_rate)) + 1,
                            pad_token_id=card, bos_token_id=card, decoder_start_token_id=card)


def _load_source(source: str):
    """An audiocraft ``MusicGen`` on the CPU from a run folder, an export folder or a model name."""
    from ..models import load_model
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() is False:
        pass
    if path.is_dir() and (path / "export").is_dir() and not is_transformers_folder(path):
        path = path / "export"  # a train.py run folder: its export (merged weights for a --lora run)
    return load_model(str(path) if path.is_dir() else source, device="cpu")


def _record(folder: Path) -> tp.Optional[dict]:
    try:
        data = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == RECORD_FORMAT else None


def check_out_folder(out: Path, overwrite: bool) -> tp.Optional[dict]:
    """Refuse (ValueError, one line) an out folder that is neither new, empty, nor (with
    ``overwrite``) a previous export of ours; returns that previous export's record."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    record = _record(out)
    if record is None:
        raise ValueError(f"--out {out} is not empty and is not an export of ours: choose a new or empty folder")
    if not overwrite:
        raise ValueError(f"--out {out} already holds an export: add --overwrite to replace it")
    return record


def export_transformers(source: tp.Union[str, os.PathLike, tp.Any], out: tp.Union[str, os.PathLike],
                        overwrite: bool = False, dtype: str = "fp32") -> Path:
    """Write ``source`` (a run folder, an export folder, a model name or a loaded ``MusicGen``) to
    ``out`` in transformers' format; returns ``out``. The folder is written under a temporary name
    beside ``out`` and renamed: a crash leaves ``out`` as it was."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out).expanduser()
    previous = check_out_folder(out, overwrite)
    model = source if hasattr(source, "lm") else _load_source(str(source))
    hf = transformers_model(model, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        generation_config_for(model).save_pretrained(tmp)
        processor_for(model, hf).save_pretrained(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        record = {"format": RECORD_FORMAT, "source": getattr(model, "name", str(source)), "dtype": dtype,
                  "max_duration": float(model.max_duration), "files": files + [RECORD_FILE]}
        tiny = _tiny_facts(model)
        if tiny:
            record["tiny"] = tiny
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _move_into(tmp, out, previous)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tiny_facts(model) -> dict:
    """What a tiny-melody model needs beyond transformers' files: its random stem separator's
    config and seed (the separator is not part of transformers' MusicGen)."""
    ours = (getattr(model.lm, "cfg", None) or {}).get("musicgen_trainer") if hasattr(model.lm, "cfg") else None
    if not ours or "demucs_config" not in ours:
        return {}
    from omegaconf import OmegaConf
    return {"demucs_config": OmegaConf.to_container(ours.demucs_config), "seed": int(ours.tiny.seed)}


def _move_into(tmp: Path, out: Path, previous: tp.Optional[dict]) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    if previous is None:  # an empty folder
        out.rmdir()
        os.replace(tmp, out)
        return
    for name in previous.get("files", []):  # ours only: whatever else lives there stays
        target = out / name
        if target.is_file() and out.resolve() in target.resolve().parents:
            target.unlink()
    for path in sorted(tmp.rglob("*")):
        if path.is_file() and path.name != RECORD_FILE:
            dest = out / path.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
    os.replace(tmp / RECORD_FILE, out / RECORD_FILE)  # last: the record says the folder is complete


# --- transformers -> audiocraft ----------------------------------------------------------

def read_config(folder: Path) -> tp.Optional[dict]:
    try:
        data = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_transformers_folder(folder: tp.Union[str, os.PathLike]) -> bool:
    """A folder whose ``config.json`` says transformers' MusicGen (``musicgen`` / ``musicgen_melody``)."""
    config = read_config(Path(folder))
    return bool(config) and config.get("model_type") in MODEL_TYPES


def read_safetensors(folder: Path) -> dict:
    """Every tensor of the folder's safetensors weights (one file or shards); never a pickle."""
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in folder.glob("*.bin")]
        found = f" (only {', '.join(pickles)}: pickles, not loaded)" if pickles else ""
        raise ValueError(f"{folder} has no .safetensors weights{found}; convert it to safetensors first")
    state: dict = {}
    for path in files:
        state.update(load_file(str(path)))
    return state


def load_transformers_folder(folder: tp.Union[str, os.PathLike], device: str = "cpu"):
    """audiocraft's ``MusicGen`` from a transformers MusicGen folder (ValueError, one line, when it
    cannot be read or converted)."""
    from .transformers_import import build_musicgen
    folder = Path(folder)
    config = read_config(folder)
    state = read_safetensors(folder)
    return build_musicgen(folder, config, state, _record(folder) or {}, device)
