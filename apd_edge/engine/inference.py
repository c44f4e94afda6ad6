"""Test-time inference: whole image (padded to /32), sliding window, flip and multi-scale averaging.

All functions take a model in eval mode and normalised NCHW images, and return per-pixel scores at the
input size: raw logits for one plain pass, averaged softmax probabilities when several passes are
combined (flip, scales or overlapping windows). Argmax of either gives the prediction.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of any model output: a tensor, or a dict with ``out`` (train-mode contract)."""
    out = model(x)
    if isinstance(out, dict):
        out = out["out"]
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def padded_logits(model: nn.Module, x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Whole-image logits: pad H, W up to ``multiple``, run, crop back (the models' own helper)."""
    from ..models.inference import forward_padded

    return forward_padded(model, x, multiple=multiple)


def _starts(size: int, win: int, stride: int) -> list[int]:
    if size <= win:
        return [0]
    starts = list(range(0, size - win, stride))
    starts.append(size - win)  # last window flush with the border
    return sorted(set(starts))


def sliding_window_scores(model: nn.Module, x: torch.Tensor, window: Sequence[int],
                          stride: Sequence[int] | None = None) -> torch.Tensor:
    """Average softmax probabilities over overlapping ``window`` crops (stride default: 2/3 window)."""
    wh, ww = int(window[0]), int(window[1])
    sh, sw = (int(stride[0]), int(stride[1])) if stride else (max(1, wh * 2 // 3), max(1, ww * 2 // 3))
    _, _, h, w = x.shape
    total = None
    count = x.new_zeros((1, 1, h, w))
    for top in _starts(h, wh, sh):
        for left in _starts(w, ww, sw):
            crop = x[:, :, top:top + wh, left:left + ww]
            prob = padded_logits(model, crop).softmax(1)
            if total is None:
                total = x.new_zeros((x.shape[0], prob.shape[1], h, w))
            total[:, :, top:top + crop.shape[2], left:left + crop.shape[3]] += prob
            count[:, :, top:top + crop.shape[2], left:left + crop.shape[3]] += 1
    return total / count


def _single_pass(model: nn.Module, x: torch.Tensor, window, stride, as_prob: bool) -> torch.Tensor:
    if window:
        return sliding_window_scores(model, x, window, stride)
    logits = padded_logits(model, x)
    return logits.softmax(1) if as_prob else logits


@torch.no_grad()
def predict_scores(model: nn.Module, x: torch.Tensor, flip: bool = False, scales: Sequence[float] = (1.0,),
                   window: Sequence[int] | None = None, stride: Sequence[int] | None = None) -> torch.Tensor:
    """Scores B x C x H x W at the input size; several passes are combined by averaging softmax."""
    scales = list(scales) or [1.0]
    combine = flip or len(scales) > 1 or scales[0] != 1.0
    h, w = x.shape[-2:]
    total = None
    n = 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False,
                                              recompute_scale_factor=False)
        views = [False, True] if flip else [False]
        for flipped in views:
            inp = xs.flip(-1) if flipped else xs
            out = _single_pass(model, inp, window, stride, as_prob=combine)
            if flipped:
                out = out.flip(-1)
            if out.shape[-2:] != (h, w):
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            total = out if total is None else total + out
            n += 1
    return total / n if n > 1 else total


def predict_labels(model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    """Label map B x H x W (int64)."""
    return predict_scores(model, x, **kw).argmax(1)
