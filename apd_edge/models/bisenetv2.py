"""BiSeNetV2 (Yu et al., IJCV 2021): detail + semantic branches fused by bilateral guided aggregation.

Training adds the four "booster" auxiliary heads (stem, S3, S4, S5 before the context embedding);
they are built always (so checkpoints load in any mode) but run only when ``with_aux`` is set and
are left out of the inference parameter count and the exported graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import SegModel
from .common import ConvBNAct, FCNHead, no_pretrained, resize
from .registry import register


class DetailBranch(nn.Sequential):
    """Wide, shallow path at 1/8: three stages of plain conv3x3 (64, 64, 128 channels)."""

    def __init__(self) -> None:
        super().__init__(
            ConvBNAct(3, 64, 3, 2), ConvBNAct(64, 64),
            ConvBNAct(64, 64, 3, 2), ConvBNAct(64, 64), ConvBNAct(64, 64),
            ConvBNAct(64, 128, 3, 2), ConvBNAct(128, 128), ConvBNAct(128, 128),
        )


class StemBlock(nn.Module):
    """1/4 stem: conv/2, then a conv path and a max-pool path, concatenated and fused to 16 ch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBNAct(3, 16, 3, 2)
        self.left = nn.Sequential(ConvBNAct(16, 8, 1), ConvBNAct(8, 16, 3, 2))
        self.right = nn.MaxPool2d(3, 2, 1)
        self.fuse = ConvBNAct(32, 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], 1))


class GELayer(nn.Module):
    """Gather-and-expand layer; stride 2 adds a second depthwise conv and a projected shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 6) -> None:
        super().__init__()
        mid = cin * expand
        self.conv1 = ConvBNAct(cin, cin, 3)
        if stride == 1:
            self.dw = ConvBNAct(cin, mid, 3, groups=cin)
            self.shortcut: nn.Module | None = None
        else:
            self.dw = nn.Sequential(ConvBNAct(cin, mid, 3, 2, groups=cin, act=None), ConvBNAct(mid, mid, 3, groups=mid))
            self.shortcut = nn.Sequential(ConvBNAct(cin, cin, 3, 2, groups=cin, act=None),
                                          ConvBNAct(cin, cout, 1, act=None))
        self.proj = ConvBNAct(mid, cout, 1, act=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.dw(self.conv1(x)))
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


class ContextEmbedding(nn.Module):
    """Global average pool, BN, conv1x1-BN-ReLU, broadcast-add to the input, conv3x3."""

    def __init__(self, ch: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(ch)
        self.gap_conv = ConvBNAct(ch, ch, 1)
        self.out = ConvBNAct(ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gap_conv(self.bn(x.mean((2, 3), keepdim=True)))  # reduce-mean: exports for any size
        return self.out(x + g)


class SemanticBranch(nn.Module):
    """Narrow, deep path to 1/32 (16/32/64/128 ch); returns the features the booster heads read."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = StemBlock()
        self.s3 = nn.Sequential(GELayer(16, 32, 2), GELayer(32, 32))
        self.s4 = nn.Sequential(GELayer(32, 64, 2), GELayer(64, 64))
        self.s5 = nn.Sequential(GELayer(64, 128, 2), GELayer(128, 128), GELayer(128, 128), GELayer(128, 128))
        self.ce = ContextEmbedding(128)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.stem(x)
        f3 = self.s3(f2)
        f4 = self.s4(f3)
        f5 = self.s5(f4)
        return [f2, f3, f4, f5, self.ce(f5)]


class BGA(nn.Module):
    """Bilateral guided aggregation: each branch gates the other at its own resolution."""

    def __init__(self, ch: int = 128) -> None:
        super().__init__()
        self.d_keep = nn.Sequential(ConvBNAct(ch, ch, 3, groups=ch, act=None), nn.Conv2d(ch, ch, 1, bias=False))
        self.d_down = nn.Sequential(ConvBNAct(ch, ch, 3, 2, act=None), nn.AvgPool2d(3, 2, 1))
        self.s_up = ConvBNAct(ch, ch, 3, act=None)
        self.s_keep = nn.Sequential(ConvBNAct(ch, ch, 3, groups=ch, act=None), nn.Conv2d(ch, ch, 1, bias=False))
        self.out = ConvBNAct(ch, ch, 3)

    def forward(self, d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        size = d.shape[-2:]
        a = self.d_keep(d) * torch.sigmoid(resize(self.s_up(s), size))
        b = self.d_down(d) * torch.sigmoid(self.s_keep(s))
        return self.out(a + resize(b, size))


class BiSeNetV2(SegModel):
    feat_channels = 128
    feat_stride = 8
    default_aux_weights = [1.0, 1.0, 1.0, 1.0]
    aux_prefixes = ("aux_heads",)

    def __init__(self, num_classes: int, head_channels: int = 1024, aux_channels: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.detail = DetailBranch()
        self.semantic = SemanticBranch()
        self.bga = BGA(128)
        self.head = FCNHead(128, head_channels, num_classes, dropout)
        # booster heads on stem (16), S3 (32), S4 (64) and S5 before the context embedding (128)
        self.aux_heads = nn.ModuleList(FCNHead(c, aux_channels, num_classes, dropout) for c in (16, 32, 64, 128))

    def _forward(self, x: torch.Tensor, with_aux: bool) -> dict[str, Any]:
        d = self.detail(x)
        *stages, s = self.semantic(x)
        feat = self.bga(d, s)
        out = resize(self.head(feat), x.shape[-2:])
        aux = [h(f) for h, f in zip(self.aux_heads, stages)] if with_aux else []
        return {"out": out, "aux": aux, "feat": feat}

    def lr_groups(self) -> dict[str, list[nn.Parameter]]:
        # trained from scratch: every layer at the base learning rate
        return {"backbone": list(self.parameters()), "head": []}


@register("bisenetv2", role="student")
def bisenetv2(num_classes: int, pretrained: bool = False, **kwargs: Any) -> BiSeNetV2:
    no_pretrained("bisenetv2", pretrained)
    return BiSeNetV2(num_classes, **kwargs)
