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
"""
from __future__ import annotations

import typing as tp

import torch


def sample_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """audiocraft's ``utils.sample_top_k`` (same result, same RNG draws), with the k-th largest
    probability found by ``kthvalue`` (one selection) instead of ``topk`` (a partial sort): the
    threshold is the same element, the kept probabilities and their sum the same values.

    Args:
        probs: ``[..., card]`` probabilities (overwritten, as audiocraft's).
    Returns:
        ``[..., 1]`` sampled indices.
    """
    from audiocraft.utils import utils
    return utils.multinomial(_keep_top_k(probs, k), num_samples=1)


def _keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    # In place, as audiocraft's: zero below the k-th largest probability, renormalise.
    threshold = torch.kthvalue(probs, probs.shape[-1] - k + 1, dim=-1, keepdim=True).values
    probs *= (probs >= threshold).float()
    probs.div_(probs.sum(dim=-1, keepdim=True))
    return probs


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
    q = exponentials_per_row(probs, generators)
    return torch.argmax(probs / q, dim=-1, keepdim=True)


def sample_next(logits: torch.Tensor, use_sampling: bool, temp: float, top_k: int, top_p: float,
                generators: tp.Optional[tp.Sequence[torch.Generator]] = None) -> torch.Tensor:
    """audiocraft's ``_sample_next_token`` after guidance: logits ``[B, K, card]`` -> codes
    ``[B, K, 1]``. ``generators``: None (the global RNG, audiocraft's own functions) or one
    generator per row."""
    if not (use_sampling and temp > 0.0):
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(logits / temp, dim=-1)
    if generators is None:
        from audiocraft.utils import utils
        if top_p > 0.0:
            return utils.sample_top_p(probs, p=top_p)
        if top_k > 0:
            return sample_top_k(probs, k=top_k)
        return utils.multinomial(probs, num_samples=1)
    if top_p > 0.0:
        probs_sort, probs_idx = _sort_top_p(probs, top_p)
        return torch.gather(probs_idx, -1, multinomial_per_row(probs_sort, generators))
    if top_k > 0:
        probs = _keep_top_k(probs, top_k)
    return multinomial_per_row(probs, generators)


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
