"""``apd-edge data init ROOT``: find how a folder of images and masks is laid out and write the ``folder``
options for it (plus a classes.yaml template when there is none), instead of renaming or symlinking files.

Masks are told from images by their PNG colour type (one channel or a palette; read from the 26-byte
header, no decoding); images are every other picture. Within each kind the folder is the common top folder
and the suffix the longest file-name ending they all share (from an ``_`` or ``.``). The result is checked
by building the dataset with it: a guess that does not pair every image is an error, not a recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ApdError
from .base import IMAGE_EXTS, read_mask_raw
from .layout import CLASS_FILES, natural_key

SPLIT_NAMES = ("train", "val", "test", "training", "validation")


def png_channels(path: Path) -> int | None:
    """Channels of a PNG from its IHDR colour type (1 for grey or palette), None when not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return {0: 1, 3: 1, 4: 2, 2: 3, 6: 4}.get(head[25])


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_EXTS and not name.startswith("."):
                out.append(p)
    return sorted(out, key=lambda p: natural_key(p.as_posix()))


def _common_suffix(names: list[str]) -> str | None:
    """The longest ending shared by all names that starts at '_' or '.' (e.g. '_label.png', '.jpg')."""
    first = names[0]
    for i in range(len(first)):
        if first[i] in "_." and i > 0:
            cand = first[i:]
            if all(n.endswith(cand) and len(n) > len(cand) for n in names):
                return cand
    return None


def _top_dir(rels: list[Path]) -> str:
    tops = {r.parts[0] if len(r.parts) > 1 else "" for r in rels}
    if len(tops) != 1 or "" in tops:
        return ""
    return tops.pop()


def detect_layout(root: str | Path) -> dict[str, Any]:
    """The ``folder`` options that read ``root`` (plus ``splits`` found and ``max_label`` seen in masks)."""
    root = Path(root)
    if not root.is_dir():
        raise ApdError(f"data init: folder not found: {root}")
    files = _files(root)
    masks = [p for p in files if png_channels(p) == 1]
    images = [p for p in files if p not in set(masks)]
    if not images or not masks:
        raise ApdError(f"data init: found {len(images)} images and {len(masks)} one-channel PNG masks under {root}; "
                       "need both (colour masks: write classes.yaml with a palette and use mask_mode: rgb)")
    img_rel = [p.relative_to(root) for p in images]
    mask_rel = [p.relative_to(root) for p in masks]
    img_dir, mask_dir = _top_dir(img_rel), _top_dir(mask_rel)
    if not img_dir or not mask_dir:
        raise ApdError(f"data init: images or masks are not under one top folder of {root} "
                       f"(images in {sorted({r.parts[0] for r in img_rel})[:4]}, masks in "
                       f"{sorted({r.parts[0] for r in mask_rel})[:4]}); set img_dir/mask_dir by hand")
    img_suffix = _common_suffix([p.name for p in images])
    mask_suffix = _common_suffix([p.name for p in masks])
    opts: dict[str, Any] = {"img_dir": img_dir, "mask_dir": mask_dir}
    if img_suffix and (img_suffix.startswith("_") or img_dir == mask_dir):
        opts["img_suffix"] = img_suffix
    elif img_dir == mask_dir:
        raise ApdError("data init: images and masks share a folder but have no common file-name ending")
    if mask_suffix and (mask_suffix.startswith("_") or "img_suffix" in opts):
        opts["mask_suffix"] = mask_suffix
    splits = sorted({r.parts[1] for r in img_rel if len(r.parts) > 2 and r.parts[1] in SPLIT_NAMES})
    sample = masks[:: max(1, len(masks) // 50)]  # up to ~50 masks for the label range
    values = set()
    for m in sample:
        values.update(np.unique(read_mask_raw(m)).tolist())
    labels = sorted(v for v in values if v != 255)
    return {"options": opts, "splits": splits, "max_label": labels[-1] if labels else None,
            "images": len(images), "masks": len(masks)}


def init_folder(root: str | Path, write_classes: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Detect the layout, write a classes.yaml template if none exists, check both splits; returns the
    detection and the lines to show (the recipe ``data:`` section first)."""
    import yaml

    from ..config import DataConfig
    from .registry import build_dataset

    root = Path(root)
    found = detect_layout(root)
    lines = []
    if not any((root / n).is_file() for n in CLASS_FILES):
        if found["max_label"] is None:
            raise ApdError("data init: the masks hold only void (255); cannot size a class list")
        n = int(found["max_label"]) + 1
        if write_classes:
            (root / "classes.yaml").write_text(
                f"# written by apd-edge data init: {n} classes seen in the masks (0..{n - 1}); rename them\n"
                + yaml.safe_dump({"names": [f"class_{i}" for i in range(n)]}, default_flow_style=None))
            lines.append(f"# wrote {root / 'classes.yaml'} with {n} placeholder names: rename them")
    data: dict[str, Any] = {"dataset": "folder", "root": str(root), "options": found["options"]}
    for key, name in (("train_split", "training"), ("val_split", "validation")):
        if name in found["splits"]:  # ADE20K-style split names
            data[key] = name
    splits = [data.get("train_split", "train"), data.get("val_split", "val")]
    counts = []
    for split in splits:
        ds = build_dataset(DataConfig(dataset="folder", root=str(root), options=found["options"]), split)
        counts.append(f"{split} {len(ds)}")
    data = {"data": data}
    lines = [yaml.safe_dump(data, sort_keys=False, default_flow_style=None).rstrip()] + lines
    lines.append(f"# pairs found: {', '.join(counts)} (of {found['images']} images, {found['masks']} masks)")
    return found, lines
