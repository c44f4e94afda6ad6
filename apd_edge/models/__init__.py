"""Segmentation models: real-time students and large teachers, one output contract.

Train mode: ``{"out": logits at input size, "aux": [aux logits], "feat": feature map before the
classifier}``; eval mode: the logits tensor. Every model exposes ``feat_channels`` and ``feat_stride``.
"""

from .registry import build_model, list_models

__all__ = ["build_model", "list_models"]
