"""Dataset registry: ``build_dataset(data_cfg, split)`` selects a format by ``data.dataset``."""

from __future__ import annotations

import importlib
from typing import Callable

from ..config import DataConfig
from ..errors import ApdError
from ..registry import Registry
from .base import SegDataset

DATASETS: Registry[SegDataset] = Registry("dataset")

# Format modules register themselves on import; listed here so lookups need no import side effects elsewhere.
_MODULES = ("cityscapes", "camvid", "ade20k", "pascal_context", "folder", "synthetic")
_loaded = False


def register(name: str) -> Callable[[type[SegDataset]], type[SegDataset]]:
    """Class decorator: register a SegDataset subclass under ``name``."""

    def deco(cls: type[SegDataset]) -> type[SegDataset]:
        cls.name = name
        DATASETS.register(name)(cls)
        return cls

    return deco


def _load_formats() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _MODULES:
            importlib.import_module(f"{__package__}.{mod}")


def list_datasets() -> list[str]:
    _load_formats()
    return DATASETS.names()


def check_options(name: str, options: dict) -> dict:
    """Validate ``data.options`` for dataset ``name`` through the format class itself (no file access)."""
    _load_formats()
    return DATASETS.get(name).validate_options(dict(options or {}))


def build_dataset(data_cfg: DataConfig, split: str) -> SegDataset:
    """Build one split of the dataset the recipe's ``data`` section names."""
    _load_formats()
    cls = DATASETS.get(data_cfg.dataset)
    options = dict(data_cfg.options or {})
    cls.validate_options(options)
    if data_cfg.root is None and data_cfg.dataset != "synthetic":
        raise ApdError(f"data.root is required for dataset '{data_cfg.dataset}'")
    ds = cls(data_cfg.root, split, options)
    if data_cfg.num_classes is not None and data_cfg.num_classes != ds.num_classes:
        raise ApdError(
            f"mismatched classes: data.num_classes is {data_cfg.num_classes} but dataset "
            f"'{data_cfg.dataset}' has {ds.num_classes} ({', '.join(ds.class_names[:5])}"
            f"{', ...' if ds.num_classes > 5 else ''})"
        )
    return ds
