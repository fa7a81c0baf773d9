"""Text-to-music generation over audiocraft's ``MusicGen``: one library function, ``generate``."""
from __future__ import annotations

import math
import typing as tp
from dataclasses import dataclass

import torch


@dataclass
class GenerationConfig:
    """Sampling settings (audiocraft's defaults: top-k 250, CFG coefficient 3)."""
    duration: float = 8.0
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: tp.Optional[int] = 0
    extend_stride: float = 18.0
    use_sampling: bool = True

    def __post_init__(self):
        if not 0 < self.duration <= 600:
            raise ValueError(f"duration must be between 0 and 600 seconds, got {self.duration}")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables top-k)")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError("top_p must be between 0 and 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.extend_stride <= 0:
            raise ValueError("extend_stride must be > 0")


def generate(model, prompts: tp.Sequence[str], config: tp.Optional[GenerationConfig] = None,
             progress: bool = False) -> torch.Tensor:
    """Generate one clip per prompt, as a batch.

    Args:
        model: an ``audiocraft.models.MusicGen`` (see ``loading.load_model``).
        prompts: B text descriptions ("" generates unconditionally).
    Returns:
        float tensor ``[B, C, T]`` at ``model.sample_rate``, T = round(duration * sample_rate).
    """
    config = config or GenerationConfig()
    stride = min(config.extend_stride, model.max_duration / 2)
    # audiocraft generates int(duration * frame_rate) frames: ask for enough whole frames
    # (+ half a frame against float round-down) and trim to the exact sample count.
    frames = math.ceil(config.duration * model.frame_rate - 1e-9)
    model.set_generation_params(use_sampling=config.use_sampling, top_k=config.top_k,
                                top_p=config.top_p, temperature=config.temperature,
                                duration=(frames + 0.5) / model.frame_rate, cfg_coef=config.cfg_coef,
                                extend_stride=stride)
    with torch.random.fork_rng(devices=_cuda_devices()):
        if config.seed is not None:
            torch.manual_seed(config.seed)
        wav = model.generate(list(prompts), progress=progress)
    target = int(round(config.duration * model.sample_rate))
    return wav[..., :target].float().cpu()


def _cuda_devices() -> list:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
