"""The separation package's own exception (bottom of the package: imports nothing).

Bad input files are ``dataset_tools.audio_io.AudioDecodeError``; a full disk ends a batch
with ``dataset_tools.files.RunFailedError``.
"""
from __future__ import annotations


class SeparatorLoadError(ValueError):
    """The model cannot be loaded; ``str(err)`` is one line saying why and what to do."""
