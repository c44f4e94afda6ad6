"""Layout helpers shared by the configurable formats (``folder``, ``cityscapes``): class files with an
optional label map, and pairing images with masks by folder + file-name suffix.

Pairing rule: an image ``IMG_DIR/<rel>/<stem><img_suffix>`` goes with ``MASK_DIR/<rel>/<stem><mask_suffix>``
(mmsegmentation's ``img_suffix`` / ``seg_map_suffix``). Without ``img_suffix`` every image file counts and
the stem is the name without its extension; without ``mask_suffix`` the mask is ``<stem>.png/.bmp/.tif``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..config import IGNORE_INDEX
from ..errors import ApdError, suggest
from .base import IMAGE_EXTS, INVALID, MASK_EXTS

CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")
CLASSES_FORMAT = ("names: [class, ...] (required), palette: [[r, g, b], ...] (optional), "
                  "label_map: {raw value: class name | index | void} (optional), unmapped: error | void (optional)")


def natural_key(text: str) -> list:
    """Sort key that orders frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


class ClassSpec:
    """What a classes file says: names, optional palette, optional raw-value -> class-index mapping."""

    def __init__(self, names: list[str], palette: list[list[int]] | None = None,
                 label_map: dict[int, int] | None = None, unmapped: str = "error", source: str = "") -> None:
        (self.names, self.palette, self.label_map,
         self.unmapped, self.source) = names, palette, label_map, unmapped, source

    def lut(self, void_values: Sequence[int] = (IGNORE_INDEX,), size: int = 256) -> np.ndarray:
        """Raw mask value -> class index (255 void, INVALID = error). Without a label map: identity."""
        if self.label_map:
            size = max(size, max(self.label_map) + 1)  # 16-bit masks may map values above 255
        lut = np.full(size, INVALID, np.int16)
        if self.label_map is None:
            lut[: len(self.names)] = np.arange(len(self.names))
        else:
            if self.unmapped == "void":
                lut[:] = IGNORE_INDEX
            for raw, idx in self.label_map.items():
                if raw < size:
                    lut[raw] = idx
        for v in void_values:
            if self.label_map is None or v not in self.label_map:
                lut[v] = IGNORE_INDEX
        return lut


def _fail(path: Path, msg: str) -> ApdError:
    return ApdError(f"{path}: {msg} (format: {CLASSES_FORMAT})")


def load_class_spec(path: Path) -> ClassSpec:
    """Read a classes file (YAML or JSON; a plain list of names also works)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ApdError(f"cannot read classes file {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(data, list):
        data = {"names": data}
    if not isinstance(data, dict) or not isinstance(data.get("names"), list) or not data["names"]:
        raise _fail(path, "expected 'names: [class, ...]'")
    known = ("names", "palette", "label_map", "unmapped")
    for key in sorted(set(map(str, data)) - set(known)):  # free-form keys (source, notes) are fine; typos are not
        hint = suggest(key, known)
        if hint:
            raise _fail(path, f"unknown key '{key}'{hint}")
    names = [str(n) for n in data["names"]]
    if len(set(names)) != len(names):
        raise _fail(path, "class names must be distinct")
    if len(names) > 255:
        raise _fail(path, f"{len(names)} classes; at most 255 (255 is void)")
    palette = data.get("palette")
    if palette is not None:
        ok = isinstance(palette, list) and len(palette) == len(names) and all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette
        )
        if not ok:
            raise _fail(path, f"palette must list one [r, g, b] (0..255) per class ({len(names)} classes)")
        palette = [list(c) for c in palette]
    unmapped = data.get("unmapped", "error")
    if unmapped not in ("error", "void"):
        raise _fail(path, f"unmapped: {unmapped!r} is not 'error' or 'void'")
    label_map = None
    if data.get("label_map") is not None:
        raw_map = data["label_map"]
        if not isinstance(raw_map, dict) or not raw_map:
            raise _fail(path, "label_map must be a mapping {raw value: class}")
        label_map = {}
        for raw, target in raw_map.items():
            try:
                raw_i = int(raw)
            except (TypeError, ValueError):
                raise _fail(path, f"label_map key {raw!r} is not an integer mask value") from None
            if not 0 <= raw_i <= 65535:
                raise _fail(path, f"label_map key {raw_i} is outside 0..65535")
            if target in ("void", "ignore", None) or target == IGNORE_INDEX:
                label_map[raw_i] = IGNORE_INDEX
            elif isinstance(target, bool):
                raise _fail(path, f"label_map {raw_i}: {target!r} is not a class")
            elif isinstance(target, int) and 0 <= target < len(names):
                label_map[raw_i] = target
            elif isinstance(target, str) and target in names:
                label_map[raw_i] = names.index(target)
            else:
                raise _fail(path, f"label_map {raw_i}: {target!r} is not a class name, an index 0..{len(names) - 1} "
                                  f"or void")
    elif "unmapped" in data:
        raise _fail(path, "'unmapped' only applies with a label_map")
    return ClassSpec(names, palette, label_map, unmapped, str(path))


def find_classes_file(root: Path, option: str | None, dataset: str) -> Path:
    """``option`` (relative to ROOT or absolute) or the first of CLASS_FILES in ROOT."""
    if option:
        path = Path(option)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise ApdError(f"{dataset}: classes file not found: {path}")
        return path
    for name in CLASS_FILES:
        if (root / name).is_file():
            return root / name
    raise ApdError(f"{dataset}: no classes file in {root} (write {root / 'classes.yaml'} with {CLASSES_FORMAT}, "
                   f"or set data.options.classes_file)")


def image_files(folder: Path, img_suffix: str | None) -> list[Path]:
    """Images under ``folder`` (recursively), in natural order; with ``img_suffix`` only names ending in it."""
    out = []
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        if img_suffix:
            if p.name.endswith(img_suffix):
                out.append(p)
        elif p.suffix.lower() in IMAGE_EXTS:
            out.append(p)
    return sorted(out, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def stem_of(img: Path, img_dir: Path, img_suffix: str | None) -> Path:
    """The image's path relative to ``img_dir`` without its suffix (the key shared with its mask)."""
    rel = img.relative_to(img_dir)
    if img_suffix:
        return rel.with_name(rel.name[: -len(img_suffix)])
    return rel.with_suffix("")


def mask_for(img: Path, img_dir: Path, mask_dir: Path, img_suffix: str | None, mask_suffix: str | None,
             dataset: str) -> Path:
    """The mask paired with ``img`` (see the module docstring); an error names the expected path."""
    key = stem_of(img, img_dir, img_suffix)
    if mask_suffix:
        cand = mask_dir / key.parent / (key.name + mask_suffix)
        if cand.is_file():
            return cand
        raise ApdError(f"{dataset}: no mask for {img} (expected {cand})")
    for ext in MASK_EXTS:
        cand = mask_dir / key.parent / (key.name + ext)
        if cand.is_file():
            return cand
    raise ApdError(f"{dataset}: no mask for {img} (expected {mask_dir / key.parent / (key.name + '.png')}; "
                   f"set data.options.mask_suffix if masks are named differently)")


def check_suffix(key: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value or "/" in value):
        raise ApdError(f"data.options.{key}: expected a file-name ending such as '_label.png', got {value!r}")


def check_subdir(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts:
        raise ApdError(f"data.options.{key}: expected a folder relative to data.root (may contain {{split}}), "
                       f"got {value!r}")
