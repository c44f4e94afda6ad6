"""Preprocessing defined by a bundle's manifest: fit the image to the network input, normalise, NCHW.

Modes (``manifest["preprocess"]["mode"]``):
- ``pad``: images that fit are padded at the bottom/right to the input size (``pad_fill``: ``reflect``,
  as the training evaluation does, or ``zero`` = the dataset mean colour after normalisation); larger
  images are first scaled down (aspect kept) to fit. Postprocessing crops the valid region back.
- ``resize``: the image is resized (bilinear) to the input size; postprocessing resizes back.
Torch-free (numpy + OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ApdError


@dataclass(frozen=True)
class PrepMeta:
    """What postprocessing needs to map network output back onto the original image."""

    orig: tuple[int, int]  # H, W of the image given to preprocess
    valid: tuple[int, int]  # H, W of the image content inside the network input (pad mode)
    mode: str


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3xHxW, ``(x / 255 - mean) / std``."""
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise ApdError(f"expected an RGB image as a HxWx3 numpy array, got shape {shape}")
    if img.dtype != np.uint8:
        raise ApdError(f"expected a uint8 RGB image, got dtype {img.dtype}")
    return img


def fit_size(orig: tuple[int, int], size: tuple[int, int], mode: str) -> tuple[int, int]:
    """Size of the image content inside the network input."""
    h, w = orig
    H, W = size
    if mode == "resize":
        return H, W
    if mode != "pad":
        raise ApdError(f"unknown preprocess mode {mode!r} (expected pad or resize)")
    if h <= H and w <= W:
        return h, w
    s = min(H / h, W / w)
    return max(1, min(H, round(h * s))), max(1, min(W, round(w * s)))


def preprocess_image(img: np.ndarray, size: tuple[int, int], mean, std, mode: str = "pad",
                     pad_fill: str = "reflect") -> tuple[np.ndarray, PrepMeta]:
    """uint8 RGB HxWx3 -> (float32 1x3xHxW network input, PrepMeta)."""
    check_image(img)
    H, W = size
    orig = (img.shape[0], img.shape[1])
    vh, vw = fit_size(orig, (H, W), mode)
    if (vh, vw) != orig:
        img = cv2.resize(img, (vw, vh), interpolation=cv2.INTER_LINEAR)
    x = normalize(img, mean, std)
    if (vh, vw) != (H, W):
        ph, pw = H - vh, W - vw
        if pad_fill == "zero":
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
        elif pad_fill == "reflect":
            # reflect needs pad < size; tiny images fall back to edge replication (as the engine does)
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect" if ph < vh and pw < vw else "edge")
        else:
            raise ApdError(f"unknown pad_fill {pad_fill!r} (expected reflect or zero)")
    return x[None], PrepMeta(orig=orig, valid=(vh, vw), mode=mode)


def preprocess_from_manifest(img: np.ndarray, manifest: dict) -> tuple[np.ndarray, PrepMeta]:
    p = manifest["preprocess"]
    return preprocess_image(img, tuple(p["size"]), manifest["mean"], manifest["std"], p["mode"],
                            p.get("pad_fill", "reflect"))
