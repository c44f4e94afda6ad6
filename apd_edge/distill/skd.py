"""Structured Knowledge Distillation (SKD; Liu, Chen, Liu, Qu, Wang, "Structured Knowledge Distillation for
Semantic Segmentation", CVPR 2019, and Liu, Shu, Wang, Shen, "... for Dense Prediction", TPAMI 2020).

Three terms on top of the task loss (settings from the released code; docs/distillation-baselines.md):
  * pixel-wise: KL(softmax(l_t) || softmax(l_s)) per pixel, summed over classes, averaged over the
    pixels: ``pi_weight`` (10) x C x ``pixel_kd_loss`` (ours averages over classes too, hence the C).
  * pair-wise: both feature maps (``feat``, before the classifier) max-pooled into a coarse grid of
    nodes, a node of int(s*h) x int(s*w) cells (s = ``pair_pool_scale``, 0.5 released: a 2x2 grid for
    an even map, ceil mode), then
        a_ij = <f_i, f_j> / (||f_i|| ||f_j||)  (norms treated as constants in the gradient, as released)
        L_pa = 1/B sum_b 1/N^2 sum_ij (a_ij^t - a_ij^s)^2,   N = nodes per image;  weight ``pa_weight``
    The student map is resized bilinearly to the teacher's size first if the two differ. Channel counts
    may differ (only N x N similarities are compared).
  * holistic: the WGAN-GP critic of ``discriminator.py`` (``skd.holistic``; ``enabled: false`` drops it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Recipe
from .base import DISTILLERS
from .discriminator import HolisticDistiller
from .kd import pixel_kd_loss


def pool_nodes(feat: torch.Tensor, scale: float) -> torch.Tensor:
    """Max-pool B x C x h x w into nodes of int(scale*h) x int(scale*w) cells (stride = kernel, ceil mode)."""
    h, w = feat.shape[-2:]
    kh, kw = max(1, int(h * scale)), max(1, int(w * scale))
    return F.max_pool2d(feat, (kh, kw), stride=(kh, kw), padding=0, ceil_mode=True)


def node_similarity(nodes: torch.Tensor) -> torch.Tensor:
    """B x N x N cosine similarities between the nodes of B x C x gh x gw (norms detached, eps 1e-8)."""
    f = nodes.float().flatten(2)
    f = f / (f.norm(dim=1, keepdim=True).detach() + 1e-8)
    return torch.bmm(f.transpose(1, 2), f)


def pairwise_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, scale: float = 0.5) -> torch.Tensor:
    """SKD's pair-wise distillation loss (unweighted), float32."""
    feat_t = feat_t.detach()
    if feat_s.shape[-2:] != feat_t.shape[-2:]:
        feat_s = F.interpolate(feat_s, size=feat_t.shape[-2:], mode="bilinear", align_corners=False)
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        ps, pt = pool_nodes(feat_s.float(), scale), pool_nodes(feat_t.float(), scale)
        n = pt.shape[-2] * pt.shape[-1]
        return (node_similarity(pt) - node_similarity(ps)).pow(2).sum() / (n * n) / pt.shape[0]


def pixelwise_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, size: tuple[int, int],
                 temperature: float = 1.0) -> torch.Tensor:
    """Per-pixel KL summed over classes, mean over B x H x W pixels (SKD's reduction of ``pixel_kd_loss``)."""
    return pixel_kd_loss(s_logits, t_logits, size, temperature) * s_logits.shape[1]


@DISTILLERS.register("skd")
class SKDDistiller(HolisticDistiller):
    """Task loss + pi_weight * pixel-wise KL + pa_weight * pair-wise + the holistic term."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, recipe: Recipe) -> None:
        super().__init__(student, teacher, recipe, recipe.distill.skd.holistic)

    def distill_terms(self, s_out: dict, t_out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.recipe.distill.skd
        pi = pixelwise_kl(s_out["out"], t_out["out"], labels.shape[-2:], self.recipe.distill.kd_temperature)
        pa = pairwise_loss(s_out["feat"], t_out["feat"], cfg.pair_pool_scale)
        total = cfg.pi_weight * pi + cfg.pa_weight * pa
        parts = {"skd_pi": pi.detach(), "skd_pa": pa.detach()}
        adv, adv_parts = self.holistic_terms(s_out["out"], t_out["out"])
        parts.update(adv_parts)
        return total + adv, parts
