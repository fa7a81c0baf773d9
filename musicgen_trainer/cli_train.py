"""train.py: fine-tune MusicGen on a prepared dataset.

Examples:
    python train.py --data datasets/prepared --model facebook/musicgen-small --out checkpoints/my-run
    python train.py --config my-run.yaml --resume auto          # continue where it stopped
    accelerate launch train.py --data ... --out ...             # data parallel on several GPUs
    python train.py --data ... --model tiny --show              # dry run: sizes, hours, memory

Options given on the command line override those of --config (YAML or JSON, same names).
"""
from __future__ import annotations

import argparse
import sys

S = argparse.SUPPRESS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, argument_default=S,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of options (keys as below, with _ or -)")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", help="dataset_tools output folder, audiocraft data.jsonl, or folder of audio + .txt")
    g.add_argument("--model", help="base model: facebook/musicgen-small (default), -medium, tiny, or an export folder")
    g.add_argument("--out", help="run folder for checkpoints, logs, samples and the export (default checkpoints/run)")
    g.add_argument("--segment-seconds", type=float, help="training window in seconds (default 30)")
    g.add_argument("--valid-fraction", type=float, help="validation share when the dataset has no split (default 0.1)")
    g.add_argument("--cache-dir", help="where encoded codes are cached (default ~/.cache/musicgen-finetune/codes)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help="clips per micro-batch, per GPU (default 4)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per update; same result as a larger batch (default 1)")
    g.add_argument("--steps", type=int, help="optimiser steps (default: --epochs worth)")
    g.add_argument("--epochs", type=float, help="passes over the training clips when --steps is not given (default 10)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 1e-5)")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps before the cosine decay (default 100)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    g.add_argument("--grad-clip", type=float, help="gradient-norm clipping, 0 to disable (default 1.0)")
    g.add_argument("--cond-dropout", type=float, help="caption dropout for classifier-free guidance (default 0.3)")
    g.add_argument("--word-dropout", type=float, help="T5 word dropout (default 0.3)")
    g.add_argument("--seed", type=int, help="seed for data order, crops and dropout (default 0)")
    g = p.add_argument_group("memory and precision")
    g.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto (default): bf16 on GPUs that support it, else fp16; fp32 on CPU")
    g.add_argument("--activation-checkpointing", action="store_true", help="recompute activations: less memory, ~30%% slower")
    g.add_argument("--freeze", help="comma-separated LM parameter prefixes to keep frozen, e.g. emb,linears")
    g.add_argument("--ema", action="store_true", help="keep an EMA of the weights and export it")
    g.add_argument("--ema-decay", type=float, help="EMA decay (default 0.99, applied every --ema-every steps)")
    g.add_argument("--ema-every", type=int, help="steps between EMA updates (default 10)")
    g = p.add_argument_group("logging, checkpoints, samples")
    g.add_argument("--log-every", type=int, help="TensorBoard logging interval in steps (default 10)")
    g.add_argument("--valid-every", type=int, help="validation interval in steps (default 200)")
    g.add_argument("--save-every", type=int, help="full training state interval in steps (default 500)")
    g.add_argument("--keep-last", type=int, help="training states kept on disk (default 2)")
    g.add_argument("--sample-every", type=int, help="generate samples from text every N steps, 0 = never (default 500)")
    g.add_argument("--sample-seconds", type=float, help="length of those samples (default 5)")
    g.add_argument("--sample-prompt", dest="sample_prompts", action="append",
                   help="prompt for the samples (repeatable; default: captions from the dataset)")
    g.add_argument("--resume", nargs="?", const="auto",
                   help="continue from the newest state in OUT/checkpoints (or from a given file)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds another run (deletes only that run's files)")
    g.add_argument("--device", help="cpu or cuda (default: what accelerate picks)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--show", action="store_true",
                   help="dry run: print model size, trainable parameters, dataset hours, steps and memory; then exit")
    return p


def config_from_args(args: argparse.Namespace):
    from .train_config import TrainConfig
    values = vars(args).copy()
    values.pop("show", None)
    config_file = values.pop("config", None)
    if isinstance(values.get("freeze"), str):
        values["freeze"] = [s.strip() for s in values["freeze"].split(",") if s.strip()]
    if config_file:
        return TrainConfig.from_file(config_file, **values)
    return TrainConfig(**values)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DatasetError
    from .loading import ModelUnavailableError
    from .training import TrainingDiverged
    try:
        config = config_from_args(args)
        if getattr(args, "show", False):
            from .dry_run import describe, format_description
            print(format_description(describe(config)))
            return 0
        from .trainer import train
        train(config)
    except (DatasetError, ModelUnavailableError, ValueError, FileNotFoundError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied while working: the saved states stay usable
        from .atomic import os_error_line
        print(f"error: {os_error_line(exc)} (fix that, then continue with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: continue with --resume (states are in OUT/checkpoints)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
