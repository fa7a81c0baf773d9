"""train.py: fine-tune MusicGen on a prepared dataset.

Examples:
    python train.py --data datasets/prepared --model facebook/musicgen-small --out checkpoints/my-run
    python train.py --config my-run.yaml --resume auto          # continue where it stopped
    accelerate launch train.py --data ... --out ...             # data parallel on several GPUs
    torchrun --nproc_per_node 4 train.py --sharding fsdp ...    # medium/large: sharded over 4 GPUs
    python train.py --data ... --model tiny --show              # dry run: sizes, hours, memory

Options given on the command line override those of --config (YAML or JSON, same names).
"""
from __future__ import annotations

import argparse
import sys

def build_parser() -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field (its help text is the field's); flags not typed stay out
    of the namespace, so they override a --config file only when given."""
    from dataset_tools.cli import add_dataclass_options, add_debug_flag, suppress_defaults

    from .train_config import TrainConfig
    p = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=argparse.SUPPRESS,
                   help="YAML or JSON file of options (keys as below, with _ or -)")
    suppress_defaults(add_dataclass_options(p, TrainConfig))
    p.add_argument("--show", action="store_true",
                   help="dry run: print model size, trainable parameters, dataset hours, steps and memory; then exit")
    add_debug_flag(p)
    return p


def config_from_args(args: argparse.Namespace):
    from .train_config import TrainConfig
    values = vars(args).copy()
    values.pop("show", None)
    values.pop("debug", None)
    config_file = values.pop("config", None)
    if config_file:
        return TrainConfig.from_file(config_file, **values)
    return TrainConfig(**values)


class _StoppedWhileWorking(RuntimeError):
    """A failure during the run (exit 1): what happened, and that --resume continues."""


def main(argv=None) -> int:
    """Exit status: 0 done, 2 bad input (nothing trained), 1 failed while training (the saved
    states stay usable: --resume continues), 130 interrupted (Ctrl-C or SIGTERM while training:
    the state of the last completed step is saved first, "stopped at step N; resume with --resume")."""
    from dataset_tools.atomic import os_error_line
    from dataset_tools.cli import run_command

    from .models import ModelUnavailableError
    from .step import TrainingDiverged
    args = build_parser().parse_args(argv)

    def command() -> int:
        config = config_from_args(args)
        if getattr(args, "show", False):
            from .dry_run import describe, format_description
            print(format_description(describe(config)))
            return 0
        from .finetune import train
        from .stop_request import TrainingStopped
        try:
            train(config)
        except TrainingStopped as stopped:  # Ctrl-C/SIGTERM: the state of its step is saved
            print(stopped, file=sys.stderr)
            return stopped.exit_status
        except OSError as exc:  # disk full, permission denied while working
            if isinstance(exc, FileNotFoundError):
                raise
            raise _StoppedWhileWorking(f"{os_error_line(exc)} (fix that, then continue with --resume)") from None
        return 0

    return run_command(command, input_errors=(ModelUnavailableError,),
                       run_errors=(TrainingDiverged, _StoppedWhileWorking),
                       interrupted_hint="continue with --resume (states are in OUT/checkpoints)", debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
