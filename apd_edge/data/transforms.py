"""Joint image/mask transforms in OpenCV + numpy (no torch: they run in loader workers and the runtime).

Train: random scale, optional rotation, random crop (padding with the mean colour, i.e. 0 after
normalising, and 255 in the mask) and horizontal flip, composed into ONE affine warp applied to image
(linear) and mask (nearest) alike; then photometric jitter as one 3x4 colour map, optional blur, normalise.
Eval: normalise only (the engine pads to a multiple of 32 and crops back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..config import IGNORE_INDEX, AugmentConfig


def normalize_image(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xHxW, ``(img / 255 - mean) / std``."""
    std = np.asarray(std, np.float32)
    scale = (np.float32(1 / 255) / std)[:, None, None]
    shift = (np.asarray(mean, np.float32) / std)[:, None, None]
    out = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32)  # transpose bytes, not floats
    out *= scale
    out -= shift
    return out


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
_YIQ_INV = np.linalg.inv(_YIQ)
_GREY = np.array([0.299, 0.587, 0.114], np.float64)


def colour_matrix(brightness: float, contrast: float, saturation: float, hue: float, mean: float) -> np.ndarray:
    """The 3x4 affine colour map of brightness * contrast (about the image mean) * saturation * hue (radians)."""
    sat = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _GREY)
    c, s = np.cos(hue), np.sin(hue)
    rot = _YIQ_INV @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ _YIQ
    m = contrast * brightness * (sat @ rot)
    # contrast pulls toward the (brightened) mean; sat and rot keep grey values grey, so the offset is grey
    offset = (1 - contrast) * brightness * mean * np.ones(3)
    return np.hstack([m, offset[:, None]])


def _mean_fill(mean: Sequence[float]) -> tuple[float, float, float]:
    return tuple(float(m * 255) for m in mean)


@dataclass
class Geometry:
    """The random geometric parameters of one sample (exposed for tests)."""

    scale: float
    angle: float
    top: int
    left: int
    flip: bool


class TrainTransform:
    """Random scale/rotate/crop/flip/jitter/blur, then normalise; call with a numpy Generator."""

    def __init__(self, crop: Sequence[int], augment: AugmentConfig, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.crop = (int(crop[0]), int(crop[1]))
        self.aug = augment
        self.mean, self.std = list(mean), list(std)
        self.fill = _mean_fill(mean)

    def geometry(self, img: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Geometry]:
        """Scale, rotate, crop (padding where the image is smaller) and flip in one affine warp per array."""
        lo, hi = self.aug.scale
        s = float(rng.uniform(lo, hi))
        h, w = mask.shape
        nh, nw = h * s, w * s
        angle = float(rng.uniform(-self.aug.rotate, self.aug.rotate)) if self.aug.rotate > 0 else 0.0
        ch, cw = self.crop
        top = int(rng.integers(min(0, round(nh) - ch), max(0, round(nh) - ch) + 1))
        left = int(rng.integers(min(0, round(nw) - cw), max(0, round(nw) - cw) + 1))
        flip = bool(self.aug.flip and rng.random() < 0.5)
        # pixel-centre convention of cv2.resize: scaled x' = s * (x + 0.5) - 0.5
        m = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1]])
        if angle:
            r = cv2.getRotationMatrix2D(((nw - 1) / 2, (nh - 1) / 2), angle, 1.0)
            m = np.vstack([r, [0, 0, 1]]) @ m
        m = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]]) @ m
        if flip:
            m = np.array([[-1, 0, cw - 1], [0, 1, 0], [0, 0, 1]]) @ m
        m = m[:2]
        img = cv2.warpAffine(img, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=self.fill)
        mask = cv2.warpAffine(mask, m, (cw, ch), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=IGNORE_INDEX)
        return img, mask, Geometry(s, angle, top, left, flip)

    def photometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast, saturation and hue jitter of strength ``augment.jitter``; optional blur."""
        j = self.aug.jitter
        if j > 0:  # brightness, contrast, saturation and hue (up to 0.1 turn at j = 1) in one colour map
            b, c, sat = (float(rng.uniform(1 - j, 1 + j)) for _ in range(3))
            hue = float(rng.uniform(-j, j)) * 0.1 * 2 * np.pi
            mean = float(np.mean(cv2.mean(img)[:3]))
            img = cv2.transform(img, colour_matrix(b, c, sat, hue, mean))  # saturates to 0..255
        if self.aug.blur > 0 and rng.random() < self.aug.blur:
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(0.1, 2.0)))
        return img

    def __call__(self, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        img, mask, _ = self.geometry(img, mask, rng)
        img = self.photometric(img, rng)
        return normalize_image(img, self.mean, self.std), mask.astype(np.int64)


class EvalTransform:
    """Normalise only; the mask is returned as int64 with void 255."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None):
        return normalize_image(img, self.mean, self.std), mask.astype(np.int64)
