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

Batched requests (``fast_decoding(model, generators=[...])``, one ``torch.Generator`` per row):
row ``i`` gets the codes its request gets alone after ``torch.manual_seed(seed_i)``. Its
sampling draws from its own generator (``fast_sampling``), and its conditions are built and
fused as alone, the padding to the batch's longest caption masked in the decoder (audiocraft's
own batch attends to that padding, so its rows depend on their neighbours).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import typing as tp

import numpy as np
import torch

from .fast_decode import CROSS_BUCKET, StaticDecoder, bucket_length, bucket_rows, unsupported_reason
from .fast_sampling import Exponentials, check_generators, loop_sampler, mix_guidance, sample_next
from .fast_sampling import sample_top_k  # noqa: F401 (importable from here, as before)

# Compiled decoders are kept on their LM (warming a compiled step costs seconds to minutes), one per
# row bucket (fast_decode.bucket_rows), the MAX_KEPT most recently used, in an OrderedDict under
# this attribute (outside the module tree: not a submodule, not in the state dict).
_KEPT = "_fast_decoder"
MAX_KEPT = 4


def default_compile(device: torch.device) -> bool:
    """Compile the decode step on CUDA (CUDA graphs remove the launch overhead that dominates
    there); on CPU eager is used: compiling takes minutes there and the step is bound by
    streaming the weights, which compiling does not change."""
    return torch.device(device).type == "cuda"


@contextlib.contextmanager
def fast_decoding(model, compile: tp.Optional[bool] = None,
                  generators: tp.Optional[tp.Sequence[torch.Generator]] = None):
    """Within the block, ``model.lm.generate`` is ``fast_lm_generate`` (unless the LM is
    unsupported: then audiocraft's loop, and ``reason`` is set on the yielded state).

    ``generators``: None (sampling draws from the global RNG, as audiocraft) or one
    ``torch.Generator`` per row of the batch the block generates (on the model's device): row ``i``
    then draws from ``generators[i]`` exactly what a batch-1 request draws from the global RNG
    after ``torch.manual_seed``, so it gets that request's codes. The generators persist across
    the windows of the request (the session keeps them). Per-row generators need our loop: for an
    unsupported LM or two-step guidance a ValueError is raised (generate the rows one by one).

    Yields a dict: ``{"fast": bool, "reason": str or None, "per_row_rng": bool}``."""
    lm = model.lm
    reason = unsupported_reason(lm)
    state = {"fast": reason is None, "reason": reason, "per_row_rng": False}
    if generators is not None:
        generators = list(generators)
        if reason is None and lm.two_step_cfg:
            reason = "two-step classifier-free guidance"
        if reason is not None:
            raise ValueError(f"per-row generators need the fast decoder, which does not support this model "
                             f"({reason}): generate the rows one by one")
        check_generators(generators, len(generators), model.device)
        state["per_row_rng"] = True
    if reason is not None:
        yield state
        return
    session = _Session(lm, default_compile(model.device) if compile is None else bool(compile), generators,
                       _window_positions(model))
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

    def __init__(self, lm, compile: bool, generators: tp.Optional[tp.List[torch.Generator]] = None,
                 min_positions: int = 0):
        self.lm, self.compile = lm, compile
        self.generators = generators  # one per row, drawn on across the windows of the request
        self.decoder: tp.Optional[StaticDecoder] = None
        # Compiled caches span at least a whole window: one cache length (one graph) per row bucket
        # whatever the requests' durations (a longer cache would be a new graph).
        self.min_positions = min_positions

    def decoder_for(self, batch: int, positions: int, dtype: torch.dtype, device: torch.device) -> StaticDecoder:
        if self.compile:
            return self._fixed_decoder(batch, positions, dtype, device)
        dec = self.decoder
        # A larger cache serves a shorter request too (a request's last window, a shorter clip):
        # positions past the current one are never read.
        if dec is None or dec.batch != batch or dec.t_max < positions or dec.k_cache.dtype != dtype \
                or dec.k_cache.device != device:
            dec = None
            self.decoder = None  # free the previous cache before allocating the next
            dec = StaticDecoder(self.lm, batch, positions, dtype, device)
        self.decoder = dec
        return dec

    def _fixed_decoder(self, batch: int, positions: int, dtype: torch.dtype, device: torch.device) -> StaticDecoder:
        # The kept decoder of the row bucket (a new one, evicting the least recently used beyond
        # MAX_KEPT, if none or too short): its graph is reused across requests and windows.
        rows = bucket_rows(batch)
        t_max = bucket_length(max(positions, self.min_positions))
        kept = self.lm.__dict__.setdefault(_KEPT, collections.OrderedDict())
        key = (rows, dtype, torch.device(device))
        dec = kept.get(key)
        if dec is None or dec.t_max < t_max:
            kept.pop(key, None)
            self.decoder = dec = None  # free the previous cache before allocating the next
            while len(kept) >= MAX_KEPT:
                kept.popitem(last=False)
            # The longest caption seen so far fits from the start (no second graph for it).
            capacity = max([d.cross_capacity for d in kept.values()], default=CROSS_BUCKET)
            dec = kept[key] = StaticDecoder(self.lm, rows, t_max, dtype, device, fixed=True,
                                            cross_capacity=capacity)
        kept.move_to_end(key)
        dec.use_rows(batch)
        self.decoder = dec
        return dec

    def close(self) -> None:
        self.decoder = None


def _window_positions(model) -> int:
    """Cache positions of one whole window of ``model`` (its codes and the delay pattern's extra
    steps; a prepended condition adds to that), 0 when unknown."""
    try:
        return int(model.max_duration * model.frame_rate) + model.lm.num_codebooks + 1
    except (AttributeError, TypeError):
        return 0


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
                     session: tp.Optional[_Session] = None,
                     generators: tp.Optional[tp.Sequence[torch.Generator]] = None, **kwargs) -> torch.Tensor:
    """``LMModel.generate`` with the same arguments and result: codes ``[B, K, max_gen_len]``
    (the prompt ``[B, K, T]`` included unless ``remove_prompts``).

    ``generators`` (else the session's): one ``torch.Generator`` per row ``B`` (see
    ``fast_decoding``); ValueError with two-step guidance, which runs audiocraft's loop."""
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    two_step_cfg = lm.two_step_cfg if two_step_cfg is None else two_step_cfg
    if generators is None and session is not None:
        generators = session.generators
    if two_step_cfg and conditions:  # two separate passes per step: audiocraft's loop
        if generators is not None:
            raise ValueError("per-row generators are not supported with two-step classifier-free guidance: "
                             "generate the rows one by one")
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
    per_row = generators is not None and len(conditions) > 1
    if conditions and not per_row:
        null_conditions = ClassifierFreeGuidanceDropout(p=1.0)(conditions)
        condition_tensors = lm.condition_provider(lm.condition_provider.tokenize(conditions + null_conditions))
    guided = bool(condition_tensors) or per_row
    if prompt is None:
        prompt = torch.zeros((num_samples, lm.num_codebooks, 0), dtype=torch.long, device=device)
    B, K, T = prompt.shape
    assert T < max_gen_len
    if generators is not None:
        check_generators(generators, B, device)
    b2 = 2 * B if guided else B

    pattern = lm.pattern_provider.get_pattern(max_gen_len)
    unknown = -1
    gen_codes = torch.full((B, K, max_gen_len), unknown, dtype=torch.long, device=device)
    gen_codes[..., :T] = prompt
    gen_sequence, _, mask = pattern.build_pattern_sequence(gen_codes, lm.special_token_id)
    start = pattern.get_first_step_with_timesteps(T)
    assert start is not None
    seq_len = gen_sequence.shape[-1]

    # The fuser on an empty input returns the prepended conditions alone and the cross source.
    dtype = next(lm.parameters()).dtype
    prefix_len = cross_len = None
    if per_row:
        prefix, prefix_len, cross, cross_len = _conditions_per_row(lm, conditions, dtype, device)
    else:
        prefix, cross = lm.fuser(torch.zeros(b2, 0, lm.dim, device=device, dtype=dtype), condition_tensors)
    if cross is None and any(layer.cross_attention is not None for layer in lm.transformer.layers):
        raise ValueError("the LM has cross-attention layers but no cross-attention condition was given")
    n_prefix = prefix.shape[1]
    dec = session.decoder_for(b2, n_prefix + seq_len - 1, _cache_dtype(lm, device), device)
    dec.set_cross(cross, cross_len)
    dec.set_rows(n_prefix, prefix_len)
    noise = None
    if use_sampling and temp > 0.0:  # one draw per step from start to seq_len - 1
        noise = Exponentials(seq_len - start, generators)

    def both(seq: torch.Tensor) -> torch.Tensor:
        return torch.cat([seq, seq], dim=0) if guided else seq

    def sample(all_logits: torch.Tensor) -> torch.Tensor:
        # all_logits [B2, K, card] -> next codes [B, K, 1], exactly as LMModel._sample_next_token.
        if guided:
            logits = mix_guidance(all_logits, B, cfg_coef)  # uncond + (cond - uncond) * cfg_coef
        else:
            logits = all_logits
        return sample_next(logits, use_sampling, temp, top_k, top_p, noise)

    # What audiocraft's loop writes at each step, decided before it: positions the pattern leaves
    # empty get the special token (set now: no step reads a position before it is written), prompt
    # codes are kept, the rest is sampled; ``full[offset]``: every row and codebook sampled there.
    empty = (gen_sequence == unknown) & ~mask
    gen_sequence[empty] = lm.special_token_id
    write = gen_sequence == unknown  # [B, K, S]
    full = write.all(dim=0).all(dim=0).tolist()

    # inference_mode: no version counters or autograd metadata on the step's many small tensors
    # (~10 % of a tiny model's step on the CPU); the compiled step keeps no_grad (dynamo's guards)
    # and the caller's own mode (``inference_mode(False)`` would turn off a caller's inference mode,
    # and the prefill's in-place writes into tensors made under it would then fail).
    # The eager CPU loop keeps its bookkeeping in numpy, on the tensors' own memory (a few numpy
    # calls cost less than torch's per-call overhead): the sampled codes go to their column and to
    # the next step's input, ``tokens`` [B2, K, 1] (the codes twice when guided), with no ``cat``.
    lean = not session.compile and device.type == "cpu"
    if lean:
        sample = loop_sampler(B, guided, cfg_coef, use_sampling, temp, top_k, top_p, noise)
        gen_np, write_np = gen_sequence.numpy(), write.numpy()
        tokens = torch.empty((b2, K, 1), dtype=gen_sequence.dtype, device=device)
        halves = tokens.numpy().reshape(b2 // B, B, K)
    with contextlib.nullcontext() if session.compile else torch.inference_mode():
        for offset in range(start, seq_len):
            if offset == start and n_prefix + offset == 1 and not session.compile:
                # one position to prefill (no prefix, no prompt): the same arithmetic as a step at 0
                logits = dec.step(both(gen_sequence[..., :1]), 0)
            elif offset == start:  # prefill: prefix + every step before the first one to generate
                x = torch.cat([prefix, dec.embed(both(gen_sequence[..., :offset]))], dim=1)
                logits = dec.prefill(x)[:, :, -1]
            elif lean:
                halves[...] = gen_np[..., offset - 1]
                logits = dec.step(tokens, n_prefix + offset - 1)
            else:
                logits = dec.step(both(gen_sequence[..., offset - 1:offset]), n_prefix + offset - 1,
                                  compiled=session.compile)
            if lean:
                next_np = sample(logits).numpy()[..., 0]  # [B, K]
                if full[offset]:
                    gen_np[..., offset] = next_np
                else:
                    np.copyto(gen_np[..., offset], next_np, where=write_np[..., offset])
                if callback is not None:
                    callback(1 + offset - start, seq_len - start)
                continue
            next_token = sample(logits)[..., 0]  # [B, K]
            column = gen_sequence[..., offset]
            column.copy_(next_token if full[offset] else torch.where(write[..., offset], next_token, column))
            if callback is not None:
                callback(1 + offset - start, seq_len - start)

    assert not (gen_sequence == unknown).any()
    out_codes, _, _ = pattern.revert_pattern_sequence(gen_sequence, special_token=unknown)
    assert (out_codes[..., :max_gen_len] != unknown).all()
    out_codes = out_codes[..., (T if remove_prompts else 0):max_gen_len]
    assert (out_codes >= 0).all() and (out_codes <= lm.card).all()
    return out_codes


def _conditions_per_row(lm, conditions: tp.List, dtype: torch.dtype, device: torch.device):
    """The fused conditions of each request alone, padded into one batch.

    Batched, audiocraft pads every caption to the batch's longest, and the padding is attended
    (cross-attention) or prepended (melody): a row would not get the codes it gets alone. So each
    row's ``[condition, null condition]`` pair goes through the condition provider and the fuser
    as the request alone does, and the decoder masks the padding (``StaticDecoder.set_cross``,
    ``set_rows``).

    Returns:
        prefix ``[2B, P, D]`` (row ``i``'s prefix in ``[0, P_i)``, zeros after), its lengths
        ``[2B]``, the cross-attention source ``[2B, C, D]`` or None, its lengths ``[2B]`` or None;
        rows are the ``B`` conditions then their ``B`` null conditions, as audiocraft's batch.
    """
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
    prefixes, crosses = [], []
    for condition in conditions:
        pair = [condition] + ClassifierFreeGuidanceDropout(p=1.0)([condition])
        tensors = lm.condition_provider(lm.condition_provider.tokenize(pair))
        prefix, cross = lm.fuser(torch.zeros(2, 0, lm.dim, device=device, dtype=dtype), tensors)
        prefixes.append(prefix)
        crosses.append(cross)
    prefix, prefix_len = _pad_rows([p[h] for h in (0, 1) for p in prefixes])
    if crosses[0] is None:
        return prefix, prefix_len, None, None
    cross, cross_len = _pad_rows([c[h] for h in (0, 1) for c in crosses])
    return prefix, prefix_len, cross, cross_len


def _pad_rows(rows: tp.List[torch.Tensor]) -> tp.Tuple[torch.Tensor, torch.Tensor]:
    """``[T_i, D]`` tensors -> ``[N, max T_i, D]`` (zeros after each row's end), lengths ``[N]``."""
    out = rows[0].new_zeros(len(rows), max(r.shape[0] for r in rows), rows[0].shape[-1])
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out, torch.tensor([r.shape[0] for r in rows], device=out.device)
