"""PASCAL-Context, the 59-class layout the segmentation community trains on (as prepared for mmsegmentation):

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClassContext/<id>.png      index masks 0..59, 0 = background
    ROOT/ImageSets/SegmentationContext/{train,val}.txt   one image id per line

ROOT may be ``VOC2010`` or a parent holding ``VOCdevkit/VOC2010``. With 59 classes background (0) is
void and the rest shift by -1 (the community's ``reduce_zero_label`` convention); 255 stays void.
"""

from __future__ import annotations

from ..errors import ApdError
from .base import SegDataset, shifted_lut
from .registry import register

CONTEXT59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
]
LAYOUT = ("ROOT/JPEGImages/<id>.jpg, ROOT/SegmentationClassContext/<id>.png and "
          "ROOT/ImageSets/SegmentationContext/<split>.txt (ROOT = VOC2010 or a parent with VOCdevkit/VOC2010)")


@register("pascal_context")
class PascalContext(SegDataset):
    OPTIONS: dict = {}

    def __init__(self, root, split, options=None) -> None:
        super().__init__(root, split, options)
        self.set_classes(CONTEXT59_CLASSES)
        self.lut = shifted_lut(59)
        self.require_dir(self.root, LAYOUT)
        base = self.root
        if (base / "VOCdevkit" / "VOC2010").is_dir():
            base = base / "VOCdevkit" / "VOC2010"
        img_dir = self.require_dir(base / "JPEGImages", LAYOUT)
        ann_dir = self.require_dir(base / "SegmentationClassContext", LAYOUT)
        list_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not list_file.is_file():
            raise ApdError(f"pascal_context: split list not found: {list_file} (expected layout: {LAYOUT})")
        for line in list_file.read_text().split():
            img = img_dir / f"{line}.jpg"
            if not img.is_file() and (img_dir / f"{line}.png").is_file():
                img = img_dir / f"{line}.png"
            self.samples.append((img, ann_dir / f"{line}.png"))
        self.require_nonempty(LAYOUT)
