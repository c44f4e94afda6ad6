"""The distiller interface: wraps a student (and a frozen teacher) and computes the training loss.

The engine sees only this interface:
  * ``forward(images, labels) -> LossOutput`` (student in train mode; teacher under no_grad),
  * ``param_groups(lr, head_lr_mult)`` for the student's optimizer (student + its projector),
  * ``extra_state_dict()`` / ``load_extra_state_dict()`` for internal optimizers (APD's teacher projector),
  * ``student`` (what is saved and exported).
Distillers see models only through the output contract: ``out``, ``aux``, ``feat``.
The teacher (and APD's teacher projector) are held unregistered: out of ``parameters()``, DDP and the
optimizer, yet they follow ``.to()`` / ``.cuda()`` through ``_apply``. In eval mode ``forward`` still
computes the losses (from ``student.forward_dict``) and steps nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IGNORE_INDEX, Recipe
from ..registry import Registry

DISTILLERS: Registry = Registry("distillation method")


@dataclass
class LossOutput:
    total: torch.Tensor  # what the engine backpropagates
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # detached components, for logging


def upsample_to(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    if logits.shape[-2:] == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean CE over the non-ignored pixels; 0 (not NaN, still attached) when every pixel is ignored."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def task_loss(
    outputs: dict[str, Any], labels: torch.Tensor, aux_weights: list[float], ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE on the main logits plus weighted CE on each auxiliary head (upsampled to label size)."""
    size = labels.shape[-2:]
    ce = cross_entropy(upsample_to(outputs["out"], size), labels, ignore_index)
    parts = {"ce": ce.detach()}
    total = ce
    aux = outputs.get("aux") or []
    if aux:
        if len(aux_weights) != len(aux):
            raise ValueError(f"model has {len(aux)} auxiliary heads but {len(aux_weights)} aux weights were given")
        aux_sum = sum(w * cross_entropy(upsample_to(a, size), labels, ignore_index)
                      for w, a in zip(aux_weights, aux) if w)
        if isinstance(aux_sum, torch.Tensor):
            total = total + aux_sum
            parts["aux"] = aux_sum.detach()
    return total, parts


def resolve_aux_weights(model: nn.Module, recipe: Recipe) -> list[float]:
    """The recipe's aux weights, or the model's ``default_aux_weights``."""
    if recipe.model.aux_weights is not None:
        return list(recipe.model.aux_weights)
    return list(getattr(model, "default_aux_weights", []))


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) trainable parameters, from the model's ``lr_groups()``."""
    groups = model.lr_groups()
    back = [p for p in groups["backbone"] if p.requires_grad]
    head = [p for p in groups["head"] if p.requires_grad]
    return back, head


class Distiller(nn.Module):
    """Base class. Subclasses implement ``distill_terms``; the task loss is shared."""

    uses_teacher = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, recipe: Recipe) -> None:
        super().__init__()
        self.student = student
        self.recipe = recipe
        self.aux_weights = resolve_aux_weights(student, recipe)
        self.ignore_index = IGNORE_INDEX
        # the teacher is frozen and kept out of state_dict / parameters(): stored without registration
        object.__setattr__(self, "_teacher", teacher)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self._teacher is not None:
            self._teacher.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        # .to()/.cuda()/.float() all go through _apply: unregistered members (the teacher, and
        # whatever a subclass lists in ``_unregistered()``) must follow the distiller
        super()._apply(fn, recurse)
        for m in self._unregistered():
            m._apply(fn, recurse)
        return self

    def _unregistered(self) -> list[nn.Module]:
        """Modules held outside the registered tree (kept out of parameters(), DDP and state_dict)."""
        return [self._teacher] if self._teacher is not None else []

    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor) -> dict[str, Any]:
        """Teacher outputs ``{"out", "feat"}`` in eval mode, under no_grad."""
        return self._teacher.forward_dict(images, with_aux=False)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        if self.training:
            s_out = self.student(images)
        else:  # eval mode: SegModel.forward gives bare logits; the losses need the dict
            s_out = getattr(self.student, "module", self.student).forward_dict(images, with_aux=False)
        total, parts = task_loss(s_out, labels, self.aux_weights, self.ignore_index)
        if self.uses_teacher:
            t_out = self.teacher_forward(images)
            extra, extra_parts = self.distill_terms(s_out, t_out, labels)
            total = total + extra
            parts.update(extra_parts)
        parts["loss"] = total.detach()
        return LossOutput(total, parts)

    def distill_terms(self, s_out: dict, t_out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def extra_modules(self) -> list[nn.Module]:
        """Training-only modules trained with the student's optimizer at head lr (e.g. projectors)."""
        return []

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        back, head = split_params(self.student)
        extra = [p for m in self.extra_modules() for p in m.parameters() if p.requires_grad]
        groups = [{"params": back, "lr": lr, "lr_mult": 1.0},
                  {"params": head + extra, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult}]
        return [g for g in groups if g["params"]]

    def extra_state_dict(self) -> dict:
        return {}

    def load_extra_state_dict(self, state: dict) -> None:
        pass


@DISTILLERS.register("none")
class NoDistill(Distiller):
    """Student baseline: task loss only, no teacher."""

    uses_teacher = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None, recipe: Recipe) -> None:
        super().__init__(student, None, recipe)


def build_distiller(student: nn.Module, teacher: nn.Module | None, recipe: Recipe) -> Distiller:
    """Build the distiller that the recipe's ``distill.method`` names."""
    from . import apd, cwd, ifvd, kd, skd  # noqa: F401  (registration)

    cls = DISTILLERS.get(recipe.distill.method)
    if cls.uses_teacher and teacher is None:
        from ..errors import ApdError

        raise ApdError(f"distill.method '{recipe.distill.method}' needs a teacher "
                       "(teacher.name + teacher.checkpoint, or teacher.factory)")
    return cls(student, teacher, recipe)
