"""Intra-class Feature Variation Distillation (IFVD; Wang, Zhou, Jiang, Bai, Xu, ECCV 2020).

For teacher and student separately, on the features before the classifier (``feat``) with the labels
nearest-resized to the feature size (ignore and out-of-range labels belong to no class):
  P_b[c] = mean of f_b(x) over the pixels x of image b labelled c        (class prototype, per image)
  M(x)   = cos(f(x), P_b[y(x)]) for labelled pixels                      (the IFV map)
  L_ifv  = sum over labelled pixels of (M_s(x) - M_t(x))^2 / (B * h * w)
The mean runs over every feature pixel, as in the release (its unlabelled pixels are compared with
themselves: cosine 1 on both sides, difference 0). A batch without any labelled pixel gives 0, still
attached to the graph. The student map is resized bilinearly to the teacher's size if they differ;
channel counts may differ. cos(a, b) = <a, b> / (max(||a||, 1e-8) * max(||b||, 1e-8)).

Total (release weights): task loss + ``distill.kd_weight`` (10) x ``pixel_kd_loss`` (its reduction is the
release's ``KLDivLoss`` mean) + ``ifvd.ifv_weight`` (200) x L_ifv + the holistic term (``ifvd.holistic``,
student weight 0.001 in the release; ``enabled: false`` drops it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IGNORE_INDEX, Recipe
from .apd import class_masks, downsample_labels
from .base import DISTILLERS
from .discriminator import HolisticDistiller
from .kd import pixel_kd_loss

EPS = 1e-8


def ifv_maps(feat: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """B x n cosine of each pixel's feature with its class prototype (0 where unlabelled).

    ``feat`` B x E x h x w (float32), ``onehot`` B x n x C (n = h*w).
    """
    f = feat.flatten(2).transpose(1, 2)  # B x n x E
    counts = onehot.sum(1)  # B x C
    protos = torch.bmm(onehot.transpose(1, 2), f) / counts.clamp(min=1)[..., None]  # B x C x E
    own = torch.bmm(onehot, protos)  # B x n x E: each pixel's prototype (zero if unlabelled)
    dot = (f * own).sum(-1)
    return dot / (f.norm(dim=-1).clamp(min=EPS) * own.norm(dim=-1).clamp(min=EPS))


def ifv_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, labels: torch.Tensor, num_classes: int,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """IFVD's loss (unweighted), float32."""
    feat_t = feat_t.detach()
    size = tuple(feat_t.shape[-2:])
    if tuple(feat_s.shape[-2:]) != size:
        feat_s = F.interpolate(feat_s, size=size, mode="bilinear", align_corners=False)
    onehot, _ = class_masks(downsample_labels(labels, size), num_classes, ignore_index, "image")
    labelled = onehot.sum(-1)  # B x n, 1 where the pixel has a class
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        m_s = ifv_maps(feat_s.float(), onehot)
        m_t = ifv_maps(feat_t.float(), onehot)
        return ((m_s - m_t).pow(2) * labelled).sum() / labelled.numel()


@DISTILLERS.register("ifvd")
class IFVDDistiller(HolisticDistiller):
    """Task loss + kd_weight * pixel KD + ifv_weight * L_ifv + the holistic term."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, recipe: Recipe) -> None:
        super().__init__(student, teacher, recipe, recipe.distill.ifvd.holistic)

    def distill_terms(self, s_out: dict, t_out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        dcfg = self.recipe.distill
        parts: dict[str, torch.Tensor] = {}
        total = s_out["out"].new_zeros(())
        if dcfg.kd_weight > 0:
            kd = pixel_kd_loss(s_out["out"], t_out["out"], labels.shape[-2:], dcfg.kd_temperature)
            total = total + dcfg.kd_weight * kd
            parts["kd"] = kd.detach()
        ifv = ifv_loss(s_out["feat"], t_out["feat"], labels, s_out["out"].shape[1], self.ignore_index)
        total = total + dcfg.ifvd.ifv_weight * ifv
        parts["ifv"] = ifv.detach()
        adv, adv_parts = self.holistic_terms(s_out["out"], t_out["out"])
        parts.update(adv_parts)
        return total + adv, parts
