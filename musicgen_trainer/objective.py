"""MusicGen's training objective, exactly as audiocraft's solver computes it.

For codes ``[B, K, T]`` the LM sees them through the delay pattern (codebook k shifted by k
steps, the special token ``card`` filling the gaps) and predicts logits ``[B, K, T, card]``
with a validity mask. The loss is, for each codebook k, the cross-entropy over its valid
positions, then the mean of the K per-codebook values. Padded frames are masked out of the
loss and fed to the LM as the special token.

For gradient accumulation and data parallelism to give the update of one larger batch, each
micro-batch returns cross-entropy *sums* and the caller divides by the number of valid
positions of the whole global batch (``normalizer``), which is known before any forward
pass because validity depends only on the pattern and the padding. "Exactly a larger batch"
means: as audiocraft would train on the concatenated batch, to float rounding, when every
clip's forward pass is independent of its batch-mates. audiocraft's T5 conditioner breaks that
slightly: it zero-pads caption embeddings to the batch's longest caption and the
cross-attention attends to the padding, so with captions of different token lengths the
accumulated loss differs from the big batch's by ~1e-4 (relative, tiny model); with equal
lengths it is the same (docs/training.md, "The objective, exactly audiocraft's").
"""
from __future__ import annotations

import functools
import typing as tp

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def _pattern_valid(pattern_provider, n_frames: int) -> torch.Tensor:
    pattern = pattern_provider.get_pattern(n_frames)
    k = pattern_provider.n_q
    dummy = torch.zeros(1, 1, k, len(pattern.valid_layout))  # S as built with keep_only_valid_steps
    _, _, mask = pattern.revert_pattern_logits(dummy, 0.0, keep_only_valid_steps=True)
    return mask  # [K, T] bool


def valid_positions(lm, frame_valid: torch.Tensor) -> torch.Tensor:
    """Positions that count in the loss.

    Args:
        frame_valid: ``[B, T]`` bool, False on padded frames.
    Returns:
        ``[B, K, T]`` bool: valid under the codebook pattern and not padding.
    """
    pattern_mask = _pattern_valid(lm.pattern_provider, frame_valid.shape[-1]).to(frame_valid.device)
    return pattern_mask[None] & frame_valid[:, None, :]


def token_counts(lm, frame_valid: torch.Tensor) -> torch.Tensor:
    """Number of valid positions per codebook, ``[K]`` float."""
    return valid_positions(lm, frame_valid).sum(dim=(0, 2)).float()


def predict(lm, codes: torch.Tensor, conditions: tp.Union[list, dict], forward: tp.Optional[tp.Callable] = None):
    """``lm.compute_predictions`` through ``forward`` (e.g. the DDP wrapper's, so that
    gradients are synchronised; audiocraft's method always calls the bare module).

    Args:
        codes: ``[B, K, T]`` long.
        conditions: B ``ConditioningAttributes``, or condition tensors (a dict, as
            ``melody.condition_tensors`` builds them).
    Returns:
        logits ``[B, K, T, card]`` (NaN where invalid) and mask ``[B, K, T]``.
    """
    B, K, T = codes.shape
    forward = forward or lm
    pattern = lm.pattern_provider.get_pattern(T)
    sequence, _, _ = pattern.build_pattern_sequence(codes.contiguous(), lm.special_token_id,
                                                    keep_only_valid_steps=True)
    if callable(conditions):  # condition tensors made inside the sharded forward (FSDP)
        logits = getattr(lm, CONDITIONED_FORWARD)(sequence, conditions)  # [B, K, S, card]
    elif isinstance(conditions, dict):
        logits = forward(sequence, [], condition_tensors=conditions)  # [B, K, S, card]
    else:
        logits = forward(sequence, conditions)                 # [B, K, S, card]
    logits = logits.permute(0, 3, 1, 2)                        # [B, card, K, S]
    logits, _, mask = pattern.revert_pattern_logits(logits, float("nan"), keep_only_valid_steps=True)
    return logits.permute(0, 2, 3, 1), mask[None].expand(B, -1, -1)


def codebook_ce_sums(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the valid positions of each codebook.

    Args:
        logits: ``[B, K, T, card]``; codes: ``[B, K, T]``; mask: ``[B, K, T]`` bool.
    Returns:
        ``[K]`` float32 sums (divide by the valid counts for means).
    """
    sums = []
    for k in range(codes.shape[1]):
        m = mask[:, k]
        # float32 for the softmax even under autocast: fp16 log-sum-exp over 2048 codes overflows.
        sums.append(F.cross_entropy(logits[:, k][m].float(), codes[:, k][m], reduction="sum"))
    return torch.stack(sums)


def conditions_for(captions: tp.Sequence[tp.Optional[str]]) -> list:
    """``ConditioningAttributes`` for captions; ``None`` is the null condition (as after
    audiocraft's classifier-free-guidance dropout)."""
    from audiocraft.modules.conditioners import ConditioningAttributes
    return [ConditioningAttributes(text={"description": c}) for c in captions]


# Melody models' condition tensors are made with the LM's own trainable projections, outside
# ``LMModel.forward``. Under FSDP2 those weights are sharded outside the root unit's forward, so
# ``distributed.shard_lm`` gives a sharded melody LM this method, registered as an FSDP forward
# method (its parameters gathered around it, gradients reduce-scattered after): it makes the
# condition tensors and runs the forward inside one gathered call.
CONDITIONED_FORWARD = "forward_with_condition_tensors"


def forward_with_condition_tensors(lm, sequence: torch.Tensor, make_conditions: tp.Callable[[], dict]):
    """``LMModel.forward`` with condition tensors made by ``make_conditions()`` first (bound as a
    method of a sharded melody LM, see ``CONDITIONED_FORWARD``)."""
    from audiocraft.models.lm import LMModel
    return LMModel.forward(lm, sequence, [], condition_tensors=make_conditions())


def lm_conditions(lm, captions: tp.Sequence[tp.Optional[str]],
                  melody: tp.Optional[torch.Tensor] = None) -> tp.Union[list, dict]:
    """What ``predict`` feeds the LM: ``conditions_for(captions)`` for text models; for melody
    models, condition tensors with the chroma crops ``melody`` ``[B, T, n_chroma]`` (None: the
    null melody), see ``melody.py``."""
    from .melody import condition_tensors, melody_conditioner
    if melody_conditioner(lm) is not None:
        if hasattr(lm, CONDITIONED_FORWARD):  # sharded: computed inside the forward, see below
            return lambda: condition_tensors(lm, captions, melody)
        return condition_tensors(lm, captions, melody)
    return conditions_for(captions)


def micro_batch_loss(lm, codes: torch.Tensor, frame_valid: torch.Tensor,
                     captions: tp.Sequence[tp.Optional[str]], normalizer: torch.Tensor,
                     forward: tp.Optional[tp.Callable] = None,
                     melody: tp.Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This micro-batch's share of the global-batch loss.

    Args:
        codes: ``[B, K, T]``; frame_valid: ``[B, T]``; normalizer: ``[K]`` valid counts of the
            whole global batch (all micro-batches, all processes).
        melody: melody models: chroma crops ``[B, T_chroma, n_chroma]``, None for the null melody.
    Returns:
        (loss, per_codebook): scalar to backpropagate, and ``[K]`` detached shares of each
        codebook's mean cross-entropy. Summed over the micro-batches of a global batch they
        equal audiocraft's loss and ``ce_q1..ce_qK`` on that batch.
    """
    # Padded frames enter the LM as the special token (audiocraft's padding_with_special_token):
    # through the delay pattern, codebook k of the last real frames sees codebook 0 up to k
    # frames ahead, so padding must carry no fake audio codes.
    inputs = codes.masked_fill(~frame_valid[:, None, :], lm.special_token_id)
    logits, mask = predict(lm, inputs, lm_conditions(lm, captions, melody), forward)
    mask = mask & frame_valid[:, None, :]
    per_codebook = codebook_ce_sums(logits, codes, mask) / normalizer.clamp_min(1.0)
    return per_codebook.mean(), per_codebook.detach()
