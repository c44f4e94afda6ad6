"""A user's own folder of images and masks.

    ROOT/classes.yaml (or .yml/.json, or ``options.classes_file``):
        names: [road, car, ...]            # required (a plain list of names also works)
        palette: [[128, 64, 128], ...]     # optional; required for mask_mode: rgb
    ROOT/images/...  and  ROOT/masks/...   # a mask has its image's relative path with a .png/.bmp/.tif suffix

Splits, first match wins:
    1. ``images/<split>/`` and ``masks/<split>/`` subfolders (what ``apd-edge data synth`` writes);
    2. ``ROOT/<split>.txt`` listing image paths relative to ``images/`` (or ``image mask`` pairs relative to ROOT);
    3. flat ``images/``: every ``val_every``-th image (sorted by name) is ``val``, the rest ``train``.

Masks hold class indices (``mask_mode: index``; ``ignore_index`` and 255 are void) or colours mapped
through the palette (``mask_mode: rgb``; ``void_color`` is void, any other unknown colour is an error).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..config import IGNORE_INDEX
from ..errors import ApdError
from .base import IMAGE_EXTS, MASK_EXTS, SegDataset, identity_lut, list_files
from .registry import register

LAYOUT = ("ROOT/classes.yaml + ROOT/images/<split>/ and ROOT/masks/<split>/, or ROOT/<split>.txt lists, "
          "or flat ROOT/images/ and ROOT/masks/")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")


def load_classes(path: Path) -> tuple[list[str], list[list[int]] | None]:
    """Read class names (and an optional palette) from a YAML or JSON file."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ApdError(f"cannot read classes file {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(data, list):
        data = {"names": data}
    if not isinstance(data, dict) or not isinstance(data.get("names"), list) or not data["names"]:
        raise ApdError(f"{path}: expected 'names: [class, ...]' (and optional 'palette: [[r, g, b], ...]')")
    names = [str(n) for n in data["names"]]
    palette = data.get("palette")
    if palette is not None:
        ok = isinstance(palette, list) and len(palette) == len(names) and all(
            isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette
        )
        if not ok:
            raise ApdError(f"{path}: palette must list one [r, g, b] (0..255) per class ({len(names)} classes)")
    return names, palette


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@register("folder")
class Folder(SegDataset):
    OPTIONS: dict = {"classes_file": None, "ignore_index": IGNORE_INDEX, "mask_mode": "index", "void_color": None,
                     "val_every": 10}

    def __init__(self, root, split, options=None) -> None:
        super().__init__(root, split, options)
        opt = self.options
        self.require_dir(self.root, LAYOUT)
        self.mask_mode = opt["mask_mode"]
        if self.mask_mode not in ("index", "rgb"):
            raise ApdError(f"data.options.mask_mode: '{self.mask_mode}' is not one of 'index', 'rgb'")
        names, palette = load_classes(self._classes_file())
        self.set_classes(names, palette)
        ignore = opt["ignore_index"]
        if not isinstance(ignore, int) or not 0 <= ignore <= 255 or ignore < self.num_classes:
            raise ApdError(f"data.options.ignore_index: {ignore!r} must be an integer in {self.num_classes}..255 "
                           f"(0..{self.num_classes - 1} are classes)")
        self.lut = identity_lut(self.num_classes, void_values=(ignore, IGNORE_INDEX))
        if self.mask_mode == "rgb":
            if palette is None:
                raise ApdError("data.options.mask_mode rgb needs a palette in the classes file")
            self._setup_rgb(palette, opt["void_color"])
        self.samples = self._find_samples()
        self.require_nonempty(LAYOUT)

    def _classes_file(self) -> Path:
        if self.options["classes_file"]:
            path = Path(self.options["classes_file"])
            path = path if path.is_absolute() else self.root / path
            if not path.is_file():
                raise ApdError(f"folder: classes file not found: {path}")
            return path
        for name in CLASS_FILES:
            if (self.root / name).is_file():
                return self.root / name
        raise ApdError(f"folder: no classes file in {self.root} (expected one of {', '.join(CLASS_FILES)}; layout: {LAYOUT})")

    def _setup_rgb(self, palette: list, void_color) -> None:
        keys = _rgb_key(np.array(palette, np.int32))
        if len(set(keys.tolist())) != len(keys):
            raise ApdError("folder: palette colours must be distinct for mask_mode rgb")
        values = list(range(len(palette)))
        if void_color is not None:
            if not (isinstance(void_color, list) and len(void_color) == 3):
                raise ApdError(f"data.options.void_color: expected [r, g, b], got {void_color!r}")
            keys = np.append(keys, _rgb_key(np.array(void_color, np.int32)))
            values.append(IGNORE_INDEX)
        order = np.argsort(keys)
        self._rgb_keys, self._rgb_vals = keys[order], np.array(values, np.uint8)[order]

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        img_root = self.require_dir(self.root / "images", LAYOUT)
        mask_root = self.require_dir(self.root / "masks", LAYOUT)
        split = self.split
        if (img_root / split).is_dir():
            return [(p, self._mask_for(p, img_root / split, mask_root / split))
                    for p in list_files(img_root / split, IMAGE_EXTS)]
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            pairs = []
            for line in list_file.read_text().splitlines():
                parts = line.split()
                if len(parts) == 1:
                    img = img_root / parts[0]
                    if not img.suffix:  # a bare stem: find its image
                        img = next((img.with_suffix(e) for e in IMAGE_EXTS if img.with_suffix(e).is_file()),
                                   img.with_suffix(".png"))
                    pairs.append((img, self._mask_for(img, img_root, mask_root)))
                elif len(parts) == 2:
                    pairs.append((self.root / parts[0], self.root / parts[1]))
                elif parts:
                    raise ApdError(f"{list_file}: line {line.strip()!r}: expected 'image' or 'image mask'")
            return pairs
        subdirs = [d.name for d in img_root.iterdir() if d.is_dir()]
        if subdirs:
            raise ApdError(f"folder: split '{split}' not found: no {img_root / split} (found {', '.join(sorted(subdirs))}) "
                           f"and no {list_file}")
        if split not in ("train", "val"):
            raise ApdError(f"folder: split '{split}' needs {img_root / split}/ or {list_file} (a flat images/ "
                           f"folder only splits into train and val)")
        every = int(self.options["val_every"])
        files = list_files(img_root, IMAGE_EXTS)
        chosen = [p for k, p in enumerate(files) if (k % every == every - 1) == (split == "val")]
        return [(p, self._mask_for(p, img_root, mask_root)) for p in chosen]

    @staticmethod
    def _mask_for(img: Path, img_dir: Path, mask_dir: Path) -> Path:
        rel = img.relative_to(img_dir).with_suffix("")
        for ext in MASK_EXTS:
            cand = mask_dir / rel.with_suffix(ext)
            if cand.is_file():
                return cand
        raise ApdError(f"folder: no mask for {img} (expected {mask_dir / rel.with_suffix('.png')})")

    def load_mask(self, path: Path) -> np.ndarray:
        if self.mask_mode == "index":
            return super().load_mask(path)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ApdError(f"{'unreadable' if Path(path).is_file() else 'missing'} mask: {path}")
        keys = _rgb_key(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        idx = np.clip(np.searchsorted(self._rgb_keys, keys), 0, len(self._rgb_keys) - 1)
        found = self._rgb_keys[idx] == keys
        if not found.all():
            k = int(keys[~found][0])
            raise ApdError(f"mask colour ({k >> 16}, {(k >> 8) & 255}, {k & 255}) is not in the palette "
                           f"(and not void_color): {path}")
        return self._rgb_vals[idx]
