"""Class colours: a 256-entry lookup table and label-map colouring (numpy only; used by eval and the demo)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def palette_array(palette: Sequence[Sequence[int]], size: int = 256) -> np.ndarray:
    """A 256x3 uint8 colour table; labels beyond the palette (e.g. void 255) are black."""
    lut = np.zeros((size, 3), np.uint8)
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:size]
    lut[: len(pal)] = np.clip(pal, 0, 255)
    return lut


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """HxW label map -> HxWx3 uint8 RGB colours."""
    lut = palette if isinstance(palette, np.ndarray) and palette.shape == (256, 3) else palette_array(palette)
    return lut[labels.astype(np.intp, copy=False)]
