"""Teachers: PSPNet and DeepLabV3 on timm's deep-stem ResNet-D at output stride 8 (as in the APD release).

``output_stride=16`` (``model.kwargs`` / ``teacher.kwargs``) dilates only layer4: about 3x less compute
for a ResNet-18-D at a small cost in accuracy, for teachers trained or run where compute is short (CPU).

``feat`` is the 512-ch PSP bottleneck / the 256-ch DeepLabV3 map before the classifier; an auxiliary FCN
head on layer3 (weight 0.4) trains with them. PSP pooling uses adaptive average pooling (bins 1, 2, 3, 6),
fine for training; the exporter refuses teachers rather than emit a size-bound graph.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ApdError
from .base import SegModel
from .common import ASPP, ConvBNAct, FCNHead, resize, timm_backbone
from .registry import register

DEPTHS = {"r18": "resnet18d", "r50": "resnet50d", "r101": "resnet101d"}


class PyramidPooling(nn.Module):
    """Pool to bins x bins, conv1x1 to cin/len(bins), upsample back, concatenate with the input."""

    def __init__(self, cin: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.convs = nn.ModuleList(ConvBNAct(cin, cin // len(bins), 1) for _ in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [resize(conv(F.adaptive_avg_pool2d(x, b)), size) for b, conv in zip(self.bins, self.convs)]
        return torch.cat([x] + pooled, 1)


class _ResNetSeg(SegModel):
    """A dilated ResNet-D backbone (layer3 + layer4 features at 1/8), a context head and an aux head."""

    feat_stride = 8
    default_aux_weights = [0.4]
    aux_prefixes = ("aux_head",)

    def __init__(self, arch: str, num_classes: int, pretrained: bool, dropout: float = 0.1,
                 output_stride: int = 8) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ApdError(f"teacher output_stride must be 8 or 16, got {output_stride}")
        self.feat_stride = output_stride
        self.backbone = timm_backbone(arch, pretrained, output_stride=output_stride, out_indices=(3, 4))
        self.c3, self.c4 = self.backbone.feature_info.channels()
        self.aux_head = FCNHead(self.c3, 256, num_classes, dropout)
        self.dropout: nn.Module = nn.Identity()  # subclasses: dropout between ``feat`` and the classifier
        self.classifier: nn.Module

    def context(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, with_aux: bool) -> dict[str, Any]:
        c3, c4 = self.backbone(x)
        feat = self.context(c4)
        out = resize(self.classifier(self.dropout(feat)), x.shape[-2:])
        return {"out": out, "aux": [self.aux_head(c3)] if with_aux else [], "feat": feat}


class PSPNet(_ResNetSeg):
    feat_channels = 512

    def __init__(self, arch: str, num_classes: int, pretrained: bool = False, dropout: float = 0.1,
                 output_stride: int = 8) -> None:
        super().__init__(arch, num_classes, pretrained, dropout, output_stride)
        self.ppm = PyramidPooling(self.c4)
        self.bottleneck = ConvBNAct(2 * self.c4, 512, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(512, num_classes, 1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.ppm(x))


class DeepLabV3(_ResNetSeg):
    feat_channels = 256

    def __init__(self, arch: str, num_classes: int, pretrained: bool = False, dropout: float = 0.1,
                 output_stride: int = 8) -> None:
        super().__init__(arch, num_classes, pretrained, dropout, output_stride)
        # atrous rates scale with the stride (DeepLabV3: 12/24/36 at stride 8, 6/12/18 at 16)
        self.aspp = ASPP(self.c4, 256, tuple(r * 8 // output_stride for r in (12, 24, 36)))
        self.bottleneck = ConvBNAct(256, 256, 3)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.aspp(x))


def _register(kind: str, cls: type[_ResNetSeg], depth: str) -> None:
    arch = DEPTHS[depth]

    @register(f"{kind}_{depth}", role="teacher")
    def factory(num_classes: int, pretrained: bool = False, **kwargs: Any) -> SegModel:
        return cls(arch, num_classes, pretrained=pretrained, **kwargs)

    factory.__doc__ = f"{cls.__name__} on timm {arch} (output stride 8; output_stride=16 for a cheaper one)."


for _depth in DEPTHS:
    _register("pspnet", PSPNet, _depth)
    _register("deeplabv3", DeepLabV3, _depth)
