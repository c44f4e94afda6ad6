"""DeepLabV3 on MobileNetV2 (the CIRKD / CWD student): output stride 8 by dilation, ASPP with 128 channels.

The backbone is timm's ``mobilenetv2_100`` (final 1280 conv dropped, dilations 2 then 4), so
``pretrained=True`` loads its ImageNet weights. An auxiliary FCN head on the 96-channel block
(stride 16 before dilation) is used in training only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import SegModel
from .common import ASPP, ConvBNAct, FCNHead, resize, timm_backbone
from .registry import register


class DeepLabV3MobileNetV2(SegModel):
    feat_channels = 128
    feat_stride = 8
    default_aux_weights = [0.4]
    aux_prefixes = ("aux_head",)

    def __init__(self, num_classes: int, pretrained: bool = False, aspp_channels: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        # out_indices 3, 4: the 96-ch block (aux) and the 320-ch last block, both at 1/8
        self.backbone = timm_backbone("mobilenetv2_100", pretrained, output_stride=8, out_indices=(3, 4))
        c_aux, c_last = self.backbone.feature_info.channels()
        self.aspp = ASPP(c_last, aspp_channels)
        self.bottleneck = nn.Sequential(ConvBNAct(aspp_channels, aspp_channels, 3), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        self.aux_head = FCNHead(c_aux, 128, num_classes, dropout)

    def _forward(self, x: torch.Tensor, with_aux: bool) -> dict[str, Any]:
        mid, last = self.backbone(x)
        feat = self.bottleneck(self.aspp(last))
        out = resize(self.classifier(feat), x.shape[-2:])
        return {"out": out, "aux": [self.aux_head(mid)] if with_aux else [], "feat": feat}


@register("mobilenetv2", role="student")
def mobilenetv2(num_classes: int, pretrained: bool = False, **kwargs: Any) -> DeepLabV3MobileNetV2:
    return DeepLabV3MobileNetV2(num_classes, pretrained=pretrained, **kwargs)
