"""Model registry: ``build_model(name, num_classes, **kw)`` and ``list_models()``."""

from __future__ import annotations

from typing import Any

from ..registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register

# role of each registered model: "student" or "teacher"
MODEL_ROLES: dict[str, str] = {}


def register(name: str, role: str):
    """Register a model factory ``fn(num_classes, pretrained=False, **kw) -> nn.Module``."""

    def deco(fn):
        MODEL_ROLES[name] = role
        return MODELS.register(name)(fn)

    return deco


def _ensure_loaded() -> None:
    # importing the modules runs their @register decorators
    from . import bisenetv2, espnet, mobilenetv2, teachers  # noqa: F401


def build_model(name: str, num_classes: int, pretrained: bool = False, **kwargs: Any):
    """Build a registered model. Unknown names raise an ApdError with a suggestion."""
    _ensure_loaded()
    return MODELS.get(name)(num_classes=num_classes, pretrained=pretrained, **kwargs)


def list_models(role: str | None = None) -> list[str]:
    """Registered model names, optionally only ``"student"`` or ``"teacher"`` ones."""
    _ensure_loaded()
    return [n for n in MODELS.names() if role is None or MODEL_ROLES.get(n) == role]
