"""A user's own dataset: images + index (or colour) masks + a classes file, laid out as configured.

    ROOT/classes.yaml (or .yml/.json, or ``options.classes_file``):
        names: [road, car, ...]            # required (a plain list of names also works)
        palette: [[128, 64, 128], ...]     # optional; required for mask_mode: rgb
        label_map: {7: road, 26: car}      # optional raw mask value -> class (name, index or void)
        unmapped: void                     # optional, with label_map: unlisted values are void (default error)

Where files are (``options``): images under ``ROOT/<img_dir>`` (default ``images``), masks under
``ROOT/<mask_dir>`` (default ``masks``); either may contain ``{split}`` (e.g. ``{split}/img``). An image
``<rel>/<stem><img_suffix>`` pairs with the mask ``<rel>/<stem><mask_suffix>`` (see ``layout.py``).

Splits, first match wins:
    1. ``{split}`` in img_dir/mask_dir (e.g. ``{split}/images``);
    2. ``ROOT/<split>.txt``: one ``image`` per line (relative to img_dir, extension optional) or
       ``image mask`` pairs relative to ROOT (then img_dir/mask_dir need not exist);
    3. ``<img_dir>/<split>/`` and ``<mask_dir>/<split>/`` subfolders (searched recursively);
    4. flat ``<img_dir>/``: every ``val_every``-th image (natural order) is ``val``, the rest ``train``.

Masks hold class indices (``mask_mode: index``; ``ignore_index`` and 255 are void) or colours mapped
through the palette (``mask_mode: rgb``; ``void_color`` is void, any other unknown colour is an error).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..config import IGNORE_INDEX
from ..errors import ApdError
from .base import IMAGE_EXTS, SegDataset
from .layout import check_subdir, check_suffix, find_classes_file, image_files, load_class_spec, mask_for
from .registry import register

LAYOUT = ("ROOT/classes.yaml + ROOT/images/<split>/ and ROOT/masks/<split>/, or ROOT/<split>.txt lists, "
          "or flat ROOT/images/ and ROOT/masks/ (folders and file suffixes: data.options img_dir, mask_dir, "
          "img_suffix, mask_suffix)")


def load_classes(path: Path) -> tuple[list[str], list[list[int]] | None]:
    """Read class names (and an optional palette) from a YAML or JSON file."""
    spec = load_class_spec(path)
    return spec.names, spec.palette


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@register("folder")
class Folder(SegDataset):
    OPTIONS: dict = {"classes_file": None, "ignore_index": IGNORE_INDEX, "mask_mode": "index", "void_color": None,
                     "val_every": 10, "img_dir": "images", "mask_dir": "masks", "img_suffix": None,
                     "mask_suffix": None}

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        opt = super().validate_options(options)
        if opt["mask_mode"] not in ("index", "rgb"):
            raise ApdError(f"data.options.mask_mode: '{opt['mask_mode']}' is not one of 'index', 'rgb'")
        if not 0 <= opt["ignore_index"] <= 255:
            raise ApdError(f"data.options.ignore_index: {opt['ignore_index']} is outside 0..255")
        if opt["val_every"] < 2:
            raise ApdError(f"data.options.val_every: {opt['val_every']} must be >= 2")
        vc = opt["void_color"]
        if vc is not None and not (isinstance(vc, list) and len(vc) == 3
                                   and all(isinstance(v, int) and 0 <= v <= 255 for v in vc)):
            raise ApdError(f"data.options.void_color: expected [r, g, b] (0..255), got {vc!r}")
        for key in ("img_dir", "mask_dir"):
            check_subdir(key, opt[key])
        for key in ("img_suffix", "mask_suffix"):
            check_suffix(key, opt[key])
        if opt["img_suffix"] is None and opt["img_dir"] == opt["mask_dir"]:
            raise ApdError("data.options.img_suffix is required when images and masks share a folder "
                           f"(img_dir = mask_dir = '{opt['img_dir']}'), e.g. img_suffix: _image.jpg")
        if (opt["img_suffix"] is not None and opt["img_suffix"] == opt["mask_suffix"]
                and opt["img_dir"] == opt["mask_dir"]):
            raise ApdError("data.options: img_suffix and mask_suffix are equal in one folder; images and masks "
                           "would be the same files")
        return opt

    def __init__(self, root, split, options=None) -> None:
        super().__init__(root, split, options)
        opt = self.options = self.validate_options(options or {})
        self.require_dir(self.root, LAYOUT)
        self.mask_mode = opt["mask_mode"]
        spec = load_class_spec(find_classes_file(self.root, opt["classes_file"], self.name))
        self.set_classes(spec.names, spec.palette)
        ignore = opt["ignore_index"]
        if ignore < self.num_classes:
            raise ApdError(f"data.options.ignore_index: {ignore!r} must be an integer in {self.num_classes}..255 "
                           f"(0..{self.num_classes - 1} are classes)")
        self.lut = spec.lut(void_values=(ignore, IGNORE_INDEX))
        if self.mask_mode == "rgb":
            if spec.palette is None:
                raise ApdError("data.options.mask_mode rgb needs a palette in the classes file")
            if spec.label_map is not None:
                raise ApdError(f"{spec.source}: label_map applies to index masks, not mask_mode rgb")
            self._setup_rgb(spec.palette, opt["void_color"])
        self.samples = self._find_samples()
        self.require_nonempty(LAYOUT)

    def _setup_rgb(self, palette: list, void_color) -> None:
        keys = _rgb_key(np.array(palette, np.int32))
        if len(set(keys.tolist())) != len(keys):
            raise ApdError("folder: palette colours must be distinct for mask_mode rgb")
        values = list(range(len(palette)))
        if void_color is not None:
            keys = np.append(keys, _rgb_key(np.array(void_color, np.int32)))
            values.append(IGNORE_INDEX)
        order = np.argsort(keys)
        self._rgb_keys, self._rgb_vals = keys[order], np.array(values, np.uint8)[order]

    def _dirs(self, split: str | None) -> tuple[Path, Path]:
        opt = self.options
        return (self.root / opt["img_dir"].format(split=split or ""),
                self.root / opt["mask_dir"].format(split=split or ""))

    def _pairs(self, img_dir: Path, mask_dir: Path, files: list[Path] | None = None) -> list[tuple[Path, Path | None]]:
        opt = self.options
        self.require_dir(mask_dir, LAYOUT)
        # with img_dir = mask_dir (e.g. x_image.jpg next to x_label.png) the suffix tells them apart
        files = image_files(img_dir, opt["img_suffix"]) if files is None else files
        return [(p, mask_for(p, img_dir, mask_dir, opt["img_suffix"], opt["mask_suffix"], self.name)) for p in files]

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        opt, split = self.options, self.split
        if "{split}" in opt["img_dir"] or "{split}" in opt["mask_dir"]:
            img_dir, mask_dir = self._dirs(split)
            if not img_dir.is_dir():
                raise ApdError(f"folder: split '{split}' not found: no {img_dir} (img_dir: {opt['img_dir']})")
            return self._pairs(img_dir, mask_dir)
        img_root, mask_root = self._dirs(None)
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            return self._read_list(list_file, img_root, mask_root)
        if (img_root / split).is_dir():
            return self._pairs(img_root / split, mask_root / split)
        self.require_dir(img_root, LAYOUT)
        subdirs = [d.name for d in img_root.iterdir() if d.is_dir()]
        if subdirs:
            raise ApdError(f"folder: split '{split}' not found: no {img_root / split} "
                           f"(found {', '.join(sorted(subdirs))}) "
                           f"and no {list_file}")
        if split not in ("train", "val"):
            raise ApdError(f"folder: split '{split}' needs {img_root / split}/ or {list_file} (a flat images/ "
                           f"folder only splits into train and val)")
        every = int(opt["val_every"])
        files = image_files(img_root, opt["img_suffix"])
        chosen = [p for k, p in enumerate(files) if (k % every == every - 1) == (split == "val")]
        return self._pairs(img_root, mask_root, chosen)

    def _read_list(self, list_file: Path, img_root: Path, mask_root: Path) -> list[tuple[Path, Path | None]]:
        opt = self.options
        pairs: list[tuple[Path, Path | None]] = []
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            parts = line.split()
            if len(parts) == 1:
                img = img_root / parts[0]
                if not img.is_file() and not opt["img_suffix"]:  # a bare stem: find its image
                    img = next((img.with_name(img.name + e) for e in IMAGE_EXTS
                                if img.with_name(img.name + e).is_file()), img)
                elif not img.is_file() and opt["img_suffix"]:
                    img = img.with_name(img.name + opt["img_suffix"])
                if not img.is_file():
                    raise ApdError(f"{list_file}:{n}: image not found: {img}")
                pairs.append((img, mask_for(img, img_root, mask_root, opt["img_suffix"], opt["mask_suffix"],
                                            self.name)))
            elif len(parts) == 2:
                pairs.append((self.root / parts[0], self.root / parts[1]))
            elif parts:
                raise ApdError(f"{list_file}:{n}: expected 'image' or 'image mask', got {line.strip()!r}")
        return pairs

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
