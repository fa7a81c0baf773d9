"""audiocraft's ``LMModel.generate`` loop over ``fast_decode.StaticDecoder``: the same codes, sooner.

``fast_decoding(model)`` is a context manager that routes ``model.lm.generate`` through
``fast_lm_generate`` for its duration. Everything above the LM loop stays audiocraft's own
(``MusicGen.generate``/``generate_continuation``/``generate_with_chroma`` and their windowed
extension, which re-prompts each window with the last ``window - extend_stride`` seconds), so
windows, continuation and melody take the same path; one cache serves every window of a request.

Same codes as audiocraft for the same seed: the conditions (and the null conditions of
classifier-free guidance) are built by the same calls, both CFG halves run as one batch of
``2B`` as audiocraft does, the delay pattern comes from the LM's own pattern provider, and each
step samples with audiocraft's own functions on logits of the same shape ``[B, K, card]``, so
the global RNG is drawn in the same order and amounts. Logits differ from audiocraft's only by
float rounding (attention over a cache instead of a concatenation), so a code can differ only
where two candidates are within rounding of each other (the tests check identity on the tiny
models). Cases ``fast_decode.unsupported_reason`` names, and two-step CFG, run audiocraft's loop.
"""
from __future__ import annotations

import contextlib
import functools
import typing as tp

import torch

from .fast_decode import StaticDecoder, bucket_length, unsupported_reason

# A compiled decoder is kept on its LM (warming a compiled step costs seconds to minutes), under
# this attribute (outside the module tree: not a submodule, not in the state dict).
_KEPT = "_fast_decoder"


def default_compile(device: torch.device) -> bool:
    """Compile the decode step on CUDA (CUDA graphs remove the launch overhead that dominates
    there); on CPU eager is used: compiling takes minutes there and the step is bound by
    streaming the weights, which compiling does not change."""
    return torch.device(device).type == "cuda"


@contextlib.contextmanager
def fast_decoding(model, compile: tp.Optional[bool] = None):
    """Within the block, ``model.lm.generate`` is ``fast_lm_generate`` (unless the LM is
    unsupported: then audiocraft's loop, and ``reason`` is set on the yielded state).

    Yields a dict: ``{"fast": bool, "reason": str or None}``."""
    lm = model.lm
    reason = unsupported_reason(lm)
    state = {"fast": reason is None, "reason": reason}
    if reason is not None:
        yield state
        return
    session = _Session(lm, default_compile(model.device) if compile is None else bool(compile))
    original = lm.__dict__.get("generate")
    lm.generate = functools.partial(fast_lm_generate, lm, session=session)
    try:
        yield state
    finally:
        if original is None:
            del lm.generate
        else:
            lm.generate = original
        session.close()


class _Session:
    """The decoder (and its cache) reused across the windows of one request."""

    def __init__(self, lm, compile: bool):
        self.lm, self.compile = lm, compile
        self.decoder: tp.Optional[StaticDecoder] = None

    def decoder_for(self, batch: int, positions: int, dtype: torch.dtype, device: torch.device) -> StaticDecoder:
        t_max = bucket_length(positions) if self.compile else positions
        dec = self.decoder if self.decoder is not None else (self.lm.__dict__.get(_KEPT) if self.compile else None)
        # A larger cache serves a shorter request too (a request's last window, a shorter clip):
        # positions past the current one are never read.
        if dec is None or dec.batch != batch or dec.t_max < t_max or dec.k_cache.dtype != dtype \
                or dec.k_cache.device != device:
            dec = None
            self.decoder = None  # free the previous cache before allocating the next
            self.lm.__dict__.pop(_KEPT, None)
            dec = StaticDecoder(self.lm, batch, t_max, dtype, device)
        self.decoder = dec
        if self.compile:
            self.lm.__dict__[_KEPT] = dec
        return dec

    def close(self) -> None:
        self.decoder = None


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
    threshold = torch.kthvalue(probs, probs.shape[-1] - k + 1, dim=-1, keepdim=True).values
    probs *= (probs >= threshold).float()
    probs.div_(probs.sum(dim=-1, keepdim=True))
    return utils.multinomial(probs, num_samples=1)


def _cache_dtype(lm, device: torch.device) -> torch.dtype:
    # MusicGen runs its LM under fp16 autocast on CUDA: the keys/values are then fp16.
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(lm.parameters()).dtype


@torch.no_grad()
def fast_lm_generate(lm, prompt: tp.Optional[torch.Tensor] = None, conditions: tp.List = [],
                     num_samples: tp.Optional[int] = None, max_gen_len: int = 256, use_sampling: bool = True,
                     temp: float = 1.0, top_k: int = 250, top_p: float = 0.0, cfg_coef: tp.Optional[float] = None,
                     two_step_cfg: tp.Optional[bool] = None, remove_prompts: bool = False, check: bool = False,
                     callback: tp.Optional[tp.Callable[[int, int], None]] = None,
                     session: tp.Optional[_Session] = None, **kwargs) -> torch.Tensor:
    """``LMModel.generate`` with the same arguments and result: codes ``[B, K, max_gen_len]``
    (the prompt ``[B, K, T]`` included unless ``remove_prompts``)."""
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
    from audiocraft.utils import utils

    two_step_cfg = lm.two_step_cfg if two_step_cfg is None else two_step_cfg
    if two_step_cfg and conditions:  # two separate passes per step: audiocraft's loop
        return type(lm).generate(lm, prompt, conditions, num_samples, max_gen_len, use_sampling, temp,
                                 top_k, top_p, cfg_coef, two_step_cfg, remove_prompts, check, callback)
    assert not lm.training, "generation shouldn't be used in training mode."
    session = session or _Session(lm, False)
    device = next(iter(lm.parameters())).device
    cfg_coef = lm.cfg_coef if cfg_coef is None else cfg_coef
    if num_samples is None:
        num_samples = prompt.shape[0] if prompt is not None else (len(conditions) if conditions else 1)

    # Conditions as audiocraft builds them: [conditions + null conditions] in one batch.
    condition_tensors = {}
    if conditions:
        null_conditions = ClassifierFreeGuidanceDropout(p=1.0)(conditions)
        condition_tensors = lm.condition_provider(lm.condition_provider.tokenize(conditions + null_conditions))
    if prompt is None:
        prompt = torch.zeros((num_samples, lm.num_codebooks, 0), dtype=torch.long, device=device)
    B, K, T = prompt.shape
    assert T < max_gen_len
    b2 = 2 * B if condition_tensors else B

    pattern = lm.pattern_provider.get_pattern(max_gen_len)
    unknown = -1
    gen_codes = torch.full((B, K, max_gen_len), unknown, dtype=torch.long, device=device)
    gen_codes[..., :T] = prompt
    gen_sequence, _, mask = pattern.build_pattern_sequence(gen_codes, lm.special_token_id)
    start = pattern.get_first_step_with_timesteps(T)
    assert start is not None
    seq_len = gen_sequence.shape[-1]

    # The fuser on an empty input returns the prepended conditions alone and the cross source.
    empty = torch.zeros(b2, 0, lm.dim, device=device, dtype=next(lm.parameters()).dtype)
    prefix, cross = lm.fuser(empty, condition_tensors)
    if cross is None and any(layer.cross_attention is not None for layer in lm.transformer.layers):
        raise ValueError("the LM has cross-attention layers but no cross-attention condition was given")
    n_prefix = prefix.shape[1]
    dec = session.decoder_for(b2, n_prefix + seq_len - 1, _cache_dtype(lm, device), device)
    dec.set_cross(cross)
    positions = torch.arange(dec.t_max, device=device)

    def both(seq: torch.Tensor) -> torch.Tensor:
        return torch.cat([seq, seq], dim=0) if condition_tensors else seq

    def sample(all_logits: torch.Tensor) -> torch.Tensor:
        # all_logits [B2, K, card] -> next codes [B, K, 1], exactly as LMModel._sample_next_token.
        if condition_tensors:
            cond_logits, uncond_logits = all_logits.split(B, dim=0)
            logits = uncond_logits + (cond_logits - uncond_logits) * cfg_coef
        else:
            logits = all_logits
        if use_sampling and temp > 0.0:
            probs = torch.softmax(logits / temp, dim=-1)
            if top_p > 0.0:
                return utils.sample_top_p(probs, p=top_p)
            if top_k > 0:
                return sample_top_k(probs, k=top_k)
            return utils.multinomial(probs, num_samples=1)
        return torch.argmax(logits, dim=-1, keepdim=True)

    for offset in range(start, seq_len):
        if offset == start:  # prefill: prefix + every step before the first one to generate
            x = torch.cat([prefix, dec.embed(both(gen_sequence[..., :offset]))], dim=1)
            logits = dec.prefill(x)[:, :, -1]
        else:
            p = n_prefix + offset - 1
            logits = dec.step(both(gen_sequence[..., offset - 1:offset]), positions[p:p + 1], p + 1,
                              compiled=session.compile)
        next_token = sample(logits)
        # Positions the pattern leaves empty hold the special token; prompt codes are kept.
        next_token = torch.where(mask[..., offset:offset + 1], next_token, lm.special_token_id)
        current = gen_sequence[..., offset:offset + 1]
        gen_sequence[..., offset:offset + 1] = torch.where(current == unknown, next_token, current)
        if callback is not None:
            callback(1 + offset - start, seq_len - start)

    assert not (gen_sequence == unknown).any()
    out_codes, _, _ = pattern.revert_pattern_sequence(gen_sequence, special_token=unknown)
    assert (out_codes[..., :max_gen_len] != unknown).all()
    out_codes = out_codes[..., (T if remove_prompts else 0):max_gen_len]
    assert (out_codes >= 0).all() and (out_codes <= lm.card).all()
    return out_codes
