"""Tiny checkpoints and exported bundles for the export, runtime, bench and demo tests.

Two bundles, each built once per session (fixtures in conftest.py):
- ``tiny_bundle``: random-init ESPNet, 10 synthetic classes, 64x96, FP32/FP16/INT8 ONNX;
- ``folder_bundle``: random-init ESPNet, 4 named classes of a small folder dataset (for mIoU), 64x64, FP32/INT8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["road", "car", "sky", "tree"]
PALETTE = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]]


def write_checkpoint(path: Path, recipe, num_classes: int, seed: int = 0, **extra) -> Path:
    """A random-init ESPNet saved as an apd-edge checkpoint (step 0) with ``recipe`` (a Recipe) inside."""
    import torch

    from apd_edge.config import recipe_to_dict
    from apd_edge.checkpoint import save_checkpoint
    from apd_edge.models import build_model

    torch.manual_seed(seed)
    model = build_model("espnet", num_classes)
    save_checkpoint({"model_name": "espnet", "model_kwargs": {}, "num_classes": num_classes,
                     "model": model.state_dict(), "recipe": recipe_to_dict(recipe), "step": 0, "best_miou": 0.0,
                     **extra}, path)
    return path


def tiny_checkpoint(folder: Path, num_classes: int = 10, seed: int = 0) -> Path:
    """``folder/run/best.pt``: ESPNet on the synthetic dataset at 64x96."""
    from apd_edge.config import Recipe

    r = Recipe(name="tiny")
    r.model.name = "espnet"
    r.data.dataset = "synthetic"
    r.data.options = {"num_train": 6, "num_val": 3, "size": [64, 96]}
    r.train.crop = [64, 96]
    return write_checkpoint(folder / "run" / "best.pt", r, num_classes, seed)


def build_tiny_bundle(root: Path, precisions=("fp32", "fp16", "int8"), argmax: bool = True) -> Path:
    """Export ``tiny_checkpoint`` into ``root/bundle`` (INT8 with the full "auto" method/scheme selection)."""
    import torch

    from apd_edge.export import export_bundle

    ckpt = tiny_checkpoint(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs: one thread is faster than two on a busy 2-core machine
    try:
        return export_bundle(ckpt, root / "bundle", precisions=precisions, argmax=argmax, calib_images=4,
                             parity_images=3, progress=False, int8_sensitivity=False)
    finally:
        torch.set_num_threads(threads)


def write_folder_dataset(root: Path) -> None:
    """A 4-class folder dataset (classes.yaml, images/, masks/): 4 train and 3 val images at 64x64."""
    import cv2
    import yaml

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": CLASSES, "palette": PALETTE}))
    for split, n in (("train", 4), ("val", 3)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            m = np.zeros((64, 64), np.uint8)
            m[:, 20 + 4 * i:] = 1
            m[36:, :] = 2
            m[44:56, 30:60] = 3
            img = (np.array(PALETTE, np.uint8)[m] // 2 + rng.integers(0, 80, (64, 64, 3), dtype=np.uint8))
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img[..., ::-1])
            cv2.imwrite(str(root / "masks" / split / f"{i}.png"), m)


def build_folder_bundle(base: Path) -> tuple[Path, Path, Path]:
    """(bundle, checkpoint, data root) under ``base``: ESPNet, 4 classes, 64x64, FP32 + INT8 ONNX."""
    import torch

    from apd_edge.config import Recipe
    from apd_edge.export import export_bundle

    bundle, ckpt, data = base / "bundle", base / "tiny.pt", base / "data"
    write_folder_dataset(data)
    r = Recipe(name="tiny")
    r.model.name, r.data.dataset, r.data.root = "espnet", "folder", str(data)
    r.export.input_size, r.train.crop = [64, 64], [64, 64]
    write_checkpoint(ckpt, r, 4, classes=CLASSES, palette=PALETTE, mean=r.data.mean, std=r.data.std)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs: one thread is faster than two on a busy 2-core machine
    try:
        # one calibration method and scheme, no mixed-precision search: the bench/demo tests need a valid INT8
        # graph, not the selection (test_export_bundle checks "auto" on ``tiny_bundle``); 8x cheaper
        export_bundle(ckpt, bundle, precisions=("fp32", "int8"), calib_images=4, progress=False,
                      calib_method="minmax", int8_scheme="all", int8_target=None, int8_sensitivity=False)
    finally:
        torch.set_num_threads(threads)
    return bundle, ckpt, data
