"""Checkpoints: atomic writes, ``weights_only`` loads, and rebuilding a model from one.

A checkpoint is a dict of plain data (tensors, numbers, strings, lists, dicts):
  model_name, model_kwargs, num_classes, model (state dict), recipe (resolved, plain dict),
  step, best_miou, classes (names), palette ([[r, g, b], ...]), mean, std,
  and for resumable runs: optimizer(s), scheduler state, rng states, distiller state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ApdError


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` atomically: a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint as data only (``weights_only=True``); clear errors for missing/corrupt files."""
    path = Path(path)
    if path.is_dir():
        for cand in ("best.pt", "last.pt"):
            if (path / cand).is_file():
                path = path / cand
                break
        else:
            raise ApdError(f"no best.pt or last.pt in run folder {path}")
    if not path.is_file():
        raise ApdError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ApdError(f"cannot read checkpoint {path}: corrupt or not a PyTorch checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict):
        raise ApdError(f"checkpoint {path} does not hold a dict (got {type(ckpt).__name__})")
    return ckpt


def model_from_checkpoint(path_or_ckpt: str | Path | dict, map_location: str = "cpu"):
    """Rebuild the model stored in an apd-edge checkpoint and load its weights. Returns (model, ckpt)."""
    from ..models import build_model

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt, map_location)
    for key in ("model_name", "num_classes", "model"):
        if key not in ckpt:
            raise ApdError(f"checkpoint lacks '{key}': not an apd-edge checkpoint")
    model = build_model(ckpt["model_name"], ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ApdError(
            f"checkpoint weights do not fit {ckpt['model_name']} with {ckpt['num_classes']} classes "
            f"(missing {len(missing)}, unexpected {len(unexpected)} keys, e.g. {(missing or unexpected)[0]})"
        )
    return model, ckpt
