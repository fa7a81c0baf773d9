"""A faster forward pass for audiocraft's ``LMModel`` when decoding: static cache, one batch.

audiocraft decodes through its streaming modules: at every step each self-attention layer
concatenates its past keys/values with the new ones (a copy of the whole cache per step), each
cross-attention layer projects the text condition to keys/values again, and the positional
embedding, the fuser and the streaming state are Python bookkeeping around small kernels.
``StaticDecoder`` runs the same arithmetic on the same weights (the LM's own modules and
parameters, read in place: fine-tuned or LoRA-merged weights are ordinary weights) with:

- a preallocated key/value cache per self-attention layer ``[B2, H, T_max, D/H]``, written in
  place at the step's position;
- cross-attention keys/values projected once per request;
- a decode step of fixed shapes (one token per stream, the position as a tensor): with
  ``compile`` it is ``torch.compile``d (``mode="reduce-overhead"``, CUDA graphs, on CUDA) and
  attends over the whole cache with a position mask; eager, it attends over the filled part.

The decoding loop itself (conditions, classifier-free guidance, delay pattern, sampling, the
RNG order) is in ``fast_generate.py``. ``unsupported_reason(lm)`` names what this module does
not reproduce (callers then use audiocraft's own loop).
"""
from __future__ import annotations

import types
import typing as tp

import torch
from torch import nn
import torch.nn.functional as F

from .fast_step import _base, lean_plan, lean_step

CACHE_BUCKET = 64  # cache lengths are rounded up to this, so compiled steps are reused across lengths
# A fixed-shape (compiled) decoder pads the batch to one of ROW_BUCKETS rows (then multiples of the
# last) with dummy rows, and the cross-attention source (masked) to its capacity: CROSS_BUCKET
# tokens, doubled when a longer one comes and never shrunk. Every new shape is a new graph (and
# dynamo stops compiling a function after 8 graphs: config.recompile_limit), so whatever the
# traffic a decoder compiles at most a few (one per capacity: 32, 64, 128, ... tokens).
CROSS_BUCKET = 32
ROW_BUCKETS = (2, 4, 8, 16)


def unsupported_reason(lm) -> tp.Optional[str]:
    """None when ``StaticDecoder`` reproduces ``lm``'s forward pass, else why not (one phrase)."""
    from audiocraft.modules.transformer import StreamingTransformerLayer

    tr = getattr(lm, "transformer", None)
    if tr is None or not hasattr(tr, "layers"):
        return "the LM has no audiocraft StreamingTransformer"
    if getattr(lm, "_fsdp", None) is not None:
        return "the LM is wrapped in FSDP"
    if getattr(tr, "positional_embedding", "sin") != "sin":
        return f"positional embedding {tr.positional_embedding!r} (only 'sin')"
    fuse = getattr(lm.fuser, "fuse2cond", {})
    if fuse.get("sum") or fuse.get("input_interpolate"):
        return "conditions fused by sum or interpolation (only prepend and cross-attention)"
    for layer in tr.layers:
        if type(layer) is not StreamingTransformerLayer:
            return f"custom transformer layer {type(layer).__name__}"
        for attn in (layer.self_attn, layer.cross_attention):
            if attn is None:
                continue
            if hasattr(attn, "base_layer") and not getattr(attn, "merged", True):
                # peft's ParamWrapper reparametrises in_proj_weight inside its own forward, which
                # the decoder does not call (raw_weights_folded or a merged model are fine).
                return "an unmerged LoRA adapter on the attention's input projection"
            attn = _base(attn)
            if attn.past_context is not None or attn.kv_repeat != 1 or attn.qk_layer_norm:
                return "attention with past_context, kv_repeat or qk_layer_norm"
            if attn.rope is not None:
                return "rotary embeddings"
        if not _base(layer.self_attn).causal:
            return "non-causal self-attention"
    return None


def _proj(attn) -> tp.Tuple[torch.Tensor, tp.Optional[torch.Tensor], nn.Module]:
    """(in_proj weight [3D, D], bias [3D] or None, out_proj) of audiocraft's attention, custom or
    ``nn.MultiheadAttention``: both pack q, k, v as ``(p h d)`` with p outermost."""
    attn = _base(attn)
    if attn.custom:
        return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj
    return attn.mha.in_proj_weight, attn.mha.in_proj_bias, attn.mha.out_proj


class StaticDecoder(nn.Module):
    """Forward pass of one ``LMModel`` for a batch of ``B2`` streams (both CFG halves) over a
    preallocated cache of ``t_max`` positions. ``prefill`` then ``step``, one request at a time.

    The LM is held outside the module tree (its parameters are read, never copied or owned).

    ``fixed`` (the compiled path): ``batch`` is a row bucket (``bucket_rows``); a request of fewer
    rows (``use_rows``) is padded with dummy rows, its cross-attention source padded to
    ``cross_capacity`` tokens (doubled when too short), and the step always takes the masks and
    per-row positions as tensors: one graph per decoder and capacity, whatever the captions,
    prefixes and batch sizes.
    """

    def __init__(self, lm, batch: int, t_max: int, dtype: torch.dtype, device: torch.device,
                 fixed: bool = False, cross_capacity: int = CROSS_BUCKET):
        super().__init__()
        self.__dict__["lm"] = lm
        self.fixed = fixed
        self.cross_capacity = cross_capacity  # fixed: the padded cross-attention length
        self.rows = batch  # the request's rows (fixed: the rest of ``batch`` are dummy rows)
        tr = lm.transformer
        first = _base(tr.layers[0].self_attn)
        self.heads = first.num_heads
        self.dim = first.embed_dim
        self.head_dim = self.dim // self.heads
        self.t_max = t_max
        self.batch = batch
        shape = (len(tr.layers), batch, self.heads, t_max, self.head_dim)
        # Buffers (not plain attributes) so that a compiled step sees them as static inputs it
        # may mutate in place (CUDA graphs keep their addresses).
        # Made outside inference mode even under a caller's: a kept (compiled) decoder made during
        # one call is written in place by later calls, which may run outside inference mode.
        with torch.inference_mode(False):
            self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
            self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        if torch.device(device).type == "cuda":  # CUDA graphs: the caches keep their address, mutated in place
            for buf in (self.k_cache, self.v_cache):
                torch._dynamo.mark_static_address(buf)
        self.k_layers, self.v_layers = self.k_cache.unbind(0), self.v_cache.unbind(0)  # views per layer
        self.cross_k: tp.List[tp.Optional[torch.Tensor]] = [None] * len(tr.layers)
        self.cross_v: tp.List[tp.Optional[torch.Tensor]] = [None] * len(tr.layers)
        self.positions = torch.arange(t_max, device=device)
        self._sin: tp.Optional[torch.Tensor] = None  # [1, t_max, D] positional embeddings, made once
        self._sin_scaled: tp.Optional[torch.Tensor] = None  # the same times the positional scale
        self._plan = None  # fast_step.LeanPlan of the current request, or None: the general path
        # Rows whose conditions are shorter than the batch's (per-row requests, see set_rows): the
        # cross-attention keys past a row's own length and the gap after a row's own prefix are
        # masked, and a row's positions skip that gap, as if the row ran alone. None: no padding.
        self.cross_mask: tp.Optional[torch.Tensor] = None  # [B2, 1, 1, Tc] bool, True = attend
        self.key_valid: tp.Optional[torch.Tensor] = None  # [B2, 1, 1, t_max] bool
        self.row_shift: tp.Optional[torch.Tensor] = None  # [B2] long: the row's gap length
        self.n_prefix = 0
        # Fixed decoders: the step's key mask and positions, always tensors (no None variants).
        self.step_valid: tp.Optional[torch.Tensor] = None  # [batch, 1, 1, t_max] bool
        self.row_pos: tp.Optional[torch.Tensor] = None  # [batch, t_max] long: each row's positional index
        self._compiled: tp.Optional[tp.Callable] = None

    # --- per request ---------------------------------------------------------------

    def use_rows(self, rows: int) -> None:
        """The next request has ``rows`` rows (B2), at most ``batch`` (fixed decoders only pad)."""
        if rows > self.batch or (rows != self.batch and not self.fixed):
            raise ValueError(f"a request of {rows} rows on a decoder of {self.batch}")
        self.rows = rows

    def _pad_lengths(self, lengths: tp.Optional[torch.Tensor], full: int, device) -> torch.Tensor:
        # [batch] lengths: the request's (or ``full``), dummy rows ``full``.
        out = torch.full((self.batch,), full, dtype=torch.long, device=device)
        if lengths is not None:
            out[:lengths.shape[0]] = lengths
        return out

    def set_cross(self, cross: tp.Optional[torch.Tensor], lengths: tp.Optional[torch.Tensor] = None) -> None:
        """Project the cross-attention source ``[B2, Tc, D]`` to each layer's keys/values once.
        ``lengths`` ``[B2]``: each row's own source length (the rest is padding, not attended)."""
        self._plan = lean_plan(self.lm, self.k_cache.dtype)
        self.cross_mask = None
        if self.fixed and cross is not None:  # rows to the bucket, tokens to the (grown) capacity
            b, tc, _ = cross.shape
            lengths = self._pad_lengths(lengths, max(tc, 1), cross.device)
            while self.cross_capacity < tc:
                self.cross_capacity *= 2
            padded = cross.new_zeros(self.batch, self.cross_capacity, cross.shape[2])
            padded[:b, :tc] = cross
            cross = padded
        if cross is not None and lengths is not None and (self.fixed or bool((lengths < cross.shape[1]).any())):
            self.cross_mask = (torch.arange(cross.shape[1], device=cross.device) < lengths[:, None]).view(
                lengths.shape[0], 1, 1, -1)
        for i, layer in enumerate(self.lm.transformer.layers):
            if layer.cross_attention is None or cross is None:
                self.cross_k[i] = self.cross_v[i] = None
                continue
            w, b, _ = _proj(layer.cross_attention)
            d = self.dim
            k = F.linear(cross, w[d:2 * d], None if b is None else b[d:2 * d])
            v = F.linear(cross, w[2 * d:], None if b is None else b[2 * d:])
            self.cross_k[i], self.cross_v[i] = self._heads(k), self._heads(v)

    def set_rows(self, n_prefix: int, lengths: tp.Optional[torch.Tensor] = None) -> None:
        """The prefix (prepended conditions) spans cache positions ``[0, n_prefix)``; ``lengths``
        ``[B2]``: each row's own prefix length, the rest of the row's prefix a gap (right padding):
        masked as a key, and the row's later positions numbered without it (None: no gap)."""
        self.n_prefix = n_prefix
        self.key_valid = self.row_shift = None
        j = self.positions.view(1, -1)
        if self.fixed:
            lengths = self._pad_lengths(lengths, n_prefix, self.positions.device)
            shift = (n_prefix - lengths).view(-1, 1)
            self.step_valid = ((j < lengths[:, None]) | (j >= n_prefix)).view(self.batch, 1, 1, -1)
            self.row_pos = torch.where(j >= n_prefix, j - shift, j)
        if lengths is not None and bool((lengths < n_prefix).any()):
            self.key_valid = ((j < lengths[:, None]) | (j >= n_prefix)).view(lengths.shape[0], 1, 1, -1)
            self.row_shift = (n_prefix - lengths).to(self.positions.device)

    def _row_positions(self, pos: tp.Optional[torch.Tensor], t: int) -> torch.Tensor:
        # [B2, t] positional index of each row's inputs: the cache position less the row's gap
        # (gap positions keep their own index: they are never attended).
        j = self.positions[:t].view(1, -1) if pos is None else pos.view(1, 1)
        return torch.where(j >= self.n_prefix, j - self.row_shift.view(-1, 1), j)

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """Run the first ``T0`` inputs (condition prefix + tokens) from position 0.

        Args:
            x: embedded input ``[B2, T0, D]`` (prefix and summed token embeddings).
        Returns:
            logits ``[B2, K, T0, card]``.
        """
        rows = x.shape[0]
        if rows < self.batch:  # dummy rows (fixed decoders)
            x = torch.cat([x, x.new_zeros(self.batch - rows, *x.shape[1:])])
        return self._forward(x, None, x.shape[1])[:rows]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B2, K, T]`` codes -> ``[B2, T, D]``, summed in audiocraft's order (bit-identical)."""
        emb = self.lm.emb
        return sum([emb[k](tokens[:, k]) for k in range(len(emb))])

    def step(self, tokens: torch.Tensor, p: int, compiled: bool = False) -> torch.Tensor:
        """One decoding step: codes ``[B2, K, 1]`` at cache position ``p`` -> logits ``[B2, K, card]``."""
        if self._plan is not None and not compiled and not self.fixed:  # the eager CPU loop's path
            return lean_step(self, self._plan, tokens, p)
        pos, length = self.positions[p:p + 1], p + 1
        rows = tokens.shape[0]
        if rows < self.batch:  # dummy rows (fixed decoders): code 0, their logits dropped
            return self.step(torch.cat([tokens, tokens.new_zeros(self.batch - rows, *tokens.shape[1:])]), p,
                             compiled)[:rows]
        if compiled:
            if self._compiled is None:
                self._compiled = torch.compile(self._own_fixed_step(), mode=_compile_mode(tokens.device),
                                               fullgraph=False, dynamic=False)
            return self._compiled(tokens, pos)
        if self._plan is not None:
            return lean_step(self, self._plan, tokens, length - 1)
        return self._forward(self.embed(tokens), pos, length)[:, :, -1]

    def scaled_positions(self, p: int, dtype: torch.dtype) -> torch.Tensor:
        """The positional term added at cache position ``p``: ``[1, 1, D]``, or ``[B2, 1, D]`` with
        per-row positions (``set_rows``); ``positional_scale`` applied once for all positions."""
        if self._sin_scaled is None or self._sin_scaled.dtype != dtype:
            from audiocraft.modules.transformer import create_sin_embedding
            tr = self.lm.transformer
            sin = create_sin_embedding(self.positions.view(1, -1, 1), self.dim, max_period=tr.max_period, dtype=dtype)
            self._sin_scaled = tr.positional_scale * sin
        if self.row_shift is None:
            return self._sin_scaled[:, p:p + 1]
        return self._sin_scaled[0][self._row_positions(self.positions[p:p + 1], 1)]

    def position_row(self, p: int, dtype: torch.dtype) -> torch.Tensor:
        """``scaled_positions(p, dtype)[:, 0]``: ``[D]`` (broadcast over the rows), or ``[B2, D]``
        with per-row positions; one indexing call per step on the common path."""
        sin = self._sin_scaled
        if self.row_shift is None and sin is not None and sin.dtype == dtype:
            return sin[0, p]
        return self.scaled_positions(p, dtype)[:, 0]

    def _own_fixed_step(self) -> tp.Callable:
        # ``_fixed_step`` bound to this decoder through a code object of its own: dynamo keeps its
        # graphs, and counts them against its recompile limit, per code object, so the decoders of
        # the row buckets (and of several models) do not share one budget of 8 graphs. A fixed
        # decoder then needs one graph per cross capacity; it is freed with the decoder.
        f = StaticDecoder._fixed_step
        own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
        return types.MethodType(own, self)

    def _fixed_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # Fixed shapes: the attention spans the whole cache, the unfilled part masked out.
        return self._forward(self.embed(tokens), pos, None)[:, :, -1]

    # --- the transformer ---------------------------------------------------------------

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def _forward(self, x: torch.Tensor, pos: tp.Optional[torch.Tensor], length: tp.Optional[int]) -> torch.Tensor:
        """``x`` ``[B2, T, D]`` at positions ``pos..pos+T-1`` (prefill: ``pos`` None, from 0);
        ``length`` the filled cache length after this call (None: mask instead of slicing)."""
        from audiocraft.modules.transformer import create_sin_embedding

        lm, tr = self.lm, self.lm.transformer
        b, t, c = x.shape
        if self._sin is None or self._sin.dtype != x.dtype:
            # The same elementwise function of the position as audiocraft's, once for all positions.
            self._sin = create_sin_embedding(self.positions.view(1, -1, 1), c, max_period=tr.max_period, dtype=x.dtype)
        if pos is not None and self.row_pos is not None:  # fixed decoders: positions as a tensor
            pos_emb = self._sin[0][self.row_pos.index_select(1, pos)]  # [B2, t, D]
        elif self.row_shift is not None:
            pos_emb = self._sin[0][self._row_positions(pos, t)]  # [B2, t, D]
        else:
            pos_emb = self._sin[:, :t] if pos is None else self._sin.index_select(1, pos)
        x = x + tr.positional_scale * pos_emb
        for i, layer in enumerate(tr.layers):
            x = self._layer(i, layer, x, pos, length)
        if lm.out_norm is not None:
            x = _norm(lm.out_norm, x)
        return torch.stack([_linear(lm.linears[k], x) for k in range(len(lm.linears))], dim=1)

    def _layer(self, i: int, layer, x: torch.Tensor, pos, length) -> torch.Tensor:
        # As StreamingTransformerLayer.forward, eval mode (dropouts are identities); the same
        # functional calls its modules make, without their per-call overhead.
        cross = self.cross_k[i] is not None
        if layer.norm_first:
            x = _add_scaled(x, layer.layer_scale_1, self._self_attention(i, layer.self_attn, _norm(layer.norm1, x), pos, length))
            if cross:
                x = _add_scaled(x, layer.layer_scale_cross,
                                self._cross_attention(i, layer.cross_attention, _norm(layer.norm_cross, x)))
            return _add_scaled(x, layer.layer_scale_2, _feed_forward(layer, _norm(layer.norm2, x)))
        src = x
        x = _norm(layer.norm1, _add_scaled(x, layer.layer_scale_1, self._self_attention(i, layer.self_attn, x, pos, length)))
        if cross:  # audiocraft's post-norm layer queries the cross-attention with the layer's input
            x = _norm(layer.norm_cross, _add_scaled(x, layer.layer_scale_cross,
                                                    self._cross_attention(i, layer.cross_attention, src)))
        return _norm(layer.norm2, _add_scaled(x, layer.layer_scale_2, _feed_forward(layer, x)))

    def _self_attention(self, i: int, attn, x: torch.Tensor, pos, length) -> torch.Tensor:
        w, bias, out_proj = _proj(attn)
        b, t, _ = x.shape
        qkv = F.linear(x, w, bias).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B2, H, T, d]
        kc, vc = self.k_cache[i], self.v_cache[i]
        if pos is None:
            valid = self.key_valid  # prefill from position 0: causal over the new positions only
            kc[:, :, :t].copy_(k)
            vc[:, :, :t].copy_(v)
            if valid is None:
                out = self._attend(attn, q, k, v, causal=t > 1, mask=None)
            else:  # causal, without the rows' gaps (a gap query attends to itself: no empty row)
                j = self.positions[:t]
                mask = ((j.view(-1, 1) >= j.view(1, -1)) & valid[..., :t]) | (j.view(-1, 1) == j.view(1, -1))
                out = self._attend(attn, q, k, v, causal=False, mask=mask)
        else:
            kc.index_copy_(2, pos, k)
            vc.index_copy_(2, pos, v)
            if length is None:
                mask = (self.positions <= pos).view(1, 1, 1, -1)
                # Fixed decoders read only ``step_valid`` (a tensor): None/tensor would be two graphs.
                valid = self.step_valid if self.step_valid is not None else self.key_valid
                out = self._attend(attn, q, kc, vc, causal=False, mask=mask if valid is None else mask & valid)
            else:
                valid = self.key_valid
                out = self._attend(attn, q, kc[:, :, :length], vc[:, :, :length], causal=False,
                                   mask=None if valid is None else valid[..., :length])
        return _linear(out_proj, out.transpose(1, 2).reshape(b, t, self.dim))

    def _cross_attention(self, i: int, attn, x: torch.Tensor) -> torch.Tensor:
        w, bias, out_proj = _proj(attn)
        d = self.dim
        q = self._heads(F.linear(x, w[:d], None if bias is None else bias[:d]))
        out = self._attend(attn, q, self.cross_k[i], self.cross_v[i], causal=False, mask=self.cross_mask)
        b, _, t, _ = out.shape
        return _linear(out_proj, out.transpose(1, 2).reshape(b, t, self.dim))

    @staticmethod
    def _attend(attn, q, k, v, causal: bool, mask) -> torch.Tensor:
        dtype = q.dtype
        if _base(attn).attention_as_float32:
            q, k, v = q.float(), k.float(), v.float()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).to(dtype)


def _linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(mod) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return F.linear(x, mod.weight, mod.bias)
    return mod(x)  # e.g. a LoRA layer not merged: its own forward


def _norm(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(mod) is nn.LayerNorm:
        return F.layer_norm(x, mod.normalized_shape, mod.weight, mod.bias, mod.eps)
    return mod(x)


def _add_scaled(x: torch.Tensor, scale: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return x + (y if type(scale) is nn.Identity else scale(y))


def _feed_forward(layer, x: torch.Tensor) -> torch.Tensor:
    # nn.TransformerEncoderLayer._ff_block in eval mode.
    return _linear(layer.linear2, layer.activation(_linear(layer.linear1, x)))


def _compile_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


def bucket_length(t: int) -> int:
    """Cache length for ``t`` positions, rounded up so that a compiled step is reused."""
    return -(-t // CACHE_BUCKET) * CACHE_BUCKET


def bucket_rows(rows: int) -> int:
    """Rows of the fixed decoder serving a batch of ``rows`` (B2): the first of ``ROW_BUCKETS`` that
    holds them, beyond the last a multiple of it."""
    for bucket in ROW_BUCKETS:
        if rows <= bucket:
            return bucket
    return -(-rows // ROW_BUCKETS[-1]) * ROW_BUCKETS[-1]
