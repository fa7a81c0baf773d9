"""Music source separation with demucs: vocal removal and stems, in bounded memory.

The library API (importing it does not import torch)::

    from dataset_tools.separation import SeparateOptions, separate, instrumental, load_separator

* ``separate(inputs, out_dir, options)``: songs (files or folders) to ``OUT/<song>/<stem>.wav``,
  streamed block by block; returns a ``SeparateReport``.
* ``separate_audio(audio, rate, separator, stems)`` / ``instrumental(audio, rate, separator)``:
  in-memory arrays (``prepare --remove-vocals``).
* ``load_separator(model, device)``: a demucs model, loaded once per process;
  ``check_model(model)`` makes sure it is available without loading it into every worker.

The command line is ``python -m dataset_tools separate``. Modules, each importing only the
ones above it in this list: ``errors`` and ``stems`` (which stems to write), ``options``
(``SeparateOptions`` and the ``SEPARATION_*`` defaults), ``model`` (loading demucs,
weights-only), ``reader`` (decoding input in blocks), ``stream`` (overlap-add engine),
``report`` (results), ``files`` (one song to stem WAVs), ``api`` (the functions above),
``cli`` (the command's arguments).
"""
from __future__ import annotations

from .api import instrumental, separate, separate_audio
from .errors import SeparatorLoadError
from .model import Separator, check_model, load_separator
from .options import SeparateOptions
from .report import SeparatedFile, SeparateReport

__all__ = ["SeparateOptions", "SeparateReport", "SeparatedFile", "Separator", "SeparatorLoadError",
           "check_model", "instrumental", "load_separator", "separate", "separate_audio"]
