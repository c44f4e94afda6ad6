"""Fake quantization matching the INT8 Q/DQ graph the export writes (symmetric, zero point 0, [-127, 127]).

* Weights: per output channel, scale = max|w| / 127 over the channel, recomputed every forward (what the
  Q/DQ writer does with the exported weights); Conv2d channels on axis 0, ConvTranspose2d on axis 1.
* Activations: per tensor at the input of every quantized Conv/ConvTranspose, scale = amax / 127 where
  amax is an EMA of per-batch max|x| collected during a calibration pass, then frozen.
* The classifier (the last conv the eval forward runs) and everything after it stay float, as in the export.

BatchNorm is kept in eval mode (frozen statistics) rather than folded: with per-output-channel symmetric
scales, quantizing ``w`` and quantizing the folded ``w * gamma / sigma`` give the same grid up to that
per-channel factor, ``Q(s * w_c) = s * Q(w_c)``, so the frozen-BN model sees exactly the rounding of the
folded weights the ONNX export carries.

Gradients are straight-through: 1 where the value falls inside the clamping range, 0 outside
(``torch.fake_quantize_*``); scales are not learned.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

QMIN, QMAX = -127, 127  # symmetric int8 as the Q/DQ writer (and TensorRT) use it


def fake_quant_weight(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel symmetric fake quantization of ``w`` along ``axis`` (scale from max|w|, not learned)."""
    dims = [d for d in range(w.ndim) if d != axis]
    amax = w.detach().abs().amax(dim=dims)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax)).float()
    zp = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, axis, QMIN, QMAX)


def fake_quant_act(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric fake quantization with a fixed ``scale`` (gradient 1 inside the range, 0 outside)."""
    zp = torch.zeros((), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()).float(), zp, QMIN, QMAX)


class ActQuant(nn.Module):
    """Per-tensor activation fake quantizer with an EMA observer of max|x|.

    ``observe`` (calibration) updates ``amax`` and passes the input through unchanged; afterwards the
    range is frozen and ``forward`` fake-quantizes with ``scale = amax / 127``.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.observe = False
        self.enabled = True
        self.register_buffer("amax", torch.zeros(()))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    @property
    def scale(self) -> torch.Tensor:
        return torch.clamp(self.amax, min=1e-8) / QMAX

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            with torch.no_grad():
                cur = x.detach().abs().amax().float()
                if int(self.batches) == 0:
                    self.amax.copy_(cur)
                else:
                    self.amax.mul_(self.momentum).add_((1 - self.momentum) * cur)
                self.batches += 1
            return x
        if not self.enabled or int(self.batches) == 0:
            return x
        return fake_quant_act(x, self.scale)


class QATConv(nn.Module):
    """A Conv2d / ConvTranspose2d with fake-quantized input (per tensor) and weight (per output channel).

    Holds the original module as ``conv`` (same parameters, no copies).
    """

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, momentum: float = 0.9) -> None:
        super().__init__()
        self.conv = conv
        self.act = ActQuant(momentum)
        self.axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
        self.quant_weight = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        if not self.quant_weight or self.act.observe:
            return self.conv(x)
        w = fake_quant_weight(self.conv.weight, self.axis)
        c = self.conv
        if isinstance(c, nn.ConvTranspose2d):
            # output_padding is fixed at construction here (no output_size argument): the module's attribute
            return nn.functional.conv_transpose2d(x, w, c.bias, c.stride, c.padding, c.output_padding, c.groups,
                                                  c.dilation)
        return c._conv_forward(x, w, c.bias)


CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


def conv_call_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the Conv2d/ConvTranspose2d modules in the order the eval forward calls them."""
    names = {id(m): n for n, m in model.named_modules() if isinstance(m, CONV_TYPES)}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: order.append(names[id(mod)]))
             for m in model.modules() if isinstance(m, CONV_TYPES)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return order


def quantizable_convs(model: nn.Module, example: torch.Tensor) -> tuple[list[str], str]:
    """(convs to quantize in call order, the classifier's name): every conv the eval forward runs except the
    last one, the classifier, which stays float with everything after it (as ``classifier_nodes`` in export)."""
    order = list(dict.fromkeys(conv_call_order(model, example)))
    if not order:
        raise ValueError("model has no Conv2d/ConvTranspose2d to quantize")
    return order[:-1], order[-1]


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def insert_fake_quant(model: nn.Module, names: Iterable[str], momentum: float = 0.9) -> dict[str, QATConv]:
    """Replace the named convs of ``model`` (in place) by ``QATConv`` wrappers; returns them by name."""
    wrapped: dict[str, QATConv] = {}
    for name in names:
        conv = model.get_submodule(name)
        if not isinstance(conv, CONV_TYPES):
            raise ValueError(f"module {name} is a {type(conv).__name__}, not a Conv2d/ConvTranspose2d")
        q = QATConv(conv, momentum).to(conv.weight.device)
        _set_child(model, name, q)
        wrapped[name] = q
    return wrapped


def remove_fake_quant(model: nn.Module) -> nn.Module:
    """Put the original convs back (in place); the model is then an ordinary FP32 model again."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QATConv):
            _set_child(model, name, m.conv)
    return model


def fp32_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model has without its fake quantizers (keys of the plain model), detached copies."""
    wrappers = [n for n, m in model.named_modules() if isinstance(m, QATConv)]
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        for w in wrappers:
            pre = f"{w}."
            if key.startswith(pre):
                rest = key[len(pre):]
                if rest.startswith("act."):
                    key = None
                elif rest.startswith("conv."):
                    key = pre + rest[len("conv."):]
                break
        if key is not None:
            out[key] = value.detach().clone()
    return out


def set_observing(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.observe = on


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm in eval mode (running statistics fixed); its affine parameters still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def activation_scales(wrapped: dict[str, QATConv]) -> dict[str, float]:
    """Frozen activation scales (amax / 127) by module name."""
    return {n: float(q.act.scale) for n, q in wrapped.items()}


def load_activation_scales(wrapped: dict[str, QATConv], scales: dict[str, float]) -> None:
    """Set frozen ranges from a ``qat`` section (module name -> scale)."""
    missing = [n for n in wrapped if n not in scales]
    if missing:
        raise KeyError(f"no activation scale for {missing[0]}")
    for n, q in wrapped.items():
        q.act.amax.fill_(float(scales[n]) * QMAX)
        q.act.batches.fill_(1)
