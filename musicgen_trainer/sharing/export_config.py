"""``python -m musicgen_trainer export``: its options (``ExportConfig``, each field one flag) and
what it does (``run_export``): a run, an export or any model ``load_model`` accepts, written in
transformers' format or audiocraft's layout."""
from __future__ import annotations

import typing as tp
from dataclasses import dataclass
from pathlib import Path

from dataset_tools.cli import option

FORMATS = ("transformers", "audiocraft")


@dataclass
class ExportConfig:
    """Every option of ``python -m musicgen_trainer export``: each field one flag."""
    source: str = option(help="a train.py run folder (its export/; a --lora run's export holds the merged weights), "
                         "an export folder (audiocraft or transformers format), or a model name (tiny, "
                         "facebook/musicgen-small...)", metavar="SOURCE", positional=True)
    out: str = option(help="folder to write: new or empty, or a previous export with --overwrite", metavar="DIR")
    format: str = option("transformers", "transformers (Hugging Face MusicgenForConditionalGeneration, "
                         "safetensors) or audiocraft (state_dict.bin + compression_state_dict.bin)",
                         choices=FORMATS)
    dtype: str = option("fp32", "floating-point format of the written weights (audiocraft: the LM's)",
                        choices=("fp32", "fp16", "bf16"))
    overwrite: bool = option(False, "replace a previous export in --out (only the files that export wrote)")
    license: tp.Optional[str] = option(None, "the model card's licence id (default: cc-by-nc-4.0 for fine-tunes of "
                                       "facebook/musicgen-*, else other)", metavar="ID")
    card_files: bool = option(False, "list the training files' names in the model card")
    samples: int = option(2, "clips in the model card: the run's latest training samples, else clips generated "
                          "now (0: none)", metavar="N")


def _check_audiocraft_out(out: Path, overwrite: bool) -> None:
    from ..exports import is_export
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_export(out):
        raise ValueError(f"--out {out} is not empty and is not an export: choose a new or empty folder")
    if not overwrite:
        raise ValueError(f"--out {out} already holds an export: add --overwrite to replace it")


def run_export(config: ExportConfig, log: tp.Callable[[str], None] = print) -> Path:
    """Write ``config.source`` to ``config.out``; returns the folder (ValueError, one line, for bad input)."""
    from ..models import load_model
    out = Path(config.out).expanduser()
    from .transformers_format import source_folder
    source = source_folder(config.source)
    if config.format == "transformers":
        from .transformers_format import check_out_folder, export_transformers
        check_out_folder(out, config.overwrite)  # before the (slow) load
        model = load_model(source, device="cpu")
        export_transformers(model, out, overwrite=config.overwrite, dtype=config.dtype)
    else:
        from ..exports import export_model
        _check_audiocraft_out(out, config.overwrite)
        model = load_model(source, device="cpu")
        export_model(model, out, dtype=config.dtype)
    from .card_data import find_run, training_samples, write_card
    run_dir = find_run(source)
    has_samples = bool(training_samples(run_dir, 0)[1]) if run_dir else False
    card = write_card(out, run_dir=run_dir, license=config.license, card_files=config.card_files,
                      model=None if has_samples or not config.samples else model, n_samples=config.samples)
    log(f"wrote {out} ({config.format} format, {config.dtype}) from {source}; model card {card.name}")
    return out
