"""Held-out cross-entropy: the training objective on clips the model was never trained on.

Computed exactly as training's validation (``step.validation_loss``): the same fixed batches
(``data.validation_batches``: the first window of every clip, real captions, no dropout), the
same loss (``objective.micro_batch_loss``: delay pattern, padded frames fed as the special
token and masked out), per-codebook sums over all batches divided by their valid-position
counts (``objective.token_counts``), then the mean over codebooks. So a base model and its
fine-tune compared on one dataset's validation split get figures comparable with the
``valid_loss`` the run logged.
"""
from __future__ import annotations

import math
import typing as tp
from pathlib import Path

import numpy as np
import torch

from ..data import validation_batches
from ..objective import micro_batch_loss, token_counts
from ..step import make_autocast


@torch.no_grad()
def held_out_cross_entropy(model, codes: tp.Sequence[np.ndarray], captions: tp.Sequence[str],
                           n_frames: tp.Optional[int] = None, batch_size: int = 4, melody=None,
                           precision: str = "fp32") -> dict:
    """Cross-entropy of ``model`` (audiocraft ``MusicGen``) on held-out codes.

    Args:
        codes: each clip's tokens ``[K, T_i]`` (e.g. ``CodeCache.codes_for`` of the validation clips;
            `validation_codes` gives them for a dataset).
        captions: one description per clip (what the model is conditioned on).
        n_frames: the window in frames (training's ``segment_seconds * frame_rate``); default the
            model's ``max_duration`` (30 s: 1500 frames). Longer clips are cropped to their first
            window, shorter ones padded (and masked), as in validation.
        batch_size: clips per forward pass. With the same captions per batch, the figure equals
            ``step.validation_loss`` (audiocraft's T5 pads captions to the batch's longest, which moves
            the loss ~1e-4 relative between batchings).
        melody: melody models: ``melody.MelodyCrops`` of these clips (None for text models).
        precision: "fp32", "bf16" or "fp16" (autocast), as the run used it.
    Returns:
        JSON-ready ``{"per_codebook": [K] mean CE in nats, "mean": their mean (the training loss),
        "perplexity": exp(mean), "per_codebook_perplexity": [K], "n_tokens": valid positions of all
        codebooks, "n_tokens_per_codebook": [K], "n_clips"}``.
    """
    if len(codes) != len(captions):
        raise ValueError(f"{len(codes)} clips but {len(captions)} captions")
    if not len(codes):
        raise ValueError("no held-out clips to compute a cross-entropy on")
    lm = model.lm
    if n_frames is None:
        n_frames = int(round(model.max_duration * model.frame_rate))
    device = next(lm.parameters()).device
    autocast = make_autocast(precision, device)
    k = lm.n_q
    sums, counts = torch.zeros(k, device=device), torch.zeros(k, device=device)
    ones = torch.ones(k, device=device)  # normaliser 1: micro_batch_loss returns the sums
    was_training = lm.training
    lm.eval()
    try:
        for batch in validation_batches(codes, captions, n_frames, batch_size, melody):
            batch = batch.to(device)
            with autocast():
                _, batch_sums = micro_batch_loss(lm, batch.codes, batch.frame_valid, batch.captions, ones,
                                                 melody=batch.melody)
            sums += batch_sums
            counts += token_counts(lm, batch.frame_valid).to(device)
    finally:
        lm.train(was_training)
    per_codebook = (sums / counts.clamp_min(1)).double().cpu()
    mean = float(per_codebook.mean())
    return {"per_codebook": [float(x) for x in per_codebook],
            "mean": mean,
            "perplexity": math.exp(mean),
            "per_codebook_perplexity": [math.exp(float(x)) for x in per_codebook],
            "n_tokens": int(counts.sum().item()),
            "n_tokens_per_codebook": [int(x) for x in counts.cpu()],
            "n_clips": len(codes)}


def validation_codes(model, data: tp.Union[str, Path], valid_fraction: float = 0.1, seed: int = 0,
                     cache_dir: tp.Optional[str] = None, progress: bool = False) -> tuple[list, list, list]:
    """The validation split of a dataset as training splits it (``data.find_clips`` and
    ``split_clips`` with the run's ``valid_fraction`` and ``seed``), encoded through the code
    cache with ``model``'s compression model.

    Returns:
        (codes ``[K, T_i]`` per clip, captions, clips); empty lists when the split has no clip.
    """
    from ..code_cache import CodeCache
    from ..data import find_clips, split_clips

    _, valid = split_clips(find_clips(data, valid_fraction, seed))
    if not valid:
        return [], [], []
    codes, kept, _ = CodeCache(model.compression_model, cache_dir).codes_for(valid, progress=progress)
    return list(codes), [c.caption for c in kept], kept
