"""Drawing: class colours blended over the frame, a legend box and an FPS / latency counter.

All functions work on RGB uint8 arrays. ``draw_legend`` and ``draw_hud`` return the rectangle they
painted (x0, y0, x1, y1; exclusive ends) so callers and tests know which pixels are not the overlay.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..data.palette import colorize, palette_array

Rect = tuple[int, int, int, int]
__all__ = ["blend", "colorize", "draw_hud", "draw_legend", "hud_text", "palette_array", "render"]


def blend(frame_rgb: np.ndarray, labels: np.ndarray, palette, alpha: float) -> np.ndarray:
    """``(1 - alpha) * frame + alpha * colour`` rounded to uint8; labels must match the frame size."""
    if labels.shape != frame_rgb.shape[:2]:
        labels = cv2.resize(labels.astype(np.uint8), (frame_rgb.shape[1], frame_rgb.shape[0]),
                            interpolation=cv2.INTER_NEAREST)
    color = colorize(labels, palette).astype(np.float32)
    out = frame_rgb.astype(np.float32) * (1.0 - alpha) + color * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _text_scale(h: int) -> tuple[float, int, int]:
    """Font scale, thickness and line height that stay legible from 64 px to 4K frames."""
    scale = max(0.3, min(1.2, h / 720.0))
    thick = 1 if scale < 0.8 else 2
    line = int(round(22 * scale)) + 4
    return scale, thick, line


def draw_legend(img: np.ndarray, classes: Sequence[str], palette, present: Sequence[int] | None = None,
                max_rows: int | None = None, max_width: float = 0.2) -> Rect | None:
    """Colour swatches with class names in the top-right corner (in place). Returns the box or None.

    The box stays within ``max_width`` of the frame width (at least 40 px): the text shrinks, then long
    names are shortened; a frame too small even for that gets no legend (None).

    ``present`` limits the legend to those class ids (e.g. classes visible in the frame); rows that do
    not fit the frame height are dropped.
    """
    h, w = img.shape[:2]
    ids = list(range(len(classes))) if present is None else [int(i) for i in present if 0 <= int(i) < len(classes)]
    # scaled to the frame: text sized by the smaller of height and 3/4 width, and the box kept within
    # max_width of the frame (smaller text first, then shortened names)
    scale, thick, line = _text_scale(min(h, int(w * 0.75)))
    rows = min(len(ids), max(0, (h - 8) // line), max_rows or len(ids))
    if rows == 0:
        return None
    ids = ids[:rows]
    names = {i: classes[i] for i in ids}
    limit = max(40, int(w * max_width))

    def box_width() -> int:
        tw = max(cv2.getTextSize(names[i], cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for i in ids)
        return (line - 6) + tw + 14

    while box_width() > limit and scale > 0.3:
        scale = max(0.3, scale - 0.05)
    while box_width() > limit and max(len(n) for n in names.values()) > 3:
        longest = max(names, key=lambda i: len(names[i]))
        names[longest] = names[longest][:-2] + "."
    if box_width() > limit:  # a frame too small for a readable legend gets none
        return None
    sw = line - 6
    box_w = box_width()
    x0, y0, x1, y1 = w - box_w, 0, w, min(h, rows * line + 8)
    region = img[y0:y1, x0:x1]
    region[:] = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken for contrast
    pal = palette_array(palette)
    for k, cid in enumerate(ids):
        y = y0 + 4 + k * line
        cv2.rectangle(img, (x0 + 4, y + 2), (x0 + 4 + sw, y + 2 + sw), tuple(int(c) for c in pal[cid]), -1)
        cv2.putText(img, names[cid], (x0 + sw + 9, y + sw), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thick, cv2.LINE_AA)
    return (x0, y0, x1, y1)


def draw_hud(img: np.ndarray, text: str) -> Rect:
    """A counter line (FPS, latency, dropped frames) on a dark strip at the top-left (in place)."""
    h, w = img.shape[:2]
    scale, thick, line = _text_scale(h)
    tw, th = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0]
    x1, y1 = min(w, tw + 10), min(h, line + 4)
    img[0:y1, 0:x1] = (img[0:y1, 0:x1].astype(np.uint16) * 2 // 5).astype(np.uint8)
    cv2.putText(img, text, (5, min(h - 1, th + 5)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return (0, 0, x1, y1)


def hud_text(fps: float, latency_ms: float, dropped: int | None = None) -> str:
    s = f"{fps:5.1f} FPS  {latency_ms:6.1f} ms"
    if dropped:
        s += f"  dropped {dropped}"
    return s


def render(frame_rgb: np.ndarray, labels: np.ndarray, palette, alpha: float, classes: Sequence[str] | None = None,
           hud: str | None = None, legend: bool = True) -> tuple[np.ndarray, list[Rect]]:
    """The full demo frame: blended overlay, optional legend (classes in view) and counter.

    Returns the image and the rectangles covered by text boxes.
    """
    out = blend(frame_rgb, labels, palette, alpha)
    boxes: list[Rect] = []
    if legend and classes:
        present = np.unique(labels)
        box = draw_legend(out, classes, palette, present=[int(i) for i in present if i < len(classes)])
        if box:
            boxes.append(box)
    if hud:
        boxes.append(draw_hud(out, hud))
    return out, boxes
