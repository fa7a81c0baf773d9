"""TrainConfig: every option of `train.py`, with defaults that work, validated on creation."""
from __future__ import annotations

import dataclasses
import json
import math
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from dataset_tools.cli import option
from dataset_tools.dataset_format import SEGMENT_SECONDS

from .optimizers import OPTIMIZERS
from .runtime import resolve_name

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
EXPORT_DTYPES = ("fp16", "bf16", "fp32")  # weight formats of an export (exports.py uses this tuple)
SHARDINGS = ("none", "fsdp")
# lora.DEFAULT_TARGETS (peft imported only when used). in_proj (the attention's q/k/v, a raw weight)
# is opt-in: adapting it costs ~20 % more step time and its adapted weight per layer kept for the
# backward (docs/training.md#lora, measured), against LoRA's targets of <= 0.8x time, <= 0.5x memory.
LORA_TARGETS = ("out_proj", "linear1", "linear2")


DATA, OPTIM, MEMORY, LOGGING = ("data and model", "optimisation", "memory and precision",
                                "logging, checkpoints, samples")
EVAL = "held-out evaluation"


@dataclass
class TrainConfig:
    """Every option of ``train.py``: each field is one flag (``--field-name``), its help text
    below is the flag's ``--help``, and a YAML/JSON ``--config`` file uses the same names."""
    data: str = option("", "dataset_tools output folder, audiocraft data.jsonl, or folder of audio + .txt",
                       group=DATA, metavar="PATH")
    model: str = option("facebook/musicgen-small", "base model: a hub name (facebook/musicgen-small, -medium, "
                        "...), tiny, tiny-melody, tiny-stereo, or an export folder", group=DATA)
    out: str = option("checkpoints/run", "run folder for checkpoints, logs, samples and the export", group=DATA,
                      metavar="DIR")
    segment_seconds: float = option(SEGMENT_SECONDS, "training window in seconds", group=DATA, metavar="S")
    valid_fraction: float = option(0.1, "validation share when the dataset has no split of its own", group=DATA)
    cache_dir: tp.Optional[str] = option(None, "where encoded codes are cached (default "
                                         "~/.cache/musicgen-finetune/codes)", group=DATA, metavar="DIR")
    allow_mono_for_stereo: bool = option(False, "let a stereo model train on mono files, copied to both "
                                         "channels: it then learns identical left and right (default: stop "
                                         "and say how many files are mono)", group=DATA)
    batch_size: int = option(4, "clips per micro-batch, per GPU", group=OPTIM)
    grad_accum: int = option(1, "micro-batches per update: the update of a larger batch (to rounding when "
                             "captions tokenise to equal lengths: docs/training.md)", group=OPTIM)
    steps: tp.Optional[int] = option(None, "optimiser steps (default: --epochs worth)", group=OPTIM)
    epochs: float = option(10.0, "passes over the training clips when --steps is not given", group=OPTIM)
    lr: float = option(1e-5, "peak learning rate", group=OPTIM)
    warmup_steps: int = option(100, "linear warm-up steps before the cosine decay", group=OPTIM)
    lr_min_ratio: float = option(0.1, "the cosine decays to lr x this", group=OPTIM)
    weight_decay: float = option(0.1, "AdamW weight decay", group=OPTIM)
    betas: tp.Tuple[float, float] = option((0.9, 0.95), "AdamW betas", group=OPTIM, metavar="B")
    optimizer: str = option("adamw", "adamw (fp32 states, 8 bytes per trainable parameter), adamw8bit (bitsandbytes: "
                            "8-bit states, ~2 bytes; same update in fp32) or paged-adamw8bit (CUDA: 8-bit states "
                            "paged to CPU RAM when the GPU runs short)", group=OPTIM, choices=OPTIMIZERS)
    grad_clip: float = option(1.0, "gradient-norm clipping, 0 to disable", group=OPTIM)
    cond_dropout: tp.Optional[float] = option(None, "caption dropout for classifier-free guidance (default: the "
                                              "rate in the model's config, what audiocraft trained it with; keep "
                                              "it above 0, or guidance at inference has nothing to contrast)",
                                              group=OPTIM, metavar="P")
    word_dropout: tp.Optional[float] = option(None, "T5 word dropout (default: the rate in the model's config)",
                                              group=OPTIM, metavar="P")
    seed: int = option(0, "seed for data order, crops and dropout", group=OPTIM)
    precision: str = option("auto", "auto: bf16 on GPUs that support it, else fp16; fp32 on CPU", group=MEMORY,
                            choices=PRECISIONS)
    activation_checkpointing: bool = option(False, "recompute activations: less memory, ~30%% slower",
                                            group=MEMORY)
    sharding: str = option("none", "fsdp: shard the LM's weights, gradients and optimiser state over the processes "
                           "of a torchrun/accelerate launch (FSDP), for models whose full training state does not "
                           "fit one GPU (medium, large on 24-40 GB cards); none: each process holds the whole LM "
                           "(data parallel), faster when it fits", group=MEMORY, choices=SHARDINGS)
    freeze: tp.List[str] = option(help="LM parameter prefixes to keep frozen, e.g. emb,linears (commas or "
                                  "spaces)", group=MEMORY, metavar="PREFIX", default_factory=list)
    gpu_memory: tp.Optional[float] = option(None, "GB of GPU memory to plan for: picks the largest micro-batch that "
                                            "fits (keeping batch x grad-accum), then activation checkpointing, 8-bit "
                                            "states, LoRA, only as needed, and says why (--show prints the plan)",
                                            group=MEMORY, metavar="GB")
    lora: tp.Optional[int] = option(None, "LoRA rank: train low-rank adapters (peft) on the transformer's linears "
                                    "instead of all weights; only they get gradients and AdamW state, the frozen base "
                                    "stays in bf16/fp16 on GPU (default: full fine-tuning)", group=MEMORY, metavar="RANK")
    lora_alpha: tp.Optional[float] = option(None, "LoRA alpha: adapters are scaled by alpha / rank (default: 2 x rank)",
                                            group=MEMORY)
    lora_dropout: float = option(0.0, "dropout on the LoRA adapters' input (the nn.Linear targets'; in_proj's "
                                      "adapters take none)", group=MEMORY, metavar="P")
    lora_targets: tp.List[str] = option(help="what gets adapters (commas or spaces): nn.Linear module names, and in_proj "
                                        "for the attention's query/key/value projection (a raw weight: ~20%% slower steps); the "
                                        "default: the attention output projections (self and cross) and the "
                                        "feed-forward layers",
                                        group=MEMORY, metavar="NAME", default_factory=lambda: list(LORA_TARGETS))
    lora_train_heads: bool = option(False, "with --lora, also train the output heads (linears.*) in full",
                                    group=MEMORY)
    lora_train_condition_proj: bool = option(False, "with --lora, also train the conditioner's output projection "
                                             "(text embedding -> LM width) in full", group=MEMORY)
    ema: bool = option(False, "keep an EMA of the weights and export it", group=MEMORY)
    ema_decay: float = option(0.99, "EMA decay, applied every --ema-every steps", group=MEMORY)
    ema_every: int = option(10, "steps between EMA updates", group=MEMORY)
    log_every: int = option(10, "TensorBoard logging interval in steps", group=LOGGING)
    eval_every: int = option(200, "held-out evaluation every N steps (and at the last): the validation split's "
                             "cross-entropy (the training objective), the best export (--keep-best), --early-stop, "
                             "and the genre check of --eval-classifier; 0 = never", group=EVAL, metavar="N",
                             aliases=("--valid-every",))
    keep_best: bool = option(True, "keep the export with the lowest held-out cross-entropy so far in OUT/export-best/ "
                             "(rewritten at each improvement)", group=EVAL)
    early_stop: tp.Optional[int] = option(None, "stop (and export) when the held-out cross-entropy has not improved "
                                          "for this many evaluations in a row (default: off)", group=EVAL,
                                          metavar="PATIENCE")
    eval_classifier: str = option("auto", "genre classifier folder (python -m genre_classifier train): at each "
                                  "evaluation a short clip per genre of the validation captions is generated and "
                                  "the classifier's accuracy and confidence on them logged; auto: the dataset's own "
                                  "(checkpoints/genre-NAME beside it or here), else DATA/../genre-classifier when it "
                                  "was trained on DATA, as evaluate looks; none: off",
                                  group=EVAL, metavar="DIR")
    save_every: int = option(500, "full training state interval in steps", group=LOGGING)
    keep_last: int = option(2, "training states kept on disk", group=LOGGING)
    export_dtype: str = option("fp16", "weight format of the exported LM: fp16 like the released checkpoints "
                               "(half the size of fp32), bf16, or fp32", group=LOGGING, choices=EXPORT_DTYPES)
    sample_every: int = option(500, "generate samples from text alone every N steps, 0 = never", group=LOGGING)
    sample_seconds: float = option(5.0, "length of those samples", group=LOGGING)
    sample_prompts: tp.List[str] = option(help="prompt for the samples (repeat the flag for several) (default: "
                                          "captions from the dataset)", group=LOGGING, aliases=("--sample-prompt",),
                                          repeat=True, metavar="TEXT", default_factory=list)
    license: tp.Optional[str] = option(None, "licence id in the exports' model card (README.md), e.g. mit, apache-2.0, "
                                       "cc-by-nc-4.0 (default: cc-by-nc-4.0, the released MusicGen weights' "
                                       "licence, for their fine-tunes; else other)", group=LOGGING, metavar="ID")
    card_files: bool = option(False, "list the training files' names in the model card (default: genres, hours "
                              "and caption examples only)", group=LOGGING)
    max_nonfinite: int = option(20, "consecutive non-finite losses before the run stops", group=LOGGING)
    resume: tp.Optional[str] = option(None, "continue the run in --out from its newest state (--resume alone), "
                                      "or from a given state file", group=LOGGING, const="auto", metavar="STATE")
    overwrite: bool = option(False, "start over in an --out that holds another run (deletes only that run's "
                             "files)", group=LOGGING)
    device: tp.Optional[str] = option(None, "cpu or cuda (default: what accelerate picks)", group=LOGGING)
    progress: bool = option(True, "progress bars", group=LOGGING)
    # The old name of eval_every, kept for Python callers and config files: TrainConfig(valid_every=N).
    # Only an argument (read config.eval_every): a property of that name would make
    # dataclasses.replace pass the old interval back in over a new eval_every.
    valid_every: dataclasses.InitVar[tp.Optional[int]] = None

    def __post_init__(self, valid_every: tp.Optional[int] = None):
        if valid_every is not None:
            self.eval_every = valid_every
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0 <= float(b) < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. 0.9 0.95; got {' '.join(map(str, self.betas))}")
        # "--freeze emb,linears" and "--freeze emb linears" (and YAML lists) mean the same
        self.freeze = [p.strip() for item in (self.freeze or []) for p in str(item).split(",") if p.strip()]
        self.sample_prompts = list(self.sample_prompts or [])
        self.lora_targets = [p.strip() for item in (self.lora_targets or []) for p in str(item).split(",") if p.strip()]
        # Stored, recorded and exported as the full hub name: the hub has no repo called "small".
        self.model = resolve_name(self.model)
        if not str(self.data):
            raise ValueError("--data is required: a dataset_tools output folder, a data.jsonl, "
                             "or a folder of audio files with .txt captions")
        if self.export_dtype not in EXPORT_DTYPES:
            raise ValueError(f"export_dtype must be one of {', '.join(EXPORT_DTYPES)}, got {self.export_dtype!r}")
        if self.sharding not in SHARDINGS:
            raise ValueError(f"sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.optimizer != "adamw" and self.sharding == "fsdp":
            raise ValueError(f"--optimizer {self.optimizer} does not run on FSDP-sharded parameters: use it "
                             f"without --sharding fsdp, or --optimizer adamw with it")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        checks = [
            (self.segment_seconds > 0, "segment_seconds must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (0 <= self.seed < 2 ** 63, f"seed must be between 0 and 2**63 - 1, got {self.seed}"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.steps is None or self.steps >= 1, "steps must be >= 1"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (0 <= self.lr_min_ratio <= 1, "lr_min_ratio must be between 0 and 1"),
            (self.cond_dropout is None or 0 <= self.cond_dropout < 1, "cond_dropout must be in [0, 1)"),
            (self.word_dropout is None or 0 <= self.word_dropout < 1, "word_dropout must be in [0, 1)"),
            (0 <= self.valid_fraction < 1, "valid_fraction must be in [0, 1)"),
            (0 < self.ema_decay < 1, "ema_decay must be between 0 and 1"),
            (self.ema_every >= 1, "ema_every must be >= 1"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)"),
            (self.max_nonfinite >= 1, "max_nonfinite must be >= 1"),
            (self.sample_seconds > 0, "sample_seconds must be > 0"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: no held-out evaluation)"),
            (self.early_stop is None or self.early_stop >= 0, "early_stop must be >= 0 (evaluations; 0 or "
                                                              "nothing: off)"),
            (not (self.early_stop and not self.eval_every), "--early-stop counts evaluations: it needs "
                                                            "--eval-every N (N >= 1)"),
            (self.lora is None or self.lora >= 1, f"--lora is the adapters' rank and must be >= 1, got {self.lora} "
                                                  f"(leave it out for full fine-tuning)"),
            (self.lora_alpha is None or self.lora_alpha > 0, "lora_alpha must be > 0"),
            (self.gpu_memory is None or self.gpu_memory > 0, "gpu_memory must be > 0 (GB)"),
            (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
            (bool(self.lora_targets), "lora_targets must name at least one linear layer (or in_proj)"),
            (not (self.lora and self.sharding == "fsdp"), "--lora with --sharding fsdp is not supported: LoRA's "
                                                          "training state is small, train with data parallel"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.lora is None:  # a LoRA option without --lora would be silently ignored
            given = [flag for flag, on in (("--lora-alpha", self.lora_alpha is not None),
                                           ("--lora-dropout", self.lora_dropout != 0),
                                           ("--lora-targets", list(self.lora_targets) != list(LORA_TARGETS)),
                                           ("--lora-train-heads", self.lora_train_heads),
                                           ("--lora-train-condition-proj", self.lora_train_condition_proj)) if on]
            if given:
                raise ValueError(f"{', '.join(given)} without --lora RANK: pass --lora (e.g. --lora 16) or drop them")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # Options that name files of this machine (a model too, when it is a folder).
    PATH_OPTIONS = ("data", "out", "cache_dir", "eval_classifier", "resume", "model")

    def shareable_dict(self) -> dict:
        """``to_dict()`` as an export records it (exports get pushed): the options that name a file
        or folder of this machine keep its last name only (``/home/me/music/jazz`` -> ``jazz``); a
        hub model name stays whole."""
        values = self.to_dict()
        for name in self.PATH_OPTIONS:
            value = values.get(name)
            if not isinstance(value, str) or not value or name == "model" and not _names_a_local_path(value):
                continue
            values[name] = Path(value).name or value
        return values

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
        unknown = sorted(set(values) - set(cls.field_names()) - {"valid_every"})  # the old name of eval_every
        if unknown:
            raise ValueError(f"{path}: unknown option(s): {', '.join(unknown)}")
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:  # a value of the wrong kind (e.g. batch_size: "four")
            raise ValueError(f"--config {path}: {exc}") from None


def total_steps(config: TrainConfig, n_train: int, world: int) -> int:
    """Optimiser steps of a run: ``--steps``, else ``--epochs`` over ``n_train`` clips at
    ``batch x grad-accum x processes`` clips per step."""
    if config.steps:
        return config.steps
    per_step = config.batch_size * config.grad_accum * world
    return max(1, math.ceil(config.epochs * n_train / per_step))


def _names_a_local_path(model: str) -> bool:
    """Whether ``--model`` names a folder of this machine (not a hub name or one of ours)."""
    return Path(model).expanduser().is_absolute() or model.startswith((".", "~")) or Path(model).exists()
