"""MusicGen in Hugging Face transformers' format, both ways.

``export_transformers(source, out)`` writes a folder that ``MusicgenForConditionalGeneration``
(``MusicgenMelodyForConditionalGeneration`` for melody models), ``AutoProcessor`` and
``pipeline("text-to-audio")`` load offline: ``config.json``, ``generation_config.json``,
``model.safetensors`` (text encoder + codec + decoder), the processor's files, and our record
``musicgen_trainer_transformers.json`` (what we wrote, so that ``overwrite`` removes only that).

The reverse (a transformers folder -> audiocraft's ``MusicGen``, for ``models.load_model``) is
``transformers_import.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import typing as tp
from pathlib import Path

import torch

from .transformers_import import RECORD_FILE, RECORD_FORMAT, is_transformers_folder, read_record
from .transformers_weights import (NotExpressible, codec_config, codec_to_transformers, decoder_config, is_melody,
                                   lm_to_transformers, mono_codec, text_encoder)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The only names an export writes (transformers' save_pretrained of the model, generation config
# and processor, and our record): the only names --overwrite may delete.
OUR_FILES = re.compile(r"(config|generation_config|tokenizer_config|special_tokens_map|added_tokens|tokenizer"
                       r"|preprocessor_config|processor_config|chat_template)\.json|model(-\d{5}-of-\d{5})?"
                       r"\.safetensors|model\.safetensors\.index\.json|spiece\.model|chat_template\.jinja|"
                       + re.escape(RECORD_FILE))


# --- audiocraft -> transformers ----------------------------------------------------------

def transformers_model(model, dtype: str = "fp32"):
    """A transformers ``Musicgen(Melody)ForConditionalGeneration`` holding ``model``'s weights
    (audiocraft ``MusicGen``); ``NotExpressible`` (one line) when transformers cannot hold it."""
    from transformers import EncodecModel
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
    if getattr(model.compression_model, "per_timestep", False):
        raise NotExpressible("the stereo codec interleaves per time step; transformers' stereo MusicGen interleaves "
                             "codebooks (L1 R1 L2 R2...); cannot export")
    codec_kwargs = codec_config(model.compression_model, int(model.sample_rate))
    dec_kwargs = decoder_config(lm, int(model.audio_channels), float(model.max_duration))
    t5_cfg = t5.config.to_dict()
    with _quiet_transformers():
        config, cls = _config(melody, lm, t5_cfg, codec_kwargs, dec_kwargs)
        with torch.device("meta"):
            hf = cls(config)
    state = {"text_encoder." + k: v for k, v in t5.state_dict().items()}
    state.update(lm_to_transformers(lm.state_dict(), len(lm.transformer.layers), lm.n_q, cross, melody))
    with torch.device("meta"):  # only its tensor names and shapes are read
        hf_codec = EncodecModel(config.audio_encoder)
    state.update(codec_to_transformers(mono_codec(model.compression_model), hf_codec))
    state = {k: v.detach().to("cpu", DTYPES[dtype] if v.is_floating_point() else v.dtype).clone()
             for k, v in state.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if unexpected or missing:
        raise NotExpressible(f"weight mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    _rebuild_buffers(hf)
    return hf.eval()


def _config(melody: bool, lm, t5_cfg: dict, codec_kwargs: dict, dec_kwargs: dict):
    """(transformers config, model class) of a text-to-music or melody MusicGen."""
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration)
    if melody:
        chroma = lm.condition_provider.conditioners["self_wav"]
        config = MusicgenMelodyConfig(text_encoder=t5_cfg, audio_encoder=EncodecConfig(**codec_kwargs),
                                      decoder=MusicgenMelodyDecoderConfig(**dec_kwargs),
                                      num_chroma=int(chroma.dim), chroma_length=int(chroma.chroma_len))
        return config, MusicgenMelodyForConditionalGeneration
    config = MusicgenConfig(text_encoder=t5_cfg, audio_encoder=EncodecConfig(**codec_kwargs),
                            decoder=MusicgenDecoderConfig(**dec_kwargs))
    return config, MusicgenForConditionalGeneration


@contextlib.contextmanager
def _quiet_transformers():
    """MusicGen's special token id is the codebook size (2048), one past the decoder's vocabulary:
    transformers warns about it for the released checkpoints too. Not news for our own config."""
    from transformers.utils import logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _rebuild_buffers(hf) -> None:
    """Non-persistent buffers are not in a state dict: recompute the ones left on the meta device
    (sinusoidal positions, the codec's padding constants) by rebuilding those modules on the CPU."""
    for module in list(hf.modules()):
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
    # One step per frame, plus the delay pattern's K - 1 and the start token: a full window.
    steps = int(round(model.max_duration * model.frame_rate)) + model.lm.n_q // int(model.audio_channels)
    return GenerationConfig(do_sample=True, top_k=250, guidance_scale=float(model.lm.cfg_coef), max_length=steps,
                            pad_token_id=card, bos_token_id=card, decoder_start_token_id=card)


def source_folder(source: str) -> str:
    """``source`` itself, or the export folder a run / LoRA adapter folder stands for (a --lora
    run's export already holds the merged weights)."""
    from ..exports import is_export
    path = Path(source).expanduser()
    if not path.is_dir() or is_export(path) or is_transformers_folder(path):
        return source
    from ..evaluation.evaluate_config import resolve_model
    return str(resolve_model(source)[0])


def _load_source(source: str):
    """An audiocraft ``MusicGen`` on the CPU from a run folder, an export folder or a model name."""
    from ..models import load_model
    return load_model(source_folder(source), device="cpu")


def check_out_folder(out: Path, overwrite: bool) -> tp.Optional[dict]:
    """Refuse (ValueError, one line) an out folder that is neither new, empty, nor (with
    ``overwrite``) a previous export of ours; returns that previous export's record."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    record = read_record(out)
    if record is None:
        raise ValueError(f"--out {out} is not empty and is not an export of ours: choose a new or empty folder")
    files = record.get("files")
    # Every pushed export carries a record, so a clone of someone's repo has one too: it decides
    # nothing beyond the names this export itself writes, at the top of the folder.
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError(f"--out {out}: its {RECORD_FILE} has no list of file names; not an export of ours")
    foreign = [f for f in files if not OUR_FILES.fullmatch(f)]
    if foreign:
        raise ValueError(f"--out {out}: its {RECORD_FILE} lists {foreign[0][:80]!r}, a file this export never "
                         f"writes; not replacing it: choose a new or empty folder")
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
        record = {"format": RECORD_FORMAT, "source": shareable_name(getattr(model, "name", str(source))),
                  "dtype": dtype,
                  "max_duration": float(model.max_duration), "files": files + [RECORD_FILE]}
        tiny = _tiny_facts(model)
        if tiny:
            record["tiny"] = tiny
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _usual_permissions(tmp)
        _move_into(tmp, out, previous)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def shareable_name(source: str) -> str:
    """What the record says the export was made from: a model name as given, a local folder by its
    own name only (the record is pushed with the export: no home or absolute paths)."""
    path = Path(str(source)).expanduser()
    return path.name if path.is_absolute() or path.exists() or str(source).startswith(("~", ".")) else str(source)


def _usual_permissions(folder: Path) -> None:
    """mkdtemp (and transformers' own temporary files) are private to their owner: give the
    finished export the permissions any other written folder gets, then flush it to disk."""
    from dataset_tools.atomic import FILE_MODE, finish_temp
    os.chmod(folder, FILE_MODE | ((FILE_MODE & 0o444) >> 2))  # rw-r--r-- -> rwxr-xr-x
    for path in folder.rglob("*"):
        if path.is_file():
            finish_temp(path)


def _tiny_facts(model) -> dict:
    """What a tiny-melody model needs beyond transformers' files: its random stem separator's
    config and seed (the separator is not part of transformers' MusicGen)."""
    ours = (getattr(model.lm, "cfg", None) or {}).get("musicgen_trainer") if hasattr(model.lm, "cfg") else None
    if not ours or "demucs_config" not in ours:
        return {}
    from omegaconf import OmegaConf
    return {"demucs_config": OmegaConf.to_container(ours.demucs_config), "seed": int(ours.tiny.seed)}


def _move_into(tmp: Path, out: Path, previous: tp.Optional[dict]) -> None:
    """Move the finished export ``tmp`` into ``out``. Over a previous export: refuse (one line,
    nothing changed) a new file whose name is taken by a file the old record does not list; else
    first record the union of old and new names, delete the old files, move the new ones in, and
    replace the record last. A crash at any point leaves a record listing every file of ours there,
    so the next --overwrite still recognises the folder and cleans it up."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if previous is None:  # an empty folder
        out.rmdir()
        os.replace(tmp, out)
        return
    old = set(previous.get("files", []))
    new = sorted(p.name for p in tmp.iterdir() if p.is_file())
    taken = [n for n in new if n not in old and (out / n).exists()]
    if taken:
        raise ValueError(f"--out {out} holds {taken[0]}, which its previous export did not write: move it away "
                         f"or choose a new folder")
    interim = dict(previous, files=sorted(old | set(new)))
    part = out / f".{RECORD_FILE}.part"
    part.write_text(json.dumps(interim, indent=2) + "\n")
    os.replace(part, out / RECORD_FILE)
    for name in sorted(old - {RECORD_FILE}):  # ours only: whatever else lives there stays
        target = out / name
        if target.is_file() and not target.is_symlink():
            target.unlink()
    for name in new:
        if name != RECORD_FILE:
            os.replace(tmp / name, out / name)
    os.replace(tmp / RECORD_FILE, out / RECORD_FILE)  # last: the record says the folder is complete
