"""Inference on any image size: pad to a multiple of the model's stride, run, crop the logits back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int = 32, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad NCHW ``x`` on the bottom/right so H and W are multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # reflect needs pad < size; fall back to replicate on very small images
        m = mode if mode != "reflect" or (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=m) if m != "constant" else F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def forward_padded(model: nn.Module, x: torch.Tensor, multiple: int = 32, mode: str = "reflect") -> torch.Tensor:
    """Logits (N, C, H, W) of ``model`` for an input of any H, W (padded bottom/right, then cropped).

    Works for a model in eval mode (returns a tensor) or train mode (takes ``out`` from the dict).
    """
    padded, (h, w) = pad_to_multiple(x, multiple, mode)
    out = model(padded)
    if isinstance(out, dict):
        out = out["out"]
    return out[..., :h, :w]
