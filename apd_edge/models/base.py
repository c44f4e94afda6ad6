"""``SegModel``: the one output contract every model follows.

Subclasses implement ``_forward(x, with_aux) -> {"out": logits at input size, "aux": [logits...],
"feat": features before the final classifier}`` and set ``feat_channels`` / ``feat_stride``.
``forward`` returns that dict in train mode and the plain logits tensor in eval mode (what export sees);
``forward_dict`` returns the dict in any mode (a frozen teacher in eval mode still gives ``feat``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SegModel(nn.Module):
    feat_channels: int = 0
    feat_stride: int = 8
    default_aux_weights: list[float] = []
    # names of training-only submodules (auxiliary heads): skipped at inference, not counted in its size
    aux_prefixes: tuple[str, ...] = ()

    def _forward(self, x: torch.Tensor, with_aux: bool) -> dict[str, Any]:
        raise NotImplementedError

    def forward_dict(self, x: torch.Tensor, with_aux: bool | None = None) -> dict[str, Any]:
        return self._forward(x, self.training if with_aux is None else with_aux)

    def forward(self, x: torch.Tensor):
        out = self._forward(x, self.training)
        return out if self.training else out["out"]

    def num_params(self, inference: bool = True) -> int:
        """Parameter count; ``inference=True`` leaves out the training-only heads in ``aux_prefixes``."""
        skip = tuple(f"{p}." for p in self.aux_prefixes) if inference else ()
        return sum(p.numel() for n, p in self.named_parameters() if not (skip and n.startswith(skip)))

    def lr_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters under ``backbone.`` train at the base lr; the rest (heads) at ``head_lr_mult``."""
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head": []}
        for name, p in self.named_parameters():
            groups["backbone" if name.startswith("backbone.") else "head"].append(p)
        return groups
