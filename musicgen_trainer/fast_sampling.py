"""Sampling the next codes as audiocraft does, optionally with one random generator per row.

audiocraft's ``LMModel._sample_next_token`` turns the guided logits ``[B, K, card]`` into codes
with ``utils.sample_top_k`` / ``sample_top_p`` / ``multinomial``, all ending in
``torch.multinomial(probs.reshape(-1, card), 1)``. For one sample, ATen's ``multinomial`` draws
``q = empty_like(probs).exponential_()`` from the generator and returns ``argmax(probs / q)``
(the exponential-race form of the Gumbel-max trick): one exponential variate per candidate code,
drawn row after row. ``tests/musicgen_trainer/test_fast_decode.py`` checks this equivalence
against ``torch.multinomial`` itself, so an ATen change would be caught.

Per-row generators: when the app batches queued requests (each with its own seed) into one batch
of ``B`` rows, row ``i`` must get the codes that request gets alone after
``torch.manual_seed(seed_i)``. Alone, each step draws ``[K, card]`` variates from the global RNG;
batched, row ``i`` draws the same ``[K, card]`` from ``generators[i]``, so each generator sees the
same draws in the same order and amounts as the global RNG of the request alone.

Drawing ahead (CPU): ATen's CPU ``exponential_`` computes each variate as ``-log1p(-u)`` in double
from one double uniform ``u`` (one 64-bit draw), rounded to the tensor's dtype, one element after
the other; ``torch.rand(dtype=float64)`` draws the same ``u`` in the same order. So the variates of
many steps can be drawn in one call (``Exponentials``), about 2x cheaper than ``exponential_``'s
scalar loop (2.2-2.4x per step at ``[4-16, 2048]``, one thread, process time), and the step itself
draws nothing. A one-time self-check per dtype compares the two routes on a fresh generator
(variates and generator state); where it fails, and on CUDA (Philox offsets per call), each step
draws as before.
"""
from __future__ import annotations

import math
import typing as tp

import numpy as np
import torch


def sample_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """audiocraft's ``utils.sample_top_k`` (same result, same RNG draws), with the k-th largest
    probability found by a selection (``kth_largest``) instead of ``topk`` (a partial sort): the
    threshold is the same element, the kept probabilities and their sum the same values.

    Args:
        probs: ``[..., card]`` probabilities (overwritten, as audiocraft's).
    Returns:
        ``[..., 1]`` sampled indices.
    """
    from audiocraft.utils import utils
    return utils.multinomial(_keep_top_k(probs, k), num_samples=1)


def kth_largest(probs: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value along the last dimension, ``[..., 1]``: an element of ``probs``,
    as ``topk(probs, k).values[..., -1:]``; one-line ValueError for k outside ``[1, card]`` (where
    ``topk`` raises). On the CPU (float32/64) by numpy's introselect (``np.partition``): measured
    over fresh rows of 2048 probabilities, one thread, process time, ``[4, 2048]``: 46-51 us
    against 93-98 us for ``torch.kthvalue`` and 124 us for audiocraft's ``topk`` (timing one
    tensor over and over favours ``kthvalue``, 24 us: its quickselect's branches are then
    predicted; a decoding loop never selects the same row twice). Elsewhere ``kthvalue``."""
    n = probs.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"top_k={k} must be between 1 and the codebook size ({n})")
    if _numpy_route(probs):
        return torch.from_numpy(np.partition(probs.numpy(), n - k, axis=-1)[..., n - k:n - k + 1])
    return torch.kthvalue(probs, n - k + 1, dim=-1, keepdim=True).values


_KTHVALUE_NUMEL = 0  # CPU tensors of more elements than this go to numpy (0: all)


def _numpy_route(probs: torch.Tensor) -> bool:
    return (probs.device.type == "cpu" and probs.dtype in (torch.float32, torch.float64) and not probs.requires_grad
            and probs.numel() > _KTHVALUE_NUMEL)


def _keep_top_k(probs: torch.Tensor, k: int, check: bool = False) -> torch.Tensor:
    # In place, as audiocraft's: zero below the k-th largest probability, renormalise. (audiocraft
    # multiplies by the float mask: p * 1.0 and p * 0.0 are p and 0 for the finite p >= 0 here.)
    # ``check``: check_probs on the kept probabilities' sums [..., 1] instead of a pass over all
    # of them (a NaN stays: ``NaN * 0`` is NaN, ``NaN < t`` false; softmax gives NaN, not inf).
    n = probs.shape[-1]
    if 1 <= k <= n and _numpy_route(probs):  # threshold and mask in numpy, on probs' own memory
        a = probs.numpy()
        # a * (a >= t): audiocraft's own form, 4x cheaper here than torch's broadcast compare + fill
        np.multiply(a, a >= np.partition(a, n - k, axis=-1)[..., n - k:n - k + 1], out=a)
    else:
        probs.masked_fill_(probs < kth_largest(probs, k), 0.0)
    sums = probs.sum(dim=-1, keepdim=True)  # torch's reduction order, as audiocraft's
    if _numpy_route(probs):  # the same IEEE operations, without torch's per-call overhead
        s = sums.numpy()
        if check and not math.isfinite(s.sum()):  # sums of finite probabilities are finite
            check_probs(sums)  # raises
        a = probs.numpy()
        np.divide(a, s, out=a)
        return probs
    if check and not math.isfinite(sums.sum().item()):
        check_probs(sums)  # raises
    probs.div_(sums)
    return probs


def mix_guidance(all_logits: torch.Tensor, rows: int, cfg_coef: float) -> torch.Tensor:
    """audiocraft's classifier-free guidance ``uncond + (cond - uncond) * cfg_coef`` of logits
    ``[2B, K, card]`` (conditional rows first) -> ``[B, K, card]``. On the CPU in numpy: the same
    three float operations (the Python float rounded to the logits' dtype first, as torch's
    scalar operand: NEP 50), at a third of torch's per-call cost for the tiny model's 8192 logits."""
    if _numpy_route(all_logits) and all_logits.is_contiguous():
        a = all_logits.numpy()  # split in numpy: two torch slices cost more than the arithmetic
        c, u = a[:rows], a[rows:]
        # float(): a numpy or float64 scalar would make numpy multiply in float64 (NEP 50), where
        # torch rounds the coefficient to the logits' dtype first. errstate: torch warns of no inf - inf.
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.subtract(c, u)
            np.multiply(out, float(cfg_coef), out=out)
            return torch.from_numpy(np.add(u, out, out=out))
    cond, uncond = all_logits[:rows], all_logits[rows:]
    return uncond + (cond - uncond) * cfg_coef


def _sort_top_p(probs: torch.Tensor, p: float) -> tp.Tuple[torch.Tensor, torch.Tensor]:
    # audiocraft's sample_top_p up to its multinomial: (kept sorted probabilities, their indices).
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    mask = probs_sum - probs_sort > p
    probs_sort *= (~mask).float()
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    return probs_sort, probs_idx


def exponentials_per_row(like: torch.Tensor, generators: tp.Sequence[torch.Generator]) -> torch.Tensor:
    """The variates ``torch.multinomial`` would draw for each row alone: row ``i`` of the result
    (``like``'s shape ``[B, K, card]`` and dtype) is ``empty([K, card]).exponential_()`` drawn
    from ``generators[i]``."""
    q = torch.empty_like(like, memory_format=torch.contiguous_format)
    for row, gen in zip(q, generators):
        row.exponential_(generator=gen)
    return q


def multinomial_per_row(probs: torch.Tensor, generators: tp.Sequence[torch.Generator]) -> torch.Tensor:
    """``utils.multinomial(probs[i:i+1], 1)`` for every row ``i``, row ``i`` drawing from
    ``generators[i]`` as the global RNG would alone.

    Args:
        probs: ``[B, K, card]`` probabilities (rows may be zero below a top-k/top-p cut).
    Returns:
        ``[B, K, 1]`` indices.
    """
    check_probs(probs, signed=True)
    q = exponentials_per_row(probs, generators)
    return torch.argmax(probs / q, dim=-1, keepdim=True)


def check_probs(probs: torch.Tensor, signed: bool = False) -> None:
    """RuntimeError, as ``torch.multinomial``'s, unless every probability ``[..., card]`` is finite
    (and, with ``signed``, >= 0: softmax never gives a negative one, so the sampler skips that pass).

    ``argmax(probs / q)`` returns a code for NaN or infinite probabilities (e.g. logits that
    overflowed in fp16) where audiocraft's ``torch.multinomial`` raises: checked before it, with
    one reduction (non-negative probabilities have a finite sum iff all are finite).
    ``torch.multinomial`` synchronises the same way (one ``.item()`` per call)."""
    if not bool(torch.isfinite(probs.sum())) or (signed and bool(probs.min() < 0)):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0 "
                           "(the logits overflowed or are NaN: e.g. fp16 on CUDA)")


def sample_next(logits: torch.Tensor, use_sampling: bool, temp: float, top_k: int, top_p: float,
                noise: tp.Optional["Exponentials"] = None) -> torch.Tensor:
    """audiocraft's ``_sample_next_token`` after guidance: logits ``[B, K, card]`` -> codes
    ``[B, K, 1]``. ``noise``: this request's ``Exponentials`` (None: the global RNG, drawn inside
    audiocraft's own functions)."""
    if not (use_sampling and temp > 0.0):
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(logits if temp == 1.0 else logits / temp, dim=-1)  # x / 1.0 is x
    return _sample_probs(probs, None if noise is None else noise.next(probs), top_k, top_p)


def _sample_probs(probs: torch.Tensor, q: tp.Optional[torch.Tensor], top_k: int, top_p: float) -> torch.Tensor:
    # sample_next after the softmax: probabilities [B, K, card], this step's variates (None: the
    # global RNG, drawn here by audiocraft's own functions) -> codes [B, K, 1].
    if q is not None and top_p <= 0.0 and 0 < top_k <= probs.shape[-1] and _numpy_route(probs) \
            and q.dtype == probs.dtype:
        return _top_k_numpy(probs, q, top_k)
    if q is not None and top_p <= 0.0 and top_k > 0:  # checked on the kept sums (_keep_top_k)
        probs = _keep_top_k(probs, top_k, check=True)
        if _numpy_route(probs) and q.dtype == probs.dtype:  # the same IEEE division, first maximum
            a = probs.numpy()
            return torch.from_numpy(np.argmax(np.divide(a, q.numpy(), out=a), axis=-1, keepdims=True))
        return torch.argmax(probs.div_(q), dim=-1, keepdim=True)
    check_probs(probs)  # every path: argmax(probs / q) would return a code for NaN/inf
    if q is None:  # the global RNG, drawn by torch.multinomial at this step
        from audiocraft.utils import utils
        if top_p > 0.0:
            return utils.sample_top_p(probs, p=top_p)
        if top_k > 0:
            return sample_top_k(probs, k=top_k)
        return utils.multinomial(probs, num_samples=1)
    if top_p > 0.0:
        probs_sort, probs_idx = _sort_top_p(probs, top_p)
        return torch.gather(probs_idx, -1, torch.argmax(probs_sort.div_(q), dim=-1, keepdim=True))
    if top_k > 0:
        probs = _keep_top_k(probs, top_k)
    return torch.argmax(probs.div_(q), dim=-1, keepdim=True)  # torch.multinomial: argmax(probs / q)


def loop_sampler(rows: int, guided: bool, cfg_coef: float, use_sampling: bool, temp: float, top_k: int,
                 top_p: float, noise: tp.Optional["Exponentials"]) -> tp.Callable[[torch.Tensor], torch.Tensor]:
    """``sample(all_logits)`` for one request of the eager CPU loop (CPU logits made under
    ``torch.inference_mode``): logits ``[2B, K, card]``
    (``[B, ...]`` unguided) -> codes ``[B, K, 1]``, as ``sample_next(mix_guidance(...))``: the same
    operations on the same values. The request's settings are checked once here, not at every step
    (per-call overhead is the cost of a small model's step); the common case (top-k with
    drawn-ahead variates, float32 logits) goes straight to ``_top_k_numpy``."""
    def general(all_logits: torch.Tensor) -> torch.Tensor:
        logits = mix_guidance(all_logits, rows, cfg_coef) if guided else all_logits
        return sample_next(logits, use_sampling, temp, top_k, top_p, noise)

    if noise is None or not (use_sampling and temp > 0.0) or top_p > 0.0 or top_k <= 0:
        return general
    coef, softmax, float_types = float(cfg_coef), torch.softmax, (torch.float32, torch.float64)

    def sample(all_logits: torch.Tensor) -> torch.Tensor:
        # CPU tensors under inference mode (the loop's): numpy may read them
        if all_logits.dtype not in float_types or not all_logits.is_contiguous() or top_k > all_logits.shape[-1]:
            return general(all_logits)
        if guided:  # mix_guidance's numpy route, inlined
            a = all_logits.numpy()
            with np.errstate(invalid="ignore", over="ignore"):
                out = np.subtract(a[:rows], a[rows:])
                np.multiply(out, coef, out=out)
                logits = torch.from_numpy(np.add(a[rows:], out, out=out))
        else:
            logits = all_logits
        probs = softmax(logits if temp == 1.0 else logits / temp, dim=-1)
        q = noise.next(probs)
        if q is not None and q.dtype == probs.dtype:
            return _top_k_numpy(probs, q, top_k)
        return _sample_probs(probs, q, top_k, top_p)

    return sample


def _top_k_numpy(probs: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    # sample_next's CPU path with drawn-ahead variates, ``1 <= k <= card``: ``_keep_top_k(probs, k,
    # check=True)`` then ``argmax(probs / q)``, the same operations in the same order, in one
    # function (its checks and conversions once, not per helper: per-call overhead is the cost here).
    n = probs.shape[-1]
    a = probs.numpy()
    np.multiply(a, a >= np.partition(a, n - k, axis=-1)[..., n - k:n - k + 1], out=a)
    sums = probs.sum(dim=-1, keepdim=True)  # torch's reduction order, as audiocraft's
    s = sums.numpy()
    if not math.isfinite(s.sum()):  # sums of finite probabilities are finite
        check_probs(sums)  # raises
    np.divide(a, s, out=a)
    return torch.from_numpy(np.argmax(np.divide(a, q.numpy(), out=a), axis=-1, keepdims=True))


class Exponentials:
    """The variates ``torch.multinomial`` draws at each sampling step of one request (one LM
    call): ``next()`` gives step after step ``[B, K, card]``, drawn from the global RNG (rows in
    order, as ``probs.reshape(-1, card)``) or row ``i`` from ``generators[i]``.

    On the CPU they are drawn ahead, ``chunk_bytes`` of uniforms at a time (bounded memory), and
    exactly ``steps`` steps' worth: the generators end in the state audiocraft's loop leaves, so the
    next window draws on from there. Elsewhere ``next()`` draws one step (per-row generators) or
    returns None (the global RNG: ``torch.multinomial`` draws at the step, audiocraft's own call).
    """

    def __init__(self, steps: int, generators: tp.Optional[tp.Sequence[torch.Generator]] = None,
                 chunk_bytes: int = 256 << 10):
        self.generators, self.left, self.chunk_bytes = generators, steps, chunk_bytes
        self._chunk: tp.Optional[torch.Tensor] = None
        self._steps: tp.Sequence[torch.Tensor] = ()  # the chunk's steps (views)
        self._i = 0
        self._buffers: tp.Optional[tuple] = None  # (uniforms, float64 scratch, variates) of a chunk

    def next(self, probs: torch.Tensor) -> tp.Optional[torch.Tensor]:
        """This step's variates, shaped and typed as ``probs`` ``[B, K, card]`` (or None, above):
        a view of a buffer reused by later chunks (consume it before the next call)."""
        if self.left <= 0:
            raise RuntimeError("more sampling steps than planned")
        if self._chunk is not None and self._i < self._chunk.shape[0]:  # the common case first
            self.left -= 1
            self._i += 1
            return self._steps[self._i - 1]
        if not _draw_ahead_ok(probs.device, probs.dtype):
            self.left -= 1
            return None if self.generators is None else exponentials_per_row(probs, self.generators)
        if self._chunk is None or self._i == self._chunk.shape[0]:
            per_chunk = max(1, self.chunk_bytes // (probs.numel() * 8))
            self._chunk, self._i = self._draw(min(per_chunk, self.left), probs), 0
            self._steps = self._chunk.unbind(0)  # the chunk's steps, one call for all
        self.left -= 1
        self._i += 1
        return self._steps[self._i - 1]

    def _draw(self, n: int, probs: torch.Tensor) -> torch.Tensor:
        # [n, B, K, card]: n steps of variates, each row's steps from its own generator. The
        # chunk's buffers are allocated once and reused (the last chunk uses their first n steps).
        shape = (n, *probs.shape)
        if self._buffers is None or self._buffers[0].shape[1:] != shape[1:] or self._buffers[0].shape[0] < n \
                or self._buffers[2].dtype != probs.dtype or self._buffers[0].device != probs.device:
            f64 = dict(dtype=torch.float64, device=probs.device)
            self._buffers = (torch.empty(shape, **f64), torch.empty(shape, **f64),
                             torch.empty(shape, dtype=probs.dtype, device=probs.device))
        u, q64, q = (b[:n] for b in self._buffers)
        if self.generators is None:
            torch.rand(shape, dtype=torch.float64, device=probs.device, out=u)
        else:  # one generator per row: each row's n steps in one call, in the order the row draws them
            f64 = dict(dtype=torch.float64, device=probs.device)
            u.copy_(torch.stack([torch.rand((n, *probs.shape[1:]), generator=g, **f64) for g in self.generators], dim=1))
        return exponentials_from_uniforms(u, probs.dtype, out=(q64, q))


def exponentials_from_uniforms(u: torch.Tensor, dtype: torch.dtype,
                               out: tp.Optional[tp.Tuple[torch.Tensor, torch.Tensor]] = None
                               ) -> torch.Tensor:
    """ATen's CPU exponential variates from their double uniforms ``u``: ``-log1p(-u)`` in double
    (libm's ``log1p``), rounded to ``dtype`` (float32, bfloat16 or float16).

    torch's vectorised ``log1p`` may differ from libm's by one double ulp (about 8 % of inputs),
    invisible once rounded to ``dtype`` unless the double lies within a few ulps of a rounding
    boundary; those rare elements (about one in 10^8) are recomputed with ``math.log1p`` (libm's).

    ``out``: buffers shaped as ``u`` (float64 scratch, ``dtype``) to compute in, the last returned;
    None: new ones. ``u`` is left as it is."""
    if out is None:
        out = (torch.empty_like(u), torch.empty_like(u, dtype=dtype))
    q64, q = out
    torch.neg(u, out=q64)
    q64.log1p_()  # log1p(-u) <= 0: negated after rounding, in ``dtype`` (exact; half the bytes)
    q.copy_(q64).neg_()  # round-to-nearest is symmetric: -round(x) == round(-x)
    if dtype == torch.float32:
        # Rounding to float32 is decided by the double's 29 low mantissa bits (half-way: 2^28; the
        # variates are normal floats, in [2^-53, 37]): risky within 8 double ulps of half-way,
        # four times the two log1p's largest difference (one ulp). One reduction tells whether any
        # element is (a comparison and ``any`` over the chunk cost 3x more).
        bits = q64.view(torch.int64).add_(8 - 2 ** 28).bitwise_and_(2 ** 29 - 1)  # q64 is spent: in place
        risky = bits <= 16 if bool(bits.min() <= 16) else None
    else:  # generic: does moving the double by 8 ulps (relative 2^-49) either way change the rounding?
        risky = ((q64 * (2 ** -49 - 1)).to(dtype) != q) | ((q64 * (-1 - 2 ** -49)).to(dtype) != q)
        risky = risky if bool(risky.any()) else None
    if risky is not None:
        where = risky.nonzero(as_tuple=True)
        exact = [-math.log1p(-x) for x in u[where].tolist()]
        q[where] = torch.tensor(exact, dtype=torch.float64, device=u.device).to(dtype)
    return q


_DRAW_AHEAD: tp.Dict[tp.Tuple[str, torch.dtype], bool] = {}


def _draw_ahead_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``exponentials_from_uniforms`` over one bulk ``torch.rand`` gives the variates (and the
    generator state) of successive ``exponential_`` calls: checked once per dtype, CPU only."""
    key = (device.type, dtype)
    if key not in _DRAW_AHEAD:
        ok = False
        if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16):
            theirs, ours = torch.Generator().manual_seed(20), torch.Generator().manual_seed(20)
            ref = torch.stack([torch.empty(3, 2048, dtype=dtype).exponential_(generator=theirs) for _ in range(3)])
            got = exponentials_from_uniforms(torch.rand((3, 3, 2048), dtype=torch.float64, generator=ours), dtype)
            ok = torch.equal(ref, got) and torch.equal(theirs.get_state(), ours.get_state())
        _DRAW_AHEAD[key] = ok
    return _DRAW_AHEAD[key]


def check_generators(generators: tp.Sequence[torch.Generator], rows: int, device: torch.device) -> None:
    """One-line ValueError unless ``generators`` holds one generator per row on ``device``'s type."""
    if len(generators) != rows:
        raise ValueError(f"per-row generators: got {len(generators)} for a batch of {rows} rows")
    for gen in generators:
        if not isinstance(gen, torch.Generator):
            raise ValueError(f"per-row generators must be torch.Generator objects, got {type(gen).__name__}")
        if gen.device.type != torch.device(device).type:
            raise ValueError(f"per-row generators must be on the model's device ({torch.device(device).type}), "
                             f"got one on {gen.device.type}")
