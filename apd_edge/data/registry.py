"""Dataset registry: ``build_dataset(data_cfg, split)`` selects a format by ``data.dataset``."""

from __future__ import annotations

import importlib
from typing import Callable

from ..config import DataConfig
from ..errors import ApdError, suggest
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


def check_options(name: str, cls: type[SegDataset], options: dict) -> None:
    for key in options:
        if key not in cls.OPTIONS:
            valid = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise ApdError(
                f"unknown data.options key '{key}' for dataset '{name}'{suggest(str(key), cls.OPTIONS)}; valid: {valid}"
            )


def build_dataset(data_cfg: DataConfig, split: str) -> SegDataset:
    """Build one split of the dataset the recipe's ``data`` section names."""
    _load_formats()
    cls = DATASETS.get(data_cfg.dataset)
    options = dict(data_cfg.options or {})
    check_options(data_cfg.dataset, cls, options)
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
