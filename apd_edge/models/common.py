"""Building blocks shared by the models: conv-BN-act, resizing, and timm backbone creation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ApdError


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + activation (ReLU by default; ``act=None`` for none)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU, bn_eps: float = 1e-5) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps),
        ]
        if act is not None:
            layers.append(act(cout) if act is nn.PReLU else act(inplace=True) if act is nn.ReLU else act())
        super().__init__(*layers)


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (align_corners=False); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FCNHead(nn.Sequential):
    """conv3x3-BN-ReLU, dropout, conv1x1 classifier: the auxiliary head used on intermediate features."""

    def __init__(self, cin: int, mid: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(ConvBNAct(cin, mid, 3), nn.Dropout2d(dropout), nn.Conv2d(mid, num_classes, 1))


def timm_backbone(arch: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, features_only=True, ...)``; a failed weight download is a one-line ApdError."""
    import timm

    if not pretrained:
        return timm.create_model(arch, pretrained=False, features_only=True, **kwargs)
    try:
        return timm.create_model(arch, pretrained=True, features_only=True, **kwargs)
    except Exception:  # network, hub and cache errors come in many types
        raise ApdError(
            f"could not download ImageNet weights for {arch} (offline?); set model.pretrained: false "
            "or place the weights in the timm/HF cache"
        ) from None


def no_pretrained(name: str, pretrained: bool) -> None:
    """Models trained from scratch in their papers have no ImageNet weights to load."""
    if pretrained:
        raise ApdError(
            f"model '{name}' is trained from scratch and has no pretrained weights; set model.pretrained: false"
        )

