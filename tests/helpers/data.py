"""Writers for tiny datasets in each real directory layout, shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def png(path: Path, arr: np.ndarray) -> Path:
    """Write RGB (HxWx3) or index (HxW) arrays; RGB is converted to OpenCV's BGR order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    assert cv2.imwrite(str(path), out)
    return path


def image(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask_from(values, h: int = 24, w: int = 32) -> np.ndarray:
    """A mask made of vertical stripes, one per value."""
    values = list(values)
    m = np.zeros((h, w), np.uint8)
    for k, v in enumerate(values):
        m[:, k * w // len(values) : (k + 1) * w // len(values)] = v
    return m


def camvid(root: Path, n_train: int = 2, n_val: int = 1, values=(0, 3, 10, 11), lists: bool = False) -> Path:
    """A CamVid copy in the SegNet layout (train/, trainannot/, ...), optionally with the list files."""
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            png(root / split / f"img{i}.png", image(seed=i))
            png(root / f"{split}annot" / f"img{i}.png", mask_from(values))
            lines.append(f"/SegNet/CamVid/{split}/img{i}.png /SegNet/CamVid/{split}annot/img{i}.png")
        if lists:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root
