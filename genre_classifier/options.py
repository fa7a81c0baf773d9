"""Options every command shares (workers, feature cache, progress bars) and path checks.

The fields of the config dataclasses (``RunOptions`` and its subclasses ``TrainConfig``,
``EvaluateConfig``, ``TagConfig``) are also the command-line flags of the same names, with
their help and defaults (``dataset_tools.cli``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dataset_tools.cli import option

from .extract import resolve_cache_dir

RUN_GROUP = "feature extraction"  # where --help lists the RunOptions flags


@dataclass(kw_only=True)
class RunOptions:
    """``workers``: feature-extraction processes (None: one per CPU core, up to 8).
    ``cache_dir``: feature cache (None: ``~/.cache/musicgen-finetune/genre_features`` or
    ``$GENRE_CLASSIFIER_CACHE``); ``use_cache=False`` turns it off. ``progress``: show bars."""
    workers: int | None = option(None, "worker processes (default: one per CPU core)", metavar="N",
                                 group=RUN_GROUP)
    cache_dir: Path | None = option(None, "feature cache (default: ~/.cache/musicgen-finetune/genre_features, "
                                    "or $GENRE_CLASSIFIER_CACHE)", metavar="DIR", group=RUN_GROUP)
    use_cache: bool = option(True, "read and write the feature cache", aliases=("--no-cache",), group=RUN_GROUP)
    progress: bool = option(True, "show progress bars", group=RUN_GROUP)

    def _check_run_options(self):
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be a whole number >= 1, got {self.workers!r}")
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir).expanduser()
            if self.cache_dir.exists() and not self.cache_dir.is_dir():
                raise ValueError(f"cache folder {self.cache_dir} is a file")

    @property
    def feature_cache(self) -> Path | None:
        return resolve_cache_dir(self.cache_dir, self.use_cache)


def existing_dir(path, what: str) -> Path:
    """``path`` as an absolute Path; ValueError naming ``what`` unless it is a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{what} not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{what} must be a folder: {path}")
    return path.resolve()
