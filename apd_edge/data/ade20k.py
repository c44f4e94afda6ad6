"""ADE20K scene parsing (ADEChallengeData2016): ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png``. 150 classes; label 0 ("other") is void, the rest shift by -1.

ROOT may be the ``ADEChallengeData2016`` folder or its parent; splits ``train``/``val`` are aliases.
The palette is generated (the official colour table is not needed for training or scoring).
"""

from __future__ import annotations

from ..errors import ApdError
from .base import SegDataset, list_files, shifted_lut
from .registry import register

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
]
SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
LAYOUT = "ROOT[/ADEChallengeData2016]/images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"


@register("ade20k")
class ADE20K(SegDataset):
    OPTIONS: dict = {}

    def __init__(self, root, split, options=None) -> None:
        super().__init__(root, split, options)
        self.set_classes(ADE20K_CLASSES)
        self.lut = shifted_lut(150)
        self.require_dir(self.root, LAYOUT)
        base = self.root / "ADEChallengeData2016" if (self.root / "ADEChallengeData2016").is_dir() else self.root
        if split not in SPLITS:
            raise ApdError(f"ade20k: unknown split '{split}'; available: train, val (or training, validation)")
        img_dir = self.require_dir(base / "images" / SPLITS[split], LAYOUT)
        ann_dir = self.require_dir(base / "annotations" / SPLITS[split], LAYOUT)
        for img in list_files(img_dir, (".jpg", ".jpeg", ".png")):
            mask = ann_dir / img.relative_to(img_dir).with_suffix(".png")
            if not mask.is_file():
                raise ApdError(f"ade20k: no mask for {img} (expected {mask})")
            self.samples.append((img, mask))
        self.require_nonempty(LAYOUT)
