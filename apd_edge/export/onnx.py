"""FP32 ONNX export of a model's eval forward (plain logits), with an optional ArgMax output."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import ApdError

INPUT_NAME = "input"
LOGITS_NAME = "logits"
LABELS_NAME = "labels"


class _WithArgmax(nn.Module):
    """Eval wrapper returning (logits, labels = argmax over classes, int64 N x H x W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits, torch.argmax(logits, dim=1)


def check_dynamic_support(model: nn.Module) -> None:
    """Refuse dynamic H/W for models with adaptive pooling to a size > 1 (PSP-style pyramid pooling)."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
            if any(s is not None and s != 1 for s in size):
                raise ApdError(f"--dynamic is not supported for this model: module '{name}' is an "
                               f"{type(m).__name__}(output_size={m.output_size}), which ONNX/TensorRT cannot "
                               "express for dynamic input sizes; export with a static --size instead")


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int], *, opset: int = 17,
                dynamic: bool = False, argmax: bool = False, batch: int = 1) -> dict:
    """Export ``model`` (eval mode, returns logits) to ``path``. Returns the I/O description.

    The graph is checked with ``onnx.checker`` and saved with inferred shapes.
    """
    if opset < 17:
        raise ApdError(f"opset {opset} is too old: apd-edge exports opset >= 17")
    model = model.eval()
    if dynamic:
        check_dynamic_support(model)
    H, W = input_size
    x = torch.zeros(batch, 3, H, W)
    with torch.no_grad():
        probe = model(x)
    if not isinstance(probe, torch.Tensor) or probe.ndim != 4 or tuple(probe.shape[2:]) != (H, W):
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ApdError(f"model eval forward must return logits N x C x {H} x {W}, got {got}")
    num_classes = int(probe.shape[1])
    net = _WithArgmax(model).eval() if argmax else model
    outputs = [LOGITS_NAME] + ([LABELS_NAME] if argmax else [])
    dyn = None
    if dynamic:
        dyn = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}, LOGITS_NAME: {0: "N", 2: "H", 3: "W"}}
        if argmax:
            dyn[LABELS_NAME] = {0: "N", 1: "H", 2: "W"}
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(path), input_names=[INPUT_NAME], output_names=outputs,
                              opset_version=opset, dynamic_axes=dyn, do_constant_folding=True, dynamo=False)
    except Exception as exc:
        raise ApdError(f"ONNX export failed at size {H}x{W}: {str(exc).strip().splitlines()[0][:300]}") from None
    finally:
        model.eval()  # the exporter restores each module's previous mode; make sure it is eval
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.save(m, str(path))
    sym = (lambda d, v: d if dynamic else v)  # noqa: E731
    io = {
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW",
                  "shape": [sym("N", batch), 3, sym("H", H), sym("W", W)],
                  "dynamic_axes": {"0": "N", "2": "H", "3": "W"} if dynamic else {}},
        "outputs": [{"name": LOGITS_NAME, "kind": "logits", "dtype": "float32",
                     "shape": [sym("N", batch), num_classes, sym("H", H), sym("W", W)]}],
        "num_classes": num_classes,
    }
    if argmax:
        io["outputs"].append({"name": LABELS_NAME, "kind": "labels", "dtype": "int64",
                              "shape": [sym("N", batch), sym("H", H), sym("W", W)]})
    return io
