"""The dataset contract shared by every format: (RGB uint8 image, uint8 mask with void = 255).

Torch-free on purpose (numpy + OpenCV only): the ONNX runtime and the benchmark read datasets too.
A format subclass fills ``samples`` (image path, mask path) and a label lookup table; decoding,
size checks and label validation live here so every format reports bad files the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..config import IGNORE_INDEX
from ..errors import ApdError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")
INVALID = -1  # marks a raw mask value that no class or void maps from


def default_palette(n: int) -> list[list[int]]:
    """Distinct colours by bit interleaving (the PASCAL VOC scheme), for datasets without a palette."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i + 1  # skip black so class 0 stays visible
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def identity_lut(num_classes: int, void_values: Sequence[int] = (IGNORE_INDEX,), size: int = 256) -> np.ndarray:
    """A lookup table keeping 0..C-1, mapping ``void_values`` to 255 and flagging everything else."""
    lut = np.full(size, INVALID, np.int16)
    lut[:num_classes] = np.arange(num_classes)
    for v in void_values:
        lut[v] = IGNORE_INDEX
    return lut


def shifted_lut(num_classes: int) -> np.ndarray:
    """0 -> void, k -> k-1 for k in 1..C (``reduce_zero_label``), 255 stays void, anything else flagged."""
    lut = np.full(256, INVALID, np.int16)
    lut[0] = IGNORE_INDEX
    lut[1 : num_classes + 1] = np.arange(num_classes)
    lut[255] = IGNORE_INDEX
    return lut


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 HxWx3 (grey and alpha are converted)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ApdError(f"{'unreadable' if Path(path).is_file() else 'missing'} image: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask_raw(path: str | Path) -> np.ndarray:
    """Decode a mask file unchanged (index PNGs keep their values; 8- or 16-bit)."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ApdError(f"{'unreadable' if Path(path).is_file() else 'missing'} mask: {path}")
    if m.ndim == 3:
        # A colour-typed PNG whose channels are equal is still an index mask.
        if m.shape[2] >= 3 and np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 1], m[..., 2]):
            return m[..., 0]
        raise ApdError(f"mask is a colour image, expected one channel of class indices: {path}")
    return m


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: str | Path, num_classes: int) -> np.ndarray:
    """Map raw mask values through ``lut``; any value the table flags raises an error naming the file."""
    if raw.dtype != np.uint8:
        if raw.dtype.kind not in "ui":
            raise ApdError(f"mask has unsupported type {raw.dtype}: {path}")
        hi = int(raw.max()) if raw.size else 0
        if hi >= len(lut):
            raise ApdError(f"mask value {hi} outside classes 0..{num_classes - 1} (void {IGNORE_INDEX}): {path}")
    mapped = lut[raw]
    if (mapped == INVALID).any():
        bad = int(raw[mapped == INVALID].min())
        raise ApdError(f"mask value {bad} outside classes 0..{num_classes - 1} (void {IGNORE_INDEX}): {path}")
    return mapped.astype(np.uint8)


class SegDataset:
    """A split of a segmentation dataset: ``ds[i] -> (image RGB uint8 HxWx3, mask uint8 HxW, void 255)``."""

    name: str = ""
    #: accepted ``data.options`` keys and their defaults (unknown keys are rejected by build_dataset)
    OPTIONS: dict[str, Any] = {}

    def __init__(self, root: str | Path | None, split: str, options: dict[str, Any] | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.split = split
        self.options = {**self.OPTIONS, **(options or {})}
        self.samples: list[tuple[Path, Path | None]] = []
        self.num_classes: int = 0
        self.class_names: list[str] = []
        self.palette: list[list[int]] = []
        self.lut: np.ndarray | None = None  # raw mask value -> train id (INVALID = error)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Check ``data.options`` without touching any file (``recipe check`` calls this); returns them
        merged over the defaults. Formats extend it with their own value checks."""
        from ..errors import suggest

        for key in options:
            if key not in cls.OPTIONS:
                valid = ", ".join(sorted(cls.OPTIONS)) or "none"
                raise ApdError(f"unknown data.options key '{key}' for dataset '{cls.name}'"
                               f"{suggest(str(key), cls.OPTIONS)}; valid: {valid}")
        for key, value in options.items():
            default = cls.OPTIONS[key]
            if default is None or value is None and key in cls.NULLABLE:
                continue
            want = type(default)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                        list: "a list", dict: "a mapping"}.get(want, want.__name__)
                raise ApdError(f"data.options.{key}: expected {kind} for dataset '{cls.name}', got {value!r}")
        return {**cls.OPTIONS, **options}

    #: option keys whose default is not None but that also accept null
    NULLABLE: tuple[str, ...] = ()

    # -- the contract ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        img_path, mask_path = self.samples[i]
        img = read_image(img_path)
        if mask_path is None:  # unlabelled split (e.g. a test set): all void
            return img, np.full(img.shape[:2], IGNORE_INDEX, np.uint8)
        mask = self.load_mask(mask_path)
        if mask.shape[:2] != img.shape[:2]:
            raise ApdError(
                f"image and mask sizes differ (H x W): {img_path} is {img.shape[0]}x{img.shape[1]}, "
                f"{mask_path} is {mask.shape[0]}x{mask.shape[1]}"
            )
        return img, mask

    def paths(self, i: int) -> tuple[Path | str, Path | None]:
        return self.samples[i]

    # -- hooks for formats -----------------------------------------------------------------------

    def load_mask(self, path: Path) -> np.ndarray:
        """Read a mask and map it to train ids (void 255); formats override for colour masks."""
        assert self.lut is not None
        return apply_lut(read_mask_raw(path), self.lut, path, self.num_classes)

    # -- helpers -----------------------------------------------------------------------------------

    def set_classes(self, names: Sequence[str], palette: Sequence[Sequence[int]] | None = None) -> None:
        self.class_names = list(names)
        self.num_classes = len(self.class_names)
        self.palette = [list(map(int, c)) for c in palette] if palette else default_palette(self.num_classes)

    def require_dir(self, path: Path, layout: str) -> Path:
        if not path.is_dir():
            raise ApdError(f"{self.name}: folder not found: {path} (expected layout: {layout})")
        return path

    def require_nonempty(self, layout: str) -> None:
        if not self.samples:
            raise ApdError(f"{self.name}: split '{self.split}' is empty under {self.root} (expected layout: {layout})")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, classes={self.num_classes}, "
                f"root={self.root})")


def list_files(folder: Path, exts: Sequence[str]) -> list[Path]:
    """Sorted files under ``folder`` (recursively) with one of ``exts``."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())


def read_pair_list(list_file: Path, root: Path) -> list[tuple[Path, Path | None]]:
    """Read ``image [mask]`` lines; absolute paths from foreign machines resolve by their last two parts."""
    pairs: list[tuple[Path, Path | None]] = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2:
            raise ApdError(f"{list_file}:{n}: expected 'image [mask]', got {line.strip()!r}")
        resolved = [_resolve_listed(p, root) for p in parts]
        pairs.append((resolved[0], resolved[1] if len(resolved) > 1 else None))
    return pairs


def _resolve_listed(entry: str, root: Path) -> Path:
    p = Path(entry)
    if p.is_absolute():
        if p.exists():
            return p
        p = Path(*p.parts[-2:])  # e.g. /SegNet/CamVid/train/x.png -> train/x.png
    return root / p
