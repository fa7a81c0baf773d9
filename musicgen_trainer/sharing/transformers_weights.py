"""Weights and configs between audiocraft's MusicGen and transformers' ``Musicgen*`` classes.

Written from the two libraries' module definitions (audiocraft ``models/lm.py``,
``modules/transformer.py``, ``modules/seanet.py``, ``quantization/core_vq.py``; transformers
``models/musicgen*/modeling_*.py``, ``models/encodec/modeling_encodec.py``):

- LM (audiocraft ``LMModel``) <-> ``decoder`` (``MusicgenForCausalLM``): one embedding and one
  output head per codebook, pre-norm layers; audiocraft packs q/k/v in one ``in_proj_weight``
  ``[3 * dim, dim]`` (rows q, k, v), transformers has three ``[dim, dim]`` projections.
- the caption conditioner's output projection <-> ``enc_to_dec_proj``; the melody chroma
  conditioner's <-> ``audio_enc_to_dec_proj``; the frozen T5 encoder <-> ``text_encoder``.
- EnCodec (SEANet + residual VQ) <-> ``audio_encoder`` (``EncodecModel``): the same
  convolutions in the same order; weight norm's ``weight_g``/``weight_v`` <->
  ``parametrizations.weight.original0``/``original1``. transformers always has an LSTM after
  the encoder and before the decoder; a codec without one (the tiny model) gets a one-layer LSTM
  of zeros, which outputs 0 (``o * tanh(c)`` with ``c = 0``), so the skip around it makes it the
  identity.

``NotExpressible`` (a ``ValueError``, one line) names what transformers cannot represent.
"""
from __future__ import annotations

import typing as tp

import torch
from torch import nn

LM_PREFIX = "decoder.model.decoder."


class NotExpressible(ValueError):
    """The model has a part transformers' MusicGen cannot represent (one-line message)."""


# --- facts read from the audiocraft modules ------------------------------------------------

def mono_codec(compression_model):
    """The mono ``EncodecModel`` inside (stereo models wrap it in ``InterleaveStereoCompressionModel``)."""
    return getattr(compression_model, "model", compression_model)


def _convs(module: nn.Module) -> tp.List[tp.Tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


def _lstms(module: nn.Module) -> tp.List[tp.Tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.LSTM)]


def codec_config(compression_model, sample_rate: int) -> dict:
    """``EncodecConfig`` keyword arguments describing audiocraft's 32 kHz EnCodec (mono)."""
    from audiocraft.modules.conv import StreamableConv1d
    from audiocraft.modules.seanet import SEANetResnetBlock
    codec = mono_codec(compression_model)
    enc, dec = codec.encoder, codec.decoder
    if getattr(codec, "renormalize", False):
        raise NotExpressible("the codec renormalises its input (EncodecConfig normalize differs); cannot export")
    stream_convs = [m for m in enc.modules() if isinstance(m, StreamableConv1d)]
    blocks = [m for m in enc.modules() if isinstance(m, SEANetResnetBlock)]
    if any(not isinstance(b.shortcut, nn.Identity) for b in blocks):
        raise NotExpressible("the codec's residual blocks have convolution shortcuts (true_skip false); cannot export")
    first, last = stream_convs[0].conv.conv, stream_convs[-1].conv.conv
    block_convs = [m.conv.conv for m in blocks[0].block if isinstance(m, StreamableConv1d)] if blocks else []
    lstms = _lstms(enc)
    quantizer = codec.quantizer
    n_q = int(quantizer.total_codebooks)
    bins = int(quantizer.bins)
    frame_rate = float(codec.frame_rate)
    norms = {type(m.conv.norm).__name__ for m in stream_convs}
    if any(getattr(m.conv, "norm_type", "weight_norm") != "weight_norm" for m in stream_convs):
        raise NotExpressible(f"the codec's convolutions use {norms} instead of weight norm; cannot export")
    causal = bool(stream_convs[0].causal)
    return dict(
        sampling_rate=int(sample_rate), audio_channels=int(codec.channels), normalize=False,
        hidden_size=int(enc.dimension), num_filters=int(enc.n_filters),
        num_residual_layers=int(enc.n_residual_layers), upsampling_ratios=[int(r) for r in dec.ratios],
        norm_type="weight_norm", kernel_size=int(first.kernel_size[0]), last_kernel_size=int(last.kernel_size[0]),
        residual_kernel_size=int(block_convs[0].kernel_size[0]) if block_convs else 3,
        dilation_growth_rate=2 if enc.n_residual_layers < 2 else
        int(blocks[1].block[1].conv.conv.dilation[0]),
        use_causal_conv=causal, pad_mode=str(stream_convs[0].pad_mode),
        compress=int(block_convs[0].in_channels // block_convs[0].out_channels) if block_convs else 2,
        num_lstm_layers=max(1, lstms[0][1].num_layers if lstms else 1),
        trim_right_ratio=1.0, codebook_size=bins, codebook_dim=int(quantizer.dimension),
        use_conv_shortcut=False, chunk_length_s=None, overlap=None,
        target_bandwidths=[_bandwidth(n_q, frame_rate, (bins - 1).bit_length())],
    )


def _bandwidth(n_q: int, frame_rate: float, bits: int) -> float:
    """The bandwidth (kbps) from which transformers derives ``n_q`` codebooks
    (``int(1000 * bandwidth // (frame_rate * bits))``), safe from float rounding down."""
    bandwidth = n_q * frame_rate * bits / 1000.0
    while int(1000 * bandwidth // (frame_rate * bits)) < n_q:
        bandwidth = float(torch.nextafter(torch.tensor(bandwidth, dtype=torch.float64),
                                          torch.tensor(float("inf"), dtype=torch.float64)))
    return bandwidth


def _lm_check(lm) -> None:
    """Refuse an LM whose layers transformers' MusicgenDecoder cannot represent."""
    layer = lm.transformer.layers[0]
    cfg = getattr(lm, "cfg", None)
    tcfg = dict(cfg.transformer_lm) if cfg is not None and "transformer_lm" in cfg else {}
    checks = [
        (tcfg.get("bias_attn", False) or tcfg.get("bias_ff", False) or tcfg.get("bias_proj", False),
         "biases in the LM's linear layers"),
        (tcfg.get("norm", "layer_norm") != "layer_norm", "an LM norm other than layer_norm"),
        (not tcfg.get("norm_first", True), "post-norm LM layers"),
        (tcfg.get("activation", "gelu") != "gelu", "an activation other than gelu"),
        (tcfg.get("positional_embedding", "sin") != "sin", "non-sinusoidal positions"),
        (tcfg.get("layer_scale") is not None, "layer scale"),
        (tcfg.get("qk_layer_norm", False) or tcfg.get("qk_layer_norm_cross", False), "q/k layer norm"),
        (int(tcfg.get("kv_repeat", 1)) != 1, "grouped key/value heads"),
        (getattr(lm.transformer, "max_period", 10000) != 10000 or
         getattr(lm.transformer, "positional_scale", 1.0) != 1.0, "a non-standard positional embedding"),
        (getattr(lm.fuser, "cross_attention_pos_emb", False), "positions on the cross-attention input"),
        (getattr(layer.self_attn, "in_proj_weight", None) is None, "attention without packed q/k/v weights"),
    ]
    for bad, what in checks:
        if bad:
            raise NotExpressible(f"the model has {what}, which transformers' MusicGen has not; cannot export")
    n_q = lm.n_q
    delays = list(lm.pattern_provider.delays) if hasattr(lm.pattern_provider, "delays") else None
    stereo = [d for d in range(n_q // 2) for _ in range(2)]
    if delays not in (list(range(n_q)), stereo):
        raise NotExpressible(f"the codebook pattern {delays} is not MusicGen's delay pattern; cannot export")


def is_melody(lm) -> bool:
    return "self_wav" in lm.condition_provider.conditioners


def text_encoder(lm):
    """The frozen T5 encoder (kept outside the module tree by audiocraft and by tiny.py)."""
    return lm.condition_provider.conditioners["description"].__dict__["t5"]


def decoder_config(lm, audio_channels: int, window_s: float) -> dict:
    """``MusicgenDecoderConfig`` keyword arguments for audiocraft's ``LMModel``."""
    _lm_check(lm)
    layer = lm.transformer.layers[0]
    card = int(lm.card)
    return dict(vocab_size=card, max_position_embeddings=max(2048, int(window_s * 50) + 512),
                num_hidden_layers=len(lm.transformer.layers), ffn_dim=int(layer.linear1.out_features),
                num_attention_heads=int(layer.self_attn.num_heads), hidden_size=int(lm.dim),
                layerdrop=0.0, use_cache=True, activation_function="gelu", dropout=0.0, attention_dropout=0.0,
                activation_dropout=0.0, scale_embedding=False, num_codebooks=int(lm.n_q),
                audio_channels=int(audio_channels), pad_token_id=card, bos_token_id=card,
                decoder_start_token_id=card, tie_word_embeddings=False)


# --- state dicts --------------------------------------------------------------------------

def _weight_norm_names(keys: tp.Iterable[str]) -> tp.Dict[str, str]:
    """Canonical name (g, v, weight, bias) -> this module's state-dict key."""
    out = {}
    for key in keys:
        if key.endswith("weight_g") or key.endswith("parametrizations.weight.original0"):
            out["g"] = key
        elif key.endswith("weight_v") or key.endswith("parametrizations.weight.original1"):
            out["v"] = key
        elif key.endswith("bias"):
            out["bias"] = key
        elif key.endswith("weight"):
            out["weight"] = key
    return out


def _module_keys(root: nn.Module, name: str) -> tp.List[str]:
    mod = root.get_submodule(name) if name else root
    return [f"{name}.{k}" if name else k for k in mod.state_dict().keys()]


def codec_pairs(ac_codec: nn.Module, hf_codec: nn.Module) -> tp.List[tp.Tuple[tp.Optional[str], str]]:
    """(audiocraft key or None, transformers key) for every codec tensor; None: a zero LSTM tensor.

    Pairs the convolutions (and LSTMs) of the two SEANet stacks in module order, then the codebooks.
    ``ac_codec``: audiocraft's mono ``EncodecModel``; ``hf_codec``: transformers' ``EncodecModel``
    (may live on the meta device: only names and shapes are read)."""
    pairs: tp.List[tp.Tuple[tp.Optional[str], str]] = []
    for part in ("encoder", "decoder"):
        ac_part, hf_part = getattr(ac_codec, part), getattr(hf_codec, part)
        ac_convs, hf_convs = _convs(ac_part), _convs(hf_part)
        if len(ac_convs) != len(hf_convs):
            raise NotExpressible(f"the codec's {part} has {len(ac_convs)} convolutions, EncodecConfig "
                                 f"describes {len(hf_convs)}; cannot convert")
        for (ac_name, ac_mod), (hf_name, hf_mod) in zip(ac_convs, hf_convs):
            if ac_mod.weight.shape != hf_mod.weight.shape:
                raise NotExpressible(f"codec {part} convolution {ac_name} has shape {tuple(ac_mod.weight.shape)}, "
                                     f"transformers expects {tuple(hf_mod.weight.shape)}; cannot convert")
            ac = _weight_norm_names(_module_keys(ac_part, ac_name))
            hf = _weight_norm_names(_module_keys(hf_part, hf_name))
            if set(ac) != set(hf):
                raise NotExpressible(f"codec {part} convolution {ac_name} is normalised differently; cannot convert")
            pairs += [(f"{part}.{ac[k]}", f"{part}.{hf[k]}") for k in sorted(ac)]
        ac_lstms, hf_lstms = _lstms(ac_part), _lstms(hf_part)
        for i, (hf_name, hf_mod) in enumerate(hf_lstms):
            hf_keys = _module_keys(hf_part, hf_name)
            if i < len(ac_lstms):
                ac_keys = _module_keys(ac_part, ac_lstms[i][0])
                if [k.rsplit(".", 1)[1] for k in ac_keys] != [k.rsplit(".", 1)[1] for k in hf_keys]:
                    raise NotExpressible(f"the codec's {part} LSTM has another layer count; cannot convert")
                pairs += [(f"{part}.{a}", f"{part}.{h}") for a, h in zip(ac_keys, hf_keys)]
            else:
                pairs += [(None, f"{part}.{h}") for h in hf_keys]
    for i in range(len(hf_codec.quantizer.layers)):
        for name in ("inited", "cluster_size", "embed", "embed_avg"):
            pairs.append((f"quantizer.vq.layers.{i}._codebook.{name}", f"quantizer.layers.{i}.codebook.{name}"))
    return pairs


def _lm_pairs(n_layers: int, n_q: int, cross: bool, melody: bool) -> tp.List[tp.Tuple[str, str]]:
    """(audiocraft LM key, transformers key) for every LM tensor except the packed q/k/v."""
    pairs = [(f"emb.{k}.weight", f"{LM_PREFIX}embed_tokens.{k}.weight") for k in range(n_q)]
    pairs += [(f"linears.{k}.weight", f"decoder.lm_heads.{k}.weight") for k in range(n_q)]
    pairs += [(f"out_norm.{p}", f"{LM_PREFIX}layer_norm.{p}") for p in ("weight", "bias")]
    pairs += [(f"condition_provider.conditioners.description.output_proj.{p}", f"enc_to_dec_proj.{p}")
              for p in ("weight", "bias")]
    if melody:
        pairs += [(f"condition_provider.conditioners.self_wav.output_proj.{p}", f"audio_enc_to_dec_proj.{p}")
                  for p in ("weight", "bias")]
    for i in range(n_layers):
        ac, hf = f"transformer.layers.{i}.", f"{LM_PREFIX}layers.{i}."
        names = [("self_attn.out_proj.weight", "self_attn.out_proj.weight"),
                 ("linear1.weight", "fc1.weight"), ("linear2.weight", "fc2.weight")]
        names += [(f"norm1.{p}", f"self_attn_layer_norm.{p}") for p in ("weight", "bias")]
        names += [(f"norm2.{p}", f"final_layer_norm.{p}") for p in ("weight", "bias")]
        if cross:
            names += [("cross_attention.out_proj.weight", "encoder_attn.out_proj.weight")]
            names += [(f"norm_cross.{p}", f"encoder_attn_layer_norm.{p}") for p in ("weight", "bias")]
        pairs += [(ac + a, hf + h) for a, h in names]
    return pairs


def _packed(n_layers: int, cross: bool) -> tp.List[tp.Tuple[str, str]]:
    """(audiocraft packed q/k/v key, transformers prefix of q_proj/k_proj/v_proj)."""
    out = []
    for i in range(n_layers):
        out.append((f"transformer.layers.{i}.self_attn.in_proj_weight", f"{LM_PREFIX}layers.{i}.self_attn."))
        if cross:
            out.append((f"transformer.layers.{i}.cross_attention.in_proj_weight",
                        f"{LM_PREFIX}layers.{i}.encoder_attn."))
    return out


def lm_to_transformers(lm_state: dict, n_layers: int, n_q: int, cross: bool, melody: bool) -> dict:
    """audiocraft LM state dict -> transformers keys (decoder, enc_to_dec_proj, audio_enc_to_dec_proj)."""
    out = {hf: lm_state[ac] for ac, hf in _lm_pairs(n_layers, n_q, cross, melody)}
    for ac, hf in _packed(n_layers, cross):
        q, k, v = lm_state[ac].chunk(3, dim=0)
        out.update({hf + "q_proj.weight": q, hf + "k_proj.weight": k, hf + "v_proj.weight": v})
    return out


def lm_from_transformers(state: dict, n_layers: int, n_q: int, cross: bool, melody: bool) -> dict:
    """The reverse of ``lm_to_transformers`` (buffers such as the chroma window are not included)."""
    out = {ac: state[hf] for ac, hf in _lm_pairs(n_layers, n_q, cross, melody)}
    for ac, hf in _packed(n_layers, cross):
        out[ac] = torch.cat([state[hf + "q_proj.weight"], state[hf + "k_proj.weight"],
                             state[hf + "v_proj.weight"]], dim=0)
    return out


def codec_to_transformers(ac_codec, hf_codec) -> dict:
    """audiocraft codec state -> ``audio_encoder.*`` tensors (the zero LSTM included)."""
    ac_state = ac_codec.state_dict()
    hf_shapes = {k: v.shape for k, v in hf_codec.state_dict().items()}
    out = {}
    for ac, hf in codec_pairs(ac_codec, hf_codec):
        out["audio_encoder." + hf] = ac_state[ac] if ac is not None else torch.zeros(hf_shapes[hf])
    return out


def codec_from_transformers(state: dict, ac_codec, hf_codec) -> dict:
    """``audio_encoder.*`` tensors -> audiocraft codec state dict. A transformers LSTM that
    audiocraft's codec has no place for must be all zeros (then it is the identity)."""
    out = {}
    for ac, hf in codec_pairs(ac_codec, hf_codec):
        tensor = state["audio_encoder." + hf]
        if ac is None:
            if bool(tensor.any()):
                raise NotExpressible("the codec's LSTM is not the identity, but the audiocraft codec built from "
                                     "its config has none; cannot convert")
            continue
        out[ac] = tensor
    return out
