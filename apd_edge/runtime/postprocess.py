"""Postprocessing: network output at input size -> labels / logits on the original image. Torch-free."""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import PrepMeta


def _single(a: np.ndarray, ndim: int) -> np.ndarray:
    """Drop a batch axis of size 1 (N,...) -> (...)."""
    return a[0] if a.ndim == ndim + 1 else a


def restore_logits(logits: np.ndarray, meta: PrepMeta) -> np.ndarray:
    """CxHxW (or 1xCxHxW) logits at input size -> float32 CxH0xW0 on the original image (bilinear)."""
    x = _single(np.asarray(logits), 3)
    vh, vw = meta.valid
    x = x[:, :vh, :vw].astype(np.float32, copy=False)
    h0, w0 = meta.orig
    if (vh, vw) == (h0, w0):
        return np.ascontiguousarray(x)
    hwc = cv2.resize(np.ascontiguousarray(x.transpose(1, 2, 0)), (w0, h0), interpolation=cv2.INTER_LINEAR)
    if hwc.ndim == 2:  # a single class comes back without its channel axis
        hwc = hwc[:, :, None]
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def restore_labels(labels: np.ndarray, meta: PrepMeta) -> np.ndarray:
    """HxW (or 1xHxW) label map at input size -> uint8/int32 H0xW0 on the original image (nearest)."""
    y = _single(np.asarray(labels), 2)
    vh, vw = meta.valid
    y = y[:vh, :vw]
    y = y.astype(np.uint8 if y.max(initial=0) < 256 else np.int32, copy=False)
    h0, w0 = meta.orig
    if (vh, vw) != (h0, w0):
        y = cv2.resize(y, (w0, h0), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(y)


def logits_to_labels(logits: np.ndarray, meta: PrepMeta) -> np.ndarray:
    """Argmax at network resolution, then crop / nearest-resize back (cheap; exact in pad mode)."""
    x = _single(np.asarray(logits), 3)
    return restore_labels(np.argmax(x, axis=0), meta)


def postprocess(raw: np.ndarray, meta: PrepMeta, kind: str) -> np.ndarray:
    """Raw network output of ``kind`` ('logits' or 'labels') -> label map on the original image."""
    return logits_to_labels(raw, meta) if kind == "logits" else restore_labels(raw, meta)
