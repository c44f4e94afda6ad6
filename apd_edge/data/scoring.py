"""Which images of a split are scored: one rule for ``eval``, export parity and ``bench`` (torch-free).

All of them when no limit is given; with ``max_images`` (``--max-images``, ``--parity-images``), that many
spread evenly over the split, first and last included, so a subset samples every part of a sequence
instead of its first frames. Every output states the selection with ``describe_selection``.
"""

from __future__ import annotations

import numpy as np


def scored_indices(n_total: int, max_images: int | None = None) -> list[int]:
    """Indices into a split of ``n_total`` images: all, or ``max_images`` evenly spaced (sorted, distinct)."""
    if max_images is None or max_images >= n_total:
        return list(range(n_total))
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    if max_images == 1:
        return [0]
    return sorted({int(round(i)) for i in np.linspace(0, n_total - 1, max_images)})


def describe_selection(dataset: str, split: str, n_scored: int, n_total: int, max_images: int | None = None) -> str:
    """E.g. ``camvid:val, 128 of 233 images (evenly spaced, max 128)`` or ``camvid:val, all 233 images``."""
    if n_scored >= n_total:
        return f"{dataset}:{split}, all {n_total} images"
    return f"{dataset}:{split}, {n_scored} of {n_total} images (evenly spaced, max {max_images or n_scored})"
