"""Datasets (torch-free), transforms and the training/eval loader.

``build_dataset``/``list_datasets`` import numpy and OpenCV only; ``build_loader`` imports torch on first use.
"""

from __future__ import annotations

from typing import Any

from .base import SegDataset
from .registry import build_dataset, list_datasets

__all__ = ["SegDataset", "build_dataset", "list_datasets", "build_loader"]


def __getattr__(name: str) -> Any:
    if name == "build_loader":  # lazy: importing the data package must not import torch
        from .loader import build_loader

        return build_loader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
