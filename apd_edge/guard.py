"""Finiteness checks: a diverged run must never pass NaN/inf weights on as if they were good.

The trainer checks the loss, then the gradients before ``optimizer.step()``, then the updated weights, and
every state before it is written to a checkpoint; ``model_from_checkpoint`` refuses non-finite weights.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

# Weights (and BN statistics) beyond this magnitude count as diverged although finite: their squares overflow
# float32 (~3.4e38 is reached from ~1.8e19), so the next variance or norm is inf. No trained network comes close.
WEIGHT_LIMIT = 1e16


def _ok(t: torch.Tensor, limit: float | None) -> torch.Tensor:
    if limit is None:
        return torch.isfinite(t).all()
    return t.detach().abs().amax() <= limit  # NaN compares False, so NaN and inf fail too


def all_finite(tensors: Iterable[torch.Tensor | None], limit: float | None = None) -> bool:
    """True when every floating-point tensor holds only finite values (and none beyond ``limit`` in magnitude);
    one device sync in all."""
    flags = [_ok(t, limit) for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    return bool(torch.stack(flags).all().item()) if flags else True


def nonfinite_names(named: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                    limit: float | None = None) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (or values beyond ``limit``)."""
    items = named.items() if isinstance(named, Mapping) else named
    return [k for k, t in items
            if torch.is_tensor(t) and t.is_floating_point() and t.numel() and not bool(_ok(t, limit))]


def describe_nonfinite(names: list[str]) -> str:
    """``'a.weight'`` or ``'a.weight' and 3 more tensors``."""
    more = f" and {len(names) - 1} more tensor{'s' if len(names) > 2 else ''}" if len(names) > 1 else ""
    return f"'{names[0]}'{more}"


def _tensors_of(obj) -> Iterable[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists (optimizer state), with a dotted path."""
    stack = [("", obj)]
    while stack:
        path, o = stack.pop()
        if torch.is_tensor(o):
            yield path, o
        elif isinstance(o, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in o.items())
        elif isinstance(o, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(o))


def nonfinite_in(obj, limit: float | None = None) -> list[str]:
    """Paths of non-finite floating-point tensors anywhere inside ``obj`` (a state dict, optimizer state...)."""
    return nonfinite_names(list(_tensors_of(obj)), limit)
