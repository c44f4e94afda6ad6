"""ESPNet (Mehta et al., ECCV 2018): efficient spatial pyramid (ESP) modules, ESPNet-C encoder + decoder.

BN eps 1e-3 and PReLU throughout, as in the paper's release. ``feat`` is the 256-channel 1/8 encoder map
(before the ESPNet-C classifier). Trained from scratch; no auxiliary heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import SegModel
from .common import ConvBNAct, no_pretrained
from .registry import register

EPS = 1e-3


class BNPReLU(nn.Sequential):
    def __init__(self, ch: int) -> None:
        super().__init__(nn.BatchNorm2d(ch, eps=EPS), nn.PReLU(ch))


class ESPModule(nn.Module):
    """Reduce (conv1x1, or conv3x3/2 when strided) to d = N/K, K parallel dilated conv3x3 (dilation 1..16),
    hierarchical feature fusion (running sums), concatenation, optional residual, BN + PReLU.

    Departure: with fewer than 5 output channels (tiny class counts in the decoder) K shrinks to N.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        k = min(5, cout)
        d = cout // k
        first = cout - (k - 1) * d  # the dilation-1 branch takes the remainder
        self.residual = residual and stride == 1 and cin == cout
        ksize = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(cin, d, ksize, stride, ksize // 2, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(d, first if i == 0 else d, 3, 1, padding=2**i, dilation=2**i, bias=False) for i in range(k)
        )
        self.post = BNPReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        outs = [self.branches[0](r)]
        acc = None
        for branch in self.branches[1:]:
            y = branch(r)
            acc = y if acc is None else acc + y  # hierarchical fusion removes gridding artefacts
            outs.append(acc)
        y = torch.cat(outs, 1)
        if self.residual:
            y = y + x
        return self.post(y)


class AvgDown(nn.Sequential):
    """The input image average-pooled ``times`` times by 2 (the input reinforcement of ESPNet-C)."""

    def __init__(self, times: int) -> None:
        super().__init__(*[nn.AvgPool2d(3, 2, 1) for _ in range(times)])


class ESPNet(SegModel):
    feat_channels = 256
    feat_stride = 8
    default_aux_weights: list[float] = []

    def __init__(self, num_classes: int, alpha2: int = 2, alpha3: int = 8) -> None:
        super().__init__()
        c = num_classes
        # ESPNet-C encoder
        self.level1 = ConvBNAct(3, 16, 3, 2, act=nn.PReLU, bn_eps=EPS)
        self.down1, self.down2 = AvgDown(1), AvgDown(2)
        self.bn1 = BNPReLU(19)
        self.level2_0 = ESPModule(19, 64, stride=2)
        self.level2 = nn.Sequential(*[ESPModule(64, 64) for _ in range(alpha2)])
        self.bn2 = BNPReLU(131)
        self.level3_0 = ESPModule(131, 128, stride=2)
        self.level3 = nn.Sequential(*[ESPModule(128, 128) for _ in range(alpha3)])
        self.bn3 = BNPReLU(256)
        self.classifier_c = nn.Conv2d(256, c, 1, bias=False)
        # ESPNet decoder
        self.l3_bn = nn.BatchNorm2d(c, eps=EPS)
        self.up3 = nn.ConvTranspose2d(c, c, 2, 2, bias=False)
        self.l2_proj = nn.Conv2d(131, c, 1, bias=False)
        self.merge2 = nn.Sequential(BNPReLU(2 * c), ESPModule(2 * c, c, residual=False))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, 2, bias=False), BNPReLU(c))
        self.merge1 = ConvBNAct(19 + c, c, 3, act=nn.PReLU, bn_eps=EPS)
        self.up1 = nn.ConvTranspose2d(c, c, 2, 2, bias=False)

    def _forward(self, x: torch.Tensor, with_aux: bool) -> dict[str, Any]:
        l1 = self.bn1(torch.cat([self.level1(x), self.down1(x)], 1))  # 1/2, 19 ch
        s2 = self.level2_0(l1)
        l2 = self.bn2(torch.cat([self.level2(s2), s2, self.down2(x)], 1))  # 1/4, 131 ch
        s3 = self.level3_0(l2)
        feat = self.bn3(torch.cat([s3, self.level3(s3)], 1))  # 1/8, 256 ch
        y = self.up3(self.l3_bn(self.classifier_c(feat)))
        y = self.up2(self.merge2(torch.cat([self.l2_proj(l2), y], 1)))
        out = self.up1(self.merge1(torch.cat([y, l1], 1)))
        return {"out": out, "aux": [], "feat": feat}

    def lr_groups(self) -> dict[str, list[nn.Parameter]]:
        # trained from scratch: every layer at the base learning rate
        return {"backbone": list(self.parameters()), "head": []}


@register("espnet", role="student")
def espnet(num_classes: int, pretrained: bool = False, **kwargs: Any) -> ESPNet:
    no_pretrained("espnet", pretrained)
    return ESPNet(num_classes, **kwargs)
