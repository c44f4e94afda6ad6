"""Channel-wise distillation (CWD, Shu et al., ICCV 2021) on the final logits.

Each class channel is turned into a distribution over spatial positions with a softmax at
temperature T; the student matches the teacher per channel:
  L = T^2 / (B * C) * sum_{b, c} KL( softmax(t[b, c, :] / T) || softmax(s[b, c, :] / T) )
(KL summed over positions, mean over B x C), weighted by ``distill.cwd.weight``.

Resolution: the model contract gives ``out`` logits at input size (each model upsamples its native
stride-8 logits bilinearly), so CWD runs on those; if the two sizes differ the smaller map is
upsampled bilinearly to the larger. The published CWD uses logits at their native resolution; because
the KL is *summed* over positions of a normalised distribution, a smooth x8 upsampling of both maps
gives approximately the same value, at a higher (but KD-like) cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DISTILLERS, Distiller, upsample_to
from .kd import kl_terms


def channel_wise_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """CWD loss (unweighted, already times T^2), computed in float32."""
    s_hw, t_hw = s_logits.shape[-2:], t_logits.shape[-2:]
    if s_hw != t_hw:  # upsample the smaller map to the larger one
        size = s_hw if s_hw[0] * s_hw[1] >= t_hw[0] * t_hw[1] else t_hw
        s_logits, t_logits = upsample_to(s_logits, size), upsample_to(t_logits, size)
    with torch.autocast(device_type=s_logits.device.type, enabled=False):
        b, c = s_logits.shape[:2]
        s = s_logits.float().reshape(b, c, -1) / temperature
        t = t_logits.detach().float().reshape(b, c, -1) / temperature
        kl = kl_terms(F.log_softmax(t, dim=-1), F.log_softmax(s, dim=-1)).sum()
        return kl / (b * c) * (temperature ** 2)


@DISTILLERS.register("cwd")
class CWDDistiller(Distiller):
    """Task loss + ``distill.cwd.weight`` x channel-wise distillation at ``distill.cwd.temperature``."""

    def distill_terms(self, s_out: dict, t_out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg = self.recipe.distill.cwd
        loss = channel_wise_loss(s_out["out"], t_out["out"], cfg.temperature)
        return cfg.weight * loss, {"cwd": loss.detach()}
