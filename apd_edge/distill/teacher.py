"""Frozen teachers: a registry model + checkpoint, or any user model with a forward-hooked feature module.

``build_teacher(recipe, num_classes)`` returns a module in eval mode with every parameter frozen and
exposing ``forward_dict(x, with_aux=False) -> {"out": logits at input size, "feat": features}``,
``feat_channels`` and ``feat_stride`` (the distillers' view of a teacher).
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_checkpoint
from ..config import Recipe
from ..errors import ApdError

_PROBE = 128  # side of the dummy input used to infer feature channels / stride


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _state_dict_of(ckpt: dict, path: str) -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint: ``model`` / ``state_dict`` entry or the dict itself."""
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not ckpt or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise ApdError(f"teacher.checkpoint {path}: no state dict of tensors found")
    if all(k.startswith("module.") for k in ckpt):  # saved from a DDP / DataParallel wrapper
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return ckpt


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        msg = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
        raise ApdError(f"teacher.checkpoint {path} does not fit the teacher model: {msg[:200]}") from None
    if missing or unexpected:
        raise ApdError(f"teacher.checkpoint {path} does not fit the teacher model (missing {len(missing)}, "
                       f"unexpected {len(unexpected)} keys, e.g. {(missing or unexpected)[0]})")


def _check_file(path: str) -> None:
    if not Path(path).exists():
        raise ApdError(f"teacher.checkpoint not found: {path}")


# ------------------------------------------------------------------------------ registry teachers
def _registry_teacher(recipe: Recipe, num_classes: int) -> nn.Module:
    from ..models import build_model

    cfg = recipe.teacher
    name = cfg.name
    ckpt = None
    if cfg.checkpoint:
        _check_file(cfg.checkpoint)
        ckpt = load_checkpoint(cfg.checkpoint)
        if name is None:  # a bare apd-edge checkpoint names its own model
            if "model_name" not in ckpt:
                raise ApdError(f"teacher.checkpoint {cfg.checkpoint} is not an apd-edge checkpoint: set teacher.name")
            name = ckpt["model_name"]
        if "model_name" in ckpt:
            if ckpt["model_name"] != name:
                raise ApdError(f"teacher.checkpoint {cfg.checkpoint} holds a '{ckpt['model_name']}' model, "
                               f"but teacher.name is '{name}'")
            if ckpt.get("num_classes") is not None and int(ckpt["num_classes"]) != num_classes:
                raise ApdError(f"teacher.checkpoint {cfg.checkpoint} was trained for {ckpt['num_classes']} classes, "
                               f"the data has {num_classes}")
    kwargs = dict(ckpt.get("model_kwargs", {})) if ckpt and "model_name" in ckpt else {}
    kwargs.update(cfg.kwargs)
    model = build_model(name, num_classes, **kwargs)
    if ckpt is not None:
        _load_weights(model, _state_dict_of(ckpt, cfg.checkpoint), cfg.checkpoint)
    else:
        warnings.warn(f"teacher '{name}' has no teacher.checkpoint: distilling from random weights", stacklevel=2)
    return freeze(model)


# ------------------------------------------------------------------------------ hooked teachers
def _import_factory(spec: str):
    if ":" not in spec:
        raise ApdError(f"teacher.factory {spec!r}: expected 'package.module:function'")
    mod_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ApdError(f"teacher.factory {spec!r}: cannot import module '{mod_name}' ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ApdError(f"teacher.factory {spec!r}: '{mod_name}' has no attribute '{part}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ApdError(f"teacher.factory {spec!r} is not callable")
    return obj


def _as_tensor(out: Any, what: str) -> torch.Tensor:
    if isinstance(out, dict):
        if "out" not in out:
            raise ApdError(f"{what} returned a dict without an 'out' entry (keys: {', '.join(map(str, out))})")
        out = out["out"]
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not torch.is_tensor(out) or out.dim() != 4:
        raise ApdError(f"{what} must give a B x C x H x W tensor, got {type(out).__name__}")
    return out


class HookedTeacher(nn.Module):
    """Wraps any model: logits from its forward, features from a forward hook on ``feat_module``."""

    def __init__(self, model: nn.Module, feat_module: str | None) -> None:
        super().__init__()
        self.model = model
        self.feat_module = feat_module
        self._feat: torch.Tensor | None = None
        if feat_module:
            modules = dict(model.named_modules())
            if feat_module not in modules:
                names = [n for n in modules if n]
                close = difflib.get_close_matches(feat_module, names, n=1, cutoff=0.3)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ApdError(f"teacher.feat_module: the model has no module '{feat_module}'{hint}")
            modules[feat_module].register_forward_hook(self._capture)
        self.feat_channels = 0
        self.feat_stride = 8

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._feat = output[0] if isinstance(output, (tuple, list)) else output

    def train(self, mode: bool = True) -> "HookedTeacher":
        return super().train(False)  # always frozen

    def forward_dict(self, x: torch.Tensor, with_aux: bool = False) -> dict[str, Any]:
        self._feat = None
        out = _as_tensor(self.model(x), "the teacher model")
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        feat, self._feat = self._feat, None
        if self.feat_module and not torch.is_tensor(feat):
            raise ApdError(f"teacher.feat_module '{self.feat_module}' did not produce a tensor during forward")
        return {"out": out, "aux": [], "feat": feat}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dict(x)["out"]


def _factory_teacher(recipe: Recipe, num_classes: int) -> nn.Module:
    cfg = recipe.teacher
    factory = _import_factory(cfg.factory)
    try:
        model = factory(**cfg.factory_kwargs)
    except TypeError as exc:
        raise ApdError(f"teacher.factory {cfg.factory!r} failed with teacher.factory_kwargs "
                       f"{cfg.factory_kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ApdError(f"teacher.factory {cfg.factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    if cfg.checkpoint:
        _check_file(cfg.checkpoint)
        _load_weights(model, _state_dict_of(load_checkpoint(cfg.checkpoint), cfg.checkpoint), cfg.checkpoint)
    teacher = freeze(HookedTeacher(model, cfg.feat_module))
    _probe(teacher, num_classes)
    return teacher


@torch.no_grad()
def _probe(teacher: HookedTeacher, num_classes: int) -> None:
    """One dummy forward: check the class count, infer ``feat_channels`` / ``feat_stride``."""
    ref = next(iter(teacher.parameters()), None)
    x = torch.zeros(1, 3, _PROBE, _PROBE, device=ref.device if ref is not None else "cpu",
                    dtype=ref.dtype if ref is not None else torch.float32)
    out = teacher.forward_dict(x)
    if out["out"].shape[1] != num_classes:
        raise ApdError(f"teacher.factory {teacher.model.__class__.__name__} predicts {out['out'].shape[1]} classes, "
                       f"the data has {num_classes}")
    feat = out["feat"]
    if feat is not None:
        if feat.dim() != 4:
            raise ApdError(f"teacher.feat_module '{teacher.feat_module}' outputs a {feat.dim()}-d tensor, "
                           "expected B x C x h x w")
        teacher.feat_channels = int(feat.shape[1])
        teacher.feat_stride = max(1, round(_PROBE / feat.shape[-1]))


# ------------------------------------------------------------------------------ entry point
def build_teacher(recipe: Recipe, num_classes: int) -> nn.Module:
    """The frozen teacher that ``recipe.teacher`` describes (eval mode, no parameter requires grad)."""
    cfg = recipe.teacher
    if cfg.factory:
        return _factory_teacher(recipe, num_classes)
    if cfg.name or cfg.checkpoint:
        return _registry_teacher(recipe, num_classes)
    raise ApdError("no teacher given: set teacher.name + teacher.checkpoint, or teacher.factory + teacher.feat_module")
