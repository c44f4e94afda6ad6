"""Learning-rate schedule: linear warm-up, then poly decay, per iteration.

Each optimizer group's lr is ``base_lr * factor(step)`` where ``base_lr`` is the group's lr when the
scheduler was built (the distiller's groups already carry ``lr * lr_mult``). The state is plain data.
"""

from __future__ import annotations

from typing import Any

import torch


def lr_factor(step: int, total: int, warmup_iters: int = 0, warmup_ratio: float = 0.1, power: float = 0.9) -> float:
    """Multiplier of the base lr at ``step`` (0-based) of ``total`` iterations.

    Poly: ``(1 - step / total) ** power``. During warm-up the poly value is scaled by a factor that
    rises linearly from ``warmup_ratio`` (step 0) to 1 (step ``warmup_iters``).
    """
    step = min(max(step, 0), total)
    factor = (1.0 - step / total) ** power if total > 0 else 1.0
    if warmup_iters > 0 and step < warmup_iters:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
    return factor


class WarmupPolyLR:
    """A LambdaLR-like scheduler: ``step()`` after each optimizer step; ``state_dict()`` for resume."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, power: float = 0.9) -> None:
        self.optimizer = optimizer
        self.total = int(total)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self, step: int | None = None) -> float:
        return lr_factor(self.last_step if step is None else step, self.total, self.warmup_iters,
                         self.warmup_ratio, self.power)

    def _apply(self) -> None:
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total": self.total, "base_lrs": list(self.base_lrs),
                "warmup_iters": self.warmup_iters, "warmup_ratio": self.warmup_ratio, "power": self.power}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the total may grow on resume (--set train.iterations=N): the new recipe's value wins
        self.last_step = int(state["last_step"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()
