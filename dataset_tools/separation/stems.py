"""Which stems to write: the model's sources and ``instrumental`` (bottom of the package).

``instrumental`` is ``mix - vocals`` by default: the exact complement of the vocals
(``instrumental + vocals == mix``), so nothing the model failed to attribute is lost;
``instrumental_mode="sum"`` writes drums + bass + other (+ guitar, piano...) instead,
which is what ``demucs --two-stems vocals`` writes.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

INSTRUMENTAL = "instrumental"
INSTRUMENTAL_MODES = ("difference", "sum")


def stem_picker(sources: list[str], stems: Iterable[str], instrumental_mode: str = "difference"):
    """A function ``(mix [C, m], estimates [S, C, m]) -> {stem: [C, m]}`` for ``stems``.

    ``instrumental`` is ``mix - vocals`` (``difference``: the exact complement of the vocals,
    so ``instrumental + vocals == mix``) or the sum of the other sources (``sum``, what
    demucs' ``--two-stems`` writes). Raises ValueError for a stem the model lacks.
    """
    index = {name: k for k, name in enumerate(sources)}
    stems = list(stems)
    if INSTRUMENTAL in stems and "vocals" not in index:
        raise ValueError(f"'instrumental' needs a model with a vocals stem (this one has "
                         f"{', '.join(sources)})")
    for stem in stems:
        if stem not in index and stem != INSTRUMENTAL:
            raise ValueError(f"model has no stem {stem!r}: choose from "
                             f"{', '.join([INSTRUMENTAL, *sources])}")
    if instrumental_mode not in INSTRUMENTAL_MODES:
        raise ValueError(f"instrumental mode must be one of {', '.join(INSTRUMENTAL_MODES)}")
    others = [k for name, k in index.items() if name != "vocals"]

    def pick(mix: np.ndarray, est: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for stem in stems:
            if stem != INSTRUMENTAL:
                out[stem] = est[index[stem]]
            elif instrumental_mode == "difference":
                out[stem] = mix - est[index["vocals"]]
            else:
                out[stem] = est[others].sum(axis=0)
        return out
    return pick
