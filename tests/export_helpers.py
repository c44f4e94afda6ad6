"""Shared builders for the export/runtime tests: a tiny ESPNet checkpoint on the synthetic dataset."""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[tuple, Path] = {}


def tiny_checkpoint(folder: Path, num_classes: int = 10, seed: int = 0) -> Path:
    import torch

    from apd_edge.config import Recipe, recipe_to_dict
    from apd_edge.engine.checkpoint import save_checkpoint
    from apd_edge.models import build_model

    torch.manual_seed(seed)
    r = Recipe(name="tiny")
    r.model.name = "espnet"
    r.data.dataset = "synthetic"
    r.data.options = {"num_train": 6, "num_val": 3, "size": [64, 96]}
    r.train.crop = [64, 96]
    model = build_model("espnet", num_classes)
    path = folder / "run" / "best.pt"
    save_checkpoint({"model_name": "espnet", "model_kwargs": {}, "num_classes": num_classes,
                     "model": model.state_dict(), "recipe": recipe_to_dict(r), "step": 0, "best_miou": 0.0}, path)
    return path


def tiny_bundle(tmp_path_factory, precisions=("fp32", "fp16", "int8"), argmax: bool = True) -> Path:
    """Build (once per test session) a bundle of a random-init ESPNet at 64x96 on synthetic data."""
    from apd_edge.export import export_bundle

    key = (tuple(precisions), argmax)
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("bundle")
        ckpt = tiny_checkpoint(root)
        _CACHE[key] = export_bundle(ckpt, root / "bundle", precisions=precisions, argmax=argmax, calib_images=4,
                                    parity_images=3, progress=False, int8_sensitivity=False)
    return _CACHE[key]
