"""``eval --save-vis``: one PNG per scored image, named after its source frame, with titled panels
(image | ground truth | prediction) and a legend of the classes that appear in either map."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..data.palette import palette_array

SEP = 4  # white pixels between panels


def vis_name(source: str | Path | None, root: str | Path | None, fallback: int) -> str:
    """``seq01/frame_000012_image.jpg`` under root -> ``seq01__frame_000012_image.png``; else the index."""
    if source is None:
        return f"{fallback:05d}.png"
    p = Path(source)
    try:
        rel = p.relative_to(root) if root is not None else Path(p.name)
    except ValueError:
        rel = Path(p.name)
    parts = [s for s in rel.with_suffix("").parts if s not in ("", ".", "..")]
    return ("__".join(parts) or f"{fallback:05d}") + ".png"


def _font(width: int) -> tuple[float, int, int]:
    """Font scale, thickness and line height for a panel ``width`` pixels wide (legible from 64 px up)."""
    scale = max(0.3, min(0.9, width / 640.0))
    thick = 1 if scale < 0.7 else 2
    return scale, thick, int(round(24 * scale)) + 6


def title_band(text: str, width: int) -> np.ndarray:
    scale, thick, line = _font(width)
    band = np.full((line, width, 3), 32, np.uint8)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    while tw > width - 6 and len(text) > 4:  # a long file name is shortened from the left
        text = "..." + text[4:]
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.putText(band, text, (3, (line + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return band


def legend_strip(ids: Sequence[int], names: Sequence[str], palette, width: int, unit: int) -> np.ndarray:
    """Swatch + name for each class id, wrapped over as many lines as ``width`` needs."""
    scale, thick, line = _font(unit)
    pal = palette_array(palette)
    sw = line - 8
    items = []
    for i in ids:
        label = names[i] if 0 <= i < len(names) else ("void" if i == 255 else str(i))
        items.append((i, label, sw + 6 + cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] + 14))
    rows: list[list[tuple[int, str, int]]] = [[]]
    used = 4
    for item in items:
        if rows[-1] and used + item[2] > width:
            rows.append([])
            used = 4
        rows[-1].append(item)
        used += item[2]
    strip = np.full((line * len(rows) + 4, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x, y = 4, 2 + r * line
        for cid, label, w in row:
            color = tuple(int(c) for c in pal[cid])  # void (255) is black, as drawn
            cv2.rectangle(strip, (x, y + 4), (x + sw, y + 4 + sw), color, -1)
            cv2.rectangle(strip, (x, y + 4), (x + sw, y + 4 + sw), (0, 0, 0), 1)
            cv2.putText(strip, label, (x + sw + 6, y + 4 + sw), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                        cv2.LINE_AA)
            x += w
    return strip


def compose(rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, names: Sequence[str], palette,
            title: str = "") -> np.ndarray:
    """The full picture: titles over image | ground truth | prediction, legend below (RGB uint8)."""
    h, w = rgb.shape[:2]
    pal = palette_array(palette)
    panels = [rgb, pal[gt], pal[pred]]
    sep = np.full((h, SEP, 3), 255, np.uint8)
    row = np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=1)
    titles = [title or "image", "ground truth (black: void)", "prediction"]
    bands = [title_band(t, w) for t in titles]
    bh = bands[0].shape[0]
    white = np.full((bh, SEP, 3), 255, np.uint8)
    head = np.concatenate([bands[0], white, bands[1], white, bands[2]], axis=1)
    ids = sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist()))
    ids = [i for i in ids if i < len(names)] + ([255] if 255 in ids else [])
    legend = legend_strip(ids, names, palette, row.shape[1], w) if ids else None
    parts = [head, row] + ([legend] if legend is not None else [])
    return np.concatenate(parts, axis=0)


class VisWriter:
    """Writes one composed PNG per image, named after its source frame (``sources`` in loader order)."""

    def __init__(self, out_dir: str | Path, palette, mean, std, names: Sequence[str] = (),
                 sources: Sequence[str | Path | None] | None = None, root: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.palette, self.mean, self.std, self.names = palette, mean, std, list(names)
        self.sources, self.root = list(sources) if sources is not None else None, root
        self.count = 0
        self.written: list[Path] = []
        self._used: set[str] = set()

    def _file(self, i: int) -> Path:
        src = self.sources[i] if self.sources is not None and i < len(self.sources) else None
        name = vis_name(src, self.root, i)
        stem, k = name[:-4], 2
        while name in self._used:  # the same frame name in two folders outside root
            name, k = f"{stem}-{k}.png", k + 1
        self._used.add(name)
        return self.out_dir / name

    def __call__(self, images, labels, preds) -> None:
        from .evaluate import denormalize

        for img, lab, pred in zip(images, labels, preds):
            rgb = denormalize(img, self.mean, self.std)
            gt, pr = lab.cpu().numpy(), pred.cpu().numpy()
            h, w = rgb.shape[:2]
            if gt.shape != (h, w):  # the loader padded: keep the labelled area
                gt = gt[:h, :w]
            path = self._file(self.count)
            src = self.sources[self.count] if self.sources is not None and self.count < len(self.sources) else None
            title = Path(src).name if src is not None else "image"
            out = compose(rgb, gt.astype(np.intp), pr.astype(np.intp), self.names, self.palette, title)
            cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
            self.written.append(path)
            self.count += 1


__all__ = ["VisWriter", "compose", "vis_name"]
