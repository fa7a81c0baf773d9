"""Options every command shares (workers, feature cache, progress bars) and path checks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .extract import resolve_cache_dir


@dataclass(kw_only=True)
class RunOptions:
    """``workers``: feature-extraction processes (None: one per CPU core, up to 8).
    ``cache_dir``: feature cache (None: ``~/.cache/musicgen-finetune/genre_features`` or
    ``$GENRE_CLASSIFIER_CACHE``); ``use_cache=False`` turns it off. ``progress``: show bars."""
    workers: int | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    progress: bool = True

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
