"""TrainConfig: every option of `train.py`, with defaults that work, validated on creation."""
from __future__ import annotations

import dataclasses
import json
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from .constants import SEGMENT_SECONDS

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    # What to train on, from what, to where
    data: str = ""                        # dataset_tools output folder, data.jsonl, or wav+txt folder
    model: str = "facebook/musicgen-small"
    out: str = "checkpoints/run"
    # Data
    segment_seconds: float = SEGMENT_SECONDS
    valid_fraction: float = 0.1           # used only when the dataset has no split of its own
    cache_dir: tp.Optional[str] = None    # encoded-codes cache (default ~/.cache/musicgen-finetune/codes)
    # Batch and schedule
    batch_size: int = 4                   # per process, per micro-batch
    grad_accum: int = 1                   # micro-batches per optimiser step
    steps: tp.Optional[int] = None        # optimiser steps; default: `epochs` worth
    epochs: float = 10.0
    lr: float = 1e-5
    warmup_steps: int = 100
    lr_min_ratio: float = 0.1             # cosine decays to lr * lr_min_ratio
    weight_decay: float = 0.1
    betas: tp.Tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # Objective (audiocraft's defaults)
    cond_dropout: float = 0.3             # classifier-free guidance: batch-level caption dropout
    word_dropout: float = 0.3             # T5 word dropout
    # Memory and precision
    precision: str = "auto"               # auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU
    activation_checkpointing: bool = False
    freeze: tp.List[str] = field(default_factory=list)  # LM parameter-name prefixes to keep frozen, e.g. emb
    # EMA of the weights (exported instead of the raw weights when enabled)
    ema: bool = False
    ema_decay: float = 0.99
    ema_every: int = 10
    # Bookkeeping
    seed: int = 0
    log_every: int = 10
    valid_every: int = 200
    save_every: int = 500
    keep_last: int = 2                    # full training states kept on disk
    sample_every: int = 500               # generate samples from text alone every N steps (0: never)
    sample_seconds: float = 5.0
    sample_prompts: tp.List[str] = field(default_factory=list)  # default: captions from the dataset
    max_nonfinite: int = 20               # consecutive non-finite losses before stopping
    resume: tp.Optional[str] = None       # "auto" (latest in OUT), a checkpoint file, or None
    overwrite: bool = False               # start over in an OUT that holds another run (deletes only its files)
    device: tp.Optional[str] = None
    progress: bool = True

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.freeze = list(self.freeze or [])
        self.sample_prompts = list(self.sample_prompts or [])
        if not str(self.data):
            raise ValueError("--data is required: a dataset_tools output folder, a data.jsonl, "
                             "or a folder of audio files with .txt captions")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        checks = [
            (self.segment_seconds > 0, "segment_seconds must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.steps is None or self.steps >= 1, "steps must be >= 1"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (0 <= self.lr_min_ratio <= 1, "lr_min_ratio must be between 0 and 1"),
            (0 <= self.cond_dropout < 1, "cond_dropout must be in [0, 1)"),
            (0 <= self.word_dropout < 1, "word_dropout must be in [0, 1)"),
            (0 <= self.valid_fraction < 1, "valid_fraction must be in [0, 1)"),
            (0 < self.ema_decay < 1, "ema_decay must be between 0 and 1"),
            (self.ema_every >= 1, "ema_every must be >= 1"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)"),
            (self.max_nonfinite >= 1, "max_nonfinite must be >= 1"),
            (self.sample_seconds > 0, "sample_seconds must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_file(cls, path: tp.Union[str, Path], **overrides) -> "TrainConfig":
        """Read a YAML or JSON file of options; ``overrides`` (e.g. from the command line) win."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"--config {path}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--config {path}: cannot read it ({exc.__class__.__name__})") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            try:  # safe_load builds plain values only; a !!python/... tag is an error, not code
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                where = getattr(exc, "problem_mark", None)
                line = f" (line {where.line + 1})" if where is not None else ""
                problem = getattr(exc, "problem", None) or exc.__class__.__name__
                raise ValueError(f"--config {path}: not valid YAML{line}: {problem}") from None
        else:
            try:
                values = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"--config {path}: not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of option names to values")
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{path}: unknown option(s): {', '.join(unknown)}")
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:  # a value of the wrong kind (e.g. batch_size: "four")
            raise ValueError(f"--config {path}: {exc}") from None
