"""Tiny SegModel-like networks and recipes for the distillation tests (no model zoo needed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apd_edge.config import recipe_from_dict
from apd_edge.models.base import SegModel


class TinySeg(SegModel):
    """conv(stride) -> ReLU -> 1x1 classifier, logits upsampled to the input size."""

    def __init__(self, num_classes: int = 3, channels: int = 8, stride: int = 2) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, channels, 3, stride=stride, padding=1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.feat_channels = channels
        self.feat_stride = stride

    def _forward(self, x: torch.Tensor, with_aux: bool) -> dict:
        feat = F.relu(self.backbone(x))
        out = F.interpolate(self.classifier(feat), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "aux": [], "feat": feat}


def make_recipe(method: str = "apd", **apd) -> object:
    return recipe_from_dict({"distill": {"method": method, "apd": apd}, "model": {"aux_weights": []}})
