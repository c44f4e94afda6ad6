"""Training, distillation and evaluation engine: ``train``, ``evaluate``, checkpoints, run folders.

Names are loaded lazily so ``import apd_edge.engine`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "train": "trainer", "Trainer": "trainer",
    "evaluate": "evaluate", "evaluate_checkpoint": "evaluate",
    "predict_scores": "inference",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "model_from_checkpoint": "checkpoint",
    "run_quickstart": "quickstart",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
