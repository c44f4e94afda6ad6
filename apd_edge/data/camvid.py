"""CamVid, 11-class SegNet layout: ``train/``+``trainannot/``, ``val/``+``valannot/``, ``test/``+``testannot/``.

``<split>.txt`` pair lists (``image mask`` per line, relative to the root or SegNet-style absolute
paths) are used when present; otherwise images and masks are paired by file name. Mask 11 is void.
"""

from __future__ import annotations

from .base import IMAGE_EXTS, SegDataset, identity_lut, list_files, read_pair_list
from .registry import register
from ..errors import ApdError

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                  [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
LAYOUT = "ROOT/<split>/*.png with ROOT/<split>annot/*.png (optional ROOT/<split>.txt listing 'image mask' pairs)"


@register("camvid")
class CamVid(SegDataset):
    OPTIONS: dict = {}

    def __init__(self, root, split, options=None) -> None:
        super().__init__(root, split, options)
        self.set_classes(CAMVID_CLASSES, CAMVID_PALETTE)
        self.lut = identity_lut(11, void_values=(11, 255))
        self.require_dir(self.root, LAYOUT)
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            self.samples = read_pair_list(list_file, self.root)
        else:
            img_dir = self.require_dir(self.root / split, LAYOUT)
            ann_dir = self.require_dir(self.root / f"{split}annot", LAYOUT)
            for img in list_files(img_dir, IMAGE_EXTS):
                mask = ann_dir / img.relative_to(img_dir).with_suffix(".png")
                if not mask.is_file():
                    raise ApdError(f"camvid: no mask for {img} (expected {mask})")
                self.samples.append((img, mask))
        self.require_nonempty(LAYOUT)
