"""Parameters and multiply-accumulates counted from an ONNX graph (torch-free fallback for bundles
whose manifest does not record them).

Params: elements of every floating-point initializer (BatchNorm already folded by the exporter, so the
count can be slightly below PyTorch's). MACs per image: Conv, ConvTranspose, Gemm and MatMul only
(the same ops torch's FLOP counter counts), from shapes inferred by ``onnx.shape_inference``.
"""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Any


def _dims(vi) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            return None
    return out


def onnx_profile(path: str | Path) -> dict[str, Any]:
    """``{"params": int, "macs": int | None, "gmacs": float | None}`` for a float ONNX model."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    params = 0
    for t in init.values():
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            params += prod(t.dims) if t.dims else 1
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)  # follows Shape->Resize chains
    except Exception:  # shape inference fails on some custom graphs: params are still useful
        return {"params": params, "macs": None, "gmacs": None}
    shapes: dict[str, list[int] | None] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[vi.name] = _dims(vi)
    for name, t in init.items():
        shapes[name] = list(t.dims)
    batch = None
    for vi in inferred.graph.input:
        d = shapes.get(vi.name)
        if d and vi.name not in init:
            batch = d[0]
            break
    macs = 0
    for node in inferred.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        ins = [shapes.get(n) for n in node.input[:2]]
        out = shapes.get(node.output[0])
        if any(s is None for s in ins) or out is None:
            return {"params": params, "macs": None, "gmacs": None}
        x, w = ins
        if op == "Conv":
            macs += prod(out) * prod(w[1:])  # each output element: Cin/groups * kh * kw MACs
        elif op == "ConvTranspose":
            macs += prod(x) * prod(w[1:])  # each input element scatters into Cout/groups * kh * kw
        else:
            macs += prod(out) * x[-1]
    if batch:
        macs //= batch
    return {"params": params, "macs": macs, "gmacs": macs / 1e9}
