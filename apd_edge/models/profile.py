"""Model size and cost: inference-graph parameters and multiply-accumulates at an input size.

MACs come from torch's own FLOP counter (``torch.utils.flop_counter``; MACs = FLOPs / 2), which counts
convolutions and matmuls, not element-wise ops, pooling or resizing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import MODEL_ROLES, build_model


def count_macs(model: nn.Module, size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-accumulates of one eval-mode forward pass at ``size`` (H, W)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(batch, 3, *size, device=param.device if param is not None else "cpu")
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_profile(name: str, num_classes: int = 19, size: tuple[int, int] = (360, 480),
                  model: nn.Module | None = None, **kwargs: Any) -> dict[str, Any]:
    """Profile a registered model, or ``model`` when given.

    A model built here lives on the meta device: shapes only, no memory or compute, so counting even
    the R101 teachers at 1024x2048 takes well under a second.

    Returns name, role, params (inference graph, no auxiliary heads), params_train (all), macs, gmacs,
    feat_channels, feat_stride, size, num_classes.
    """
    if model is None:
        with torch.device("meta"):
            model = build_model(name, num_classes, pretrained=False, **kwargs)
    total = sum(p.numel() for p in model.parameters())
    params = model.num_params(inference=True) if hasattr(model, "num_params") else total
    macs = count_macs(model, size)
    return {
        "name": name,
        "role": MODEL_ROLES.get(name, "?"),
        "params": params,
        "params_train": total,
        "macs": macs,
        "gmacs": macs / 1e9,
        "feat_channels": getattr(model, "feat_channels", None),
        "feat_stride": getattr(model, "feat_stride", None),
        "size": [int(size[0]), int(size[1])],
        "num_classes": num_classes,
    }
