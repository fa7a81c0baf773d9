"""The eager decode step of ``StaticDecoder`` with as few calls per step as the arithmetic allows.

On the CPU a small model's step is bound by per-call overhead, not arithmetic: audiocraft's
tiny step takes ~2 ms for well under 0.1 ms of arithmetic. ``StaticDecoder._forward`` already
skips the modules' own ``forward`` calls; ``lean_step`` also drops what is repeated at every step
of the same request: looking the weights up on the modules (``nn.Module.__getattr__``), the
per-step weight slices of the cross-attention query, the no-op dtype conversions, the
``[1, T]``-shaped reshapes, the positional scale, and, for a small model (stacked copies of at most
``STACK_BYTES``), one lookup for the K codebook embeddings instead of K (still added one at a time,
rounding after each as audiocraft's ``sum``: ``.sum(dim=1)`` would accumulate half precision in
float32 and round once) and, in float32/float64 only, one matrix product for the K output heads
instead of K (in half precision the CPU's kernels for the stacked and the single shapes need not
round alike). The arithmetic is the same, in the same order, as the general path (the tests check
the codes against audiocraft's loop, in float32, bfloat16 and float16, and in float32 every step's
logits against audiocraft's ``LMModel.forward`` bit for bit: ``test_fast_step_speed.py``).

``lean_plan(lm, dtype)`` gives the plan for one request (plain references to the LM's current
weights: weights updated between requests, e.g. during training, are read afresh), or None for a
layout it does not cover (post-norm layers, layer scales, norms other than LayerNorm, unmerged
adapters on the linear layers, attention in float32 under a lower dtype): the general path then.
"""
from __future__ import annotations

import typing as tp

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

STACK_BYTES = 4 << 20  # stacked embeddings/heads up to this size (the copy is memory on top of the cache)

_STACK_HEAD_DTYPES = (torch.float32, torch.float64)  # one product for the K heads: same rounding as K
_NUMPY_DTYPES = (torch.float32, torch.float64)  # the embedding in numpy (CPU): dtypes numpy has
_PLAIN_LINEAR = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


class LeanLayer(tp.NamedTuple):
    norm1: tuple  # (normalized_shape, weight, bias, eps)
    qkv: tuple  # (weight [3D, D], its transpose [D, 3D] (a view), bias [3D] or None); every linear alike
    out: tuple
    norm_cross: tp.Optional[tuple]
    cross_q: tp.Optional[tuple]  # the query third of the cross-attention's input projection
    cross_out: tp.Optional[tuple]
    norm2: tuple
    linear1: tuple
    activation: tp.Callable
    linear2: tuple


class LeanPlan(tp.NamedTuple):
    layers: tp.List[LeanLayer]
    out_norm: tp.Optional[tuple]
    emb: tp.List[torch.Tensor]  # per codebook [card + 1, D]
    emb_table: tp.Optional[torch.Tensor]  # [K * (card + 1), D] stacked (small models), else None
    emb_offsets: tp.Optional[torch.Tensor]  # [1, K, 1]: k * (card + 1)
    heads: tp.List[tuple]  # per codebook (weight [card, D], its transpose, bias)
    head_table: tp.Optional[tuple]  # ([K * card, D], its transpose, [K * card] or None) stacked, else None


def lean_plan(lm, dtype: torch.dtype) -> tp.Optional[LeanPlan]:
    """The weights of ``lm`` for ``lean_step``, or None when its layout needs the general path."""
    tr = lm.transformer

    def norm(mod):
        if type(mod) is not nn.LayerNorm:
            raise _Unsupported
        return (mod.normalized_shape, mod.weight, mod.bias, mod.eps)

    def linear(mod):
        if type(mod) not in _PLAIN_LINEAR:
            raise _Unsupported
        return _linear_args(mod.weight, mod.bias)

    def attention(attn):
        if hasattr(attn, "base_layer") or (attn.attention_as_float32 and dtype != torch.float32):
            raise _Unsupported
        if attn.custom:
            return attn.in_proj_weight, attn.in_proj_bias, linear(attn.out_proj)
        return attn.mha.in_proj_weight, attn.mha.in_proj_bias, linear(attn.mha.out_proj)

    try:
        layers = []
        for layer in tr.layers:
            if not layer.norm_first or any(type(getattr(layer, s, nn.Identity())) is not nn.Identity
                                           for s in ("layer_scale_1", "layer_scale_2", "layer_scale_cross")):
                raise _Unsupported
            w, b, out = attention(_base(layer.self_attn))
            cross = (None, None, None)
            if layer.cross_attention is not None:
                cw, cb, cout = attention(_base(layer.cross_attention))  # cw: [3D, D]
                d = cw.shape[1]
                cross = (norm(layer.norm_cross), _linear_args(cw[:d], None if cb is None else cb[:d]), cout)
            layers.append(LeanLayer(norm(layer.norm1), _linear_args(w, b), out, *cross, norm(layer.norm2),
                                    linear(layer.linear1), layer.activation, linear(layer.linear2)))
        out_norm = None if lm.out_norm is None else norm(lm.out_norm)
        heads = [linear(mod) for mod in lm.linears]
    except _Unsupported:
        return None
    if any(not isinstance(e, nn.Embedding) or e.max_norm is not None for e in lm.emb):
        return None
    emb = [e.weight for e in lm.emb]
    emb_table = emb_offsets = head_table = None
    if sum(w.numel() * w.element_size() for w in emb) <= STACK_BYTES:
        emb_table = torch.cat(emb)
        emb_offsets = torch.tensor([k * emb[0].shape[0] for k in range(len(emb))],
                                   device=emb_table.device).view(1, -1, 1)
    if dtype in _STACK_HEAD_DTYPES and sum(w.numel() * w.element_size() for w, _, _ in heads) <= STACK_BYTES:
        # [K * card, D] stacked; its transpose a view of the copy, as F.linear's (same kernel, same bits)
        head_table = _linear_args(torch.cat([w for w, _, _ in heads]),
                                  None if heads[0][2] is None else torch.cat([b for _, _, b in heads]))
    return LeanPlan(layers, out_norm, emb, emb_table, emb_offsets, heads, head_table)


class _Unsupported(Exception):
    pass


def _base(attn):
    """audiocraft's attention module under peft's wrapper (``ParamWrapper`` on ``in_proj``), if any."""
    while hasattr(attn, "base_layer"):
        attn = attn.base_layer
    return attn


def lean_embed(plan: LeanPlan, tokens: torch.Tensor) -> torch.Tensor:
    """The summed codebook embeddings of codes ``[B2, K, T]``: ``[B2, T, D]``, added as audiocraft's
    ``sum([emb[k](codes[:, k]) ...])``: k = 0, 1, ... one at a time, rounded to the dtype after each."""
    if plan.emb_table is None:
        return sum([F.embedding(tokens[:, k], w) for k, w in enumerate(plan.emb)])
    e = F.embedding(tokens + plan.emb_offsets, plan.emb_table).unbind(1)  # K x [B2, T, D]: one lookup
    return _sum_in_order(e)


def _sum_in_order(e: tp.Sequence[torch.Tensor]) -> torch.Tensor:
    # K x [..., D] -> their sum, k = 0, 1, ... one at a time (audiocraft's ``sum`` order and rounding)
    x = e[0] + e[1] if len(e) > 1 else e[0].clone()
    for ek in e[2:]:  # not a sum over dim 1: that rounds half precision once, at the end
        x.add_(ek)  # in place: the same rounding as ``x + ek``, one allocation less
    return x


def lean_step(dec, plan: LeanPlan, tokens: torch.Tensor, p: int) -> torch.Tensor:
    """One eager step of decoder ``dec`` (a ``StaticDecoder``): codes ``[B2, K, 1]`` at cache
    position ``p`` -> logits ``[B2, K, card]``.

    Per-call overhead is the cost here (~60 ops of a few microseconds each for the tiny model), so
    the step keeps its one position as ``[B2, D]`` (2-D): ``F.linear`` on a 3-D input reshapes it
    and goes through ``matmul`` before the same ``mm``/``addmm``; ``_mm`` calls that kernel on
    the same 2-D operands directly (the weight's transpose is a view, as ``F.linear``'s). Also
    ``torch.layer_norm`` rather than ``F.layer_norm``'s Python wrapper, residual sums in place
    (``x`` is this step's own tensor), ``narrow`` rather than slicing, locals rather than attribute
    lookups; on CPU float32/64 the embedding lookup, its sums and the positional term, and the
    keys/values' cache writes, in numpy (copies and IEEE sums: a numpy call costs less than a torch
    one). The same kernels on the same values in the same order: the same rounding (tested
    bit-identical to the general path)."""
    b = tokens.shape[0]
    heads, head_dim, dim = dec.heads, dec.head_dim, dec.dim
    layer_norm, attend = torch.layer_norm, F.scaled_dot_product_attention
    mm = _mm if tokens.device.type == "cpu" else _linear
    # CPU float32/64 caches: the step's keys/values written through numpy views of the caches
    # (made once per decoder), the same copy as torch's narrow + copy_ at a fraction of the calls
    caches = dec.__dict__.get("_lean_numpy") if tokens.device.type == "cpu" else None
    if caches is None and tokens.device.type == "cpu" and dec.k_cache.dtype in _NUMPY_DTYPES:
        caches = dec._lean_numpy = ([c.numpy() for c in dec.k_layers], [c.numpy() for c in dec.v_layers])
    if plan.emb_table is None:
        x = lean_embed(plan, tokens)[:, 0]  # [B2, D]
    elif tokens.device.type == "cpu" and plan.emb_table.dtype in _NUMPY_DTYPES:
        # the same lookup (a copy), sums (IEEE, k = 0, 1, ... one at a time) and positional term
        # in numpy: a few numpy calls cost less than torch's per-call overhead on [B2, D]
        # (plan, positional table, their numpy views): made once per request, not per step
        views = dec.__dict__.get("_lean_emb")
        if views is None or views[0] is not plan or views[1] is not dec._sin_scaled:
            dec.position_row(p, plan.emb_table.dtype)  # makes the positional table of this dtype
            sin = dec._sin_scaled
            views = dec._lean_emb = (plan, sin, plan.emb_table.numpy(), plan.emb_offsets.numpy().reshape(1, -1),
                                     sin.numpy()[0])
        e = views[2].take(tokens.numpy().reshape(b, -1) + views[3], axis=0)  # [B2, K, D]
        xn = np.add(e[:, 0], e[:, 1]) if e.shape[1] > 1 else e[:, 0].copy()
        for k in range(2, e.shape[1]):
            np.add(xn, e[:, k], out=xn)
        # position_row's row: [D], or [B2, D] with per-row positions
        np.add(xn, views[4][p] if dec.row_shift is None else dec.position_row(p, plan.emb_table.dtype).numpy(),
               out=xn)
        x = torch.from_numpy(xn)
    else:  # [B2, K] codes -> K x [B2, D]: one lookup, no time dimension to drop afterwards
        x = _sum_in_order(F.embedding(tokens.view(b, -1) + plan.emb_offsets.view(1, -1), plan.emb_table).unbind(1))
        x.add_(dec.position_row(p, x.dtype))
    if plan.emb_table is None:
        x.add_(dec.position_row(p, x.dtype))
    length = p + 1
    valid = None if dec.key_valid is None else dec.key_valid.narrow(3, 0, length)
    cross_k, cross_v, cross_mask = dec.cross_k, dec.cross_v, dec.cross_mask
    for i, layer in enumerate(plan.layers):
        h = layer_norm(x, *layer.norm1)
        kc, vc = dec.k_layers[i], dec.v_layers[i]
        if caches is not None:
            qkv = mm(h, *layer.qkv)
            kv = qkv.numpy().reshape(b, 3, heads, head_dim)
            caches[0][i][:, :, p] = kv[:, 1]  # [B2, H, d] into the cache's position p
            caches[1][i][:, :, p] = kv[:, 2]
            q = qkv.view(b, 3, heads, 1, head_dim).select(1, 0)  # [B2, H, 1, d]
        else:
            q, k, v = mm(h, *layer.qkv).view(b, 3, heads, 1, head_dim).unbind(1)  # [B2, H, 1, d]
            kc.narrow(2, p, 1).copy_(k)
            vc.narrow(2, p, 1).copy_(v)
        a = attend(q, kc.narrow(2, 0, length), vc.narrow(2, 0, length), attn_mask=valid)
        x.add_(mm(a.reshape(b, dim), *layer.out))  # [B2, H, 1, d] -> [B2, H * d]: a view
        if layer.cross_q is not None and cross_k[i] is not None:
            h = layer_norm(x, *layer.norm_cross)
            q = mm(h, *layer.cross_q).view(b, heads, 1, head_dim)
            a = attend(q, cross_k[i], cross_v[i], attn_mask=cross_mask)
            x.add_(mm(a.reshape(b, dim), *layer.cross_out))
        h = layer_norm(x, *layer.norm2)
        x.add_(mm(layer.activation(mm(h, *layer.linear1)), *layer.linear2))
    if plan.out_norm is not None:
        x = layer_norm(x, *plan.out_norm)
    if plan.head_table is not None:  # [B2, K * card] -> [B2, K, card]
        return mm(x, *plan.head_table).view(b, len(plan.heads), -1)
    return torch.stack([mm(x, *head) for head in plan.heads], dim=1)


def _linear_args(weight: torch.Tensor, bias: tp.Optional[torch.Tensor]) -> tuple:
    """``(weight [out, in], weight.t() [in, out] (a view), bias)``: what ``_mm`` and ``_linear`` take."""
    return weight, weight.t(), bias


def _mm(x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor,
        bias: tp.Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2-D ``x`` ``[N, in]`` on the CPU: the kernel it calls,
    on the transposed view made once per request."""
    return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)


def _linear(x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor,
            bias: tp.Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear`` itself (GPUs): under CUDA autocast the cast of a weight that is a leaf
    parameter is cached for the whole generation; a transposed view would be cast again at every step."""
    return F.linear(x, weight, bias)
