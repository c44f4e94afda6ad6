"""Pixel-wise knowledge distillation on the final logits (Hinton-style KD applied per pixel).

Loss = KL(softmax(l_t / T) || softmax(l_s / T)) * T^2, both logits bilinearly upsampled to the label
size, reduced as an element-wise mean over B x C x H x W (torch ``KLDivLoss`` default, as in the APD
release), i.e. the per-pixel KL divided by C. APD reuses ``pixel_kd_loss`` for its fourth term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DISTILLERS, Distiller, upsample_to


def kl_terms(logp_t: torch.Tensor, logp_s: torch.Tensor) -> torch.Tensor:
    """Element-wise p_t * (log p_t - log p_s); zero where p_t underflows (never NaN)."""
    return logp_t.exp() * (logp_t - logp_s)


def pixel_kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, size: tuple[int, int],
                  temperature: float = 1.0, align_corners: bool = False) -> torch.Tensor:
    """Pixel-wise KD: element-wise mean of the KL terms over B x C x H x W, times T^2 (float32).

    Logits not at ``size`` are upsampled bilinearly with ``align_corners`` (``distill.align_corners``).
    """
    device_type = s_logits.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        s = upsample_to(s_logits.float(), size, align_corners)
        t = upsample_to(t_logits.detach().float(), size, align_corners)
        logp_s = F.log_softmax(s / temperature, dim=1)
        logp_t = F.log_softmax(t / temperature, dim=1)
        return kl_terms(logp_t, logp_s).sum() / s.numel() * (temperature ** 2)


@DISTILLERS.register("kd")
class KDDistiller(Distiller):
    """Task loss + ``distill.kd_weight`` x pixel-wise KD at ``distill.kd_temperature``."""

    def distill_terms(self, s_out: dict, t_out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.recipe.distill
        kd = pixel_kd_loss(s_out["out"], t_out["out"], labels.shape[-2:], cfg.kd_temperature, cfg.align_corners)
        return cfg.kd_weight * kd, {"kd": kd.detach()}
