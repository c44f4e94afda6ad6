"""Cityscapes as distributed: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/<split>/<city>/``,
and any dataset laid out like it.

Uses ``*_gtFine_labelTrainIds.png`` when present, else maps ``*_gtFine_labelIds.png`` on the fly with the
official labelId -> trainId table (19 classes, everything else void).

Options make it a generic Cityscapes-style reader: ``img_dir``/``mask_dir`` (the two top folders),
``img_suffix``/``mask_suffix`` (file-name endings, e.g. ``_image.jpg`` / ``_label.png``) and
``classes_file`` (its own class list and optional ``label_map``, the ``folder`` format's classes file).
With a classes file the masks hold class indices (or values mapped by its ``label_map``), 255 void.
"""

from __future__ import annotations

import numpy as np

from ..config import IGNORE_INDEX
from ..errors import ApdError
from .base import INVALID, SegDataset, apply_lut, identity_lut, read_mask_raw
from .layout import check_subdir, check_suffix, find_classes_file, image_files, load_class_spec, mask_for
from .registry import register

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]
CITYSCAPES_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                      [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                      [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                      [0, 80, 100], [0, 0, 230], [119, 11, 32]]
# official labelId -> trainId (cityscapesScripts labels.py); ids 0..33 not listed are void
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LAYOUT = "ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png and ROOT/gtFine/<split>/<city>/*_gtFine_labelIds.png"


def label_id_lut() -> np.ndarray:
    lut = np.full(256, INVALID, np.int16)
    lut[:34] = IGNORE_INDEX
    lut[255] = IGNORE_INDEX  # license plate (id -1) as stored in 8-bit PNGs
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


@register("cityscapes")
class Cityscapes(SegDataset):
    OPTIONS: dict = {"img_dir": "leftImg8bit", "mask_dir": "gtFine", "img_suffix": "_leftImg8bit.png",
                     "mask_suffix": None, "classes_file": None}

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        opt = super().validate_options(options)
        for key in ("img_dir", "mask_dir"):
            check_subdir(key, opt[key])
        for key in ("img_suffix", "mask_suffix"):
            check_suffix(key, opt[key])
        if opt["img_suffix"] is None:
            raise ApdError("data.options.img_suffix: cityscapes needs the image file ending, e.g. _leftImg8bit.png")
        return opt

    def __init__(self, root, split, options=None) -> None:
        super().__init__(root, split, options)
        opt = self.options = self.validate_options(options or {})
        layout = (f"ROOT/{opt['img_dir']}/<split>/<city>/*{opt['img_suffix']} and "
                  f"ROOT/{opt['mask_dir']}/<split>/<city>/*{opt['mask_suffix'] or '_gtFine_labelIds.png'}")
        self.require_dir(self.root, layout)
        img_dir = self.require_dir(self.root / opt["img_dir"] / split, layout)
        gt_dir = self.require_dir(self.root / opt["mask_dir"] / split, layout)
        self._train_ids: set = set()
        if opt["classes_file"]:
            spec = load_class_spec(find_classes_file(self.root, opt["classes_file"], self.name))
            self.set_classes(spec.names, spec.palette)
            self._lut_ids = self._lut_train = spec.lut()
        else:
            self.set_classes(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
            self._lut_ids, self._lut_train = label_id_lut(), identity_lut(19)
        suffix = opt["mask_suffix"]
        for img in image_files(img_dir, opt["img_suffix"]):
            if suffix or opt["classes_file"]:
                mask = mask_for(img, img_dir, gt_dir, opt["img_suffix"], suffix or "_gtFine_labelIds.png", self.name)
                self.samples.append((img, mask))
                if not opt["classes_file"] and "TrainIds" in mask.name:
                    self._train_ids.add(mask)
                continue
            stem = img.name[: -len(opt["img_suffix"])]
            train_ids = gt_dir / img.parent.relative_to(img_dir) / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = gt_dir / img.parent.relative_to(img_dir) / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.samples.append((img, train_ids))
                self._train_ids.add(train_ids)
            elif label_ids.is_file():
                self.samples.append((img, label_ids))
            else:
                raise ApdError(f"cityscapes: no mask for {img} (expected {label_ids})")
        self.require_nonempty(layout)
        self.lut = self._lut_ids

    def load_mask(self, path):
        lut = self._lut_train if path in self._train_ids else self._lut_ids
        return apply_lut(read_mask_raw(path), lut, path, self.num_classes)
