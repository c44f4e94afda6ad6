"""Graph rewrites for ONNX Runtime's CPU provider that leave every output value unchanged.

ONNX Runtime's CPU ``PRelu`` with a per-channel slope runs through its generic broadcasting path and costs
several times an elementwise ``Mul``: on the ESPNet authors' CamVid model at 384x480 its 20 PReLUs took 8 of
39 ms (``benchmarks/results/int8_cpu_profile.md``). Written as ``Max(x, x * a)`` (every slope <= 1, none 0),
``Min(x, x * a)`` (every slope >= 1) or ``Relu(x) + Min(x, 0) * a`` (mixed), the same numbers come out of
ops ONNX Runtime runs fast: each form computes ``x`` or the one product ``x * a`` per element, exactly what
PRelu computes, infinities and NaN included (only a zero's sign may differ).

TensorRT fuses PReLU itself, so the bundle's TensorRT sources keep it; the rewrite goes only into the graphs
ONNX Runtime's CPU provider runs (``model_cpu.onnx``, ``model_int8_cpu.onnx``).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .quantize import constant_value


def _slope(g: onnx.GraphProto, name: str, identity: dict[str, str], inputs: set[str]) -> np.ndarray | None:
    """A PRelu slope's constant value, through Identity nodes (the exporter shares equal weights, e.g. untrained
    slopes, that way); None when it is not constant or is a graph input a caller can override at run time."""
    while name in identity:
        name = identity[name]
    return None if name in inputs else constant_value(g, name)


def _prelu_nodes(n: onnx.NodeProto, slope: np.ndarray, zero: str) -> list[onnx.NodeProto]:
    x, a, y = n.input[0], n.input[1], n.output[0]
    base = n.name or y
    ax = f"{y}_apd_xa"
    mul = helper.make_node("Mul", [x, a], [ax], name=f"{base}_mul")
    # a zero slope would make Max(+inf, +inf*0) NaN where PRelu gives +inf: those take the mixed form
    if np.all(slope <= 1) and not np.any(slope == 0):  # x > 0: x >= a*x; x < 0: a*x >= x (negative a too)
        return [mul, helper.make_node("Max", [x, ax], [y], name=f"{base}_max")]
    if np.all(slope >= 1):
        return [mul, helper.make_node("Min", [x, ax], [y], name=f"{base}_min")]
    pos, neg, nega = f"{y}_apd_pos", f"{y}_apd_neg", f"{y}_apd_nega"
    return [helper.make_node("Relu", [x], [pos], name=f"{base}_relu"),
            helper.make_node("Min", [x, zero], [neg], name=f"{base}_min"),
            helper.make_node("Mul", [neg, a], [nega], name=f"{base}_mul"),
            helper.make_node("Add", [pos, nega], [y], name=f"{base}_add")]  # one of the two terms is 0


def rewrite_for_ort_cpu(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite ``model`` in place for ONNX Runtime's CPU kernels; returns the count of rewritten ops by type.

    Only PRelu with a constant slope is rewritten; a float16 graph is left alone (its slope type differs and
    ONNX Runtime's CPU provider runs FP16 elementwise ops through casts anyway).
    """
    g = model.graph
    zero = "apd_cpu_zero_f32"
    out: list[onnx.NodeProto] = []
    counts: collections.Counter = collections.Counter()
    identity = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    inputs = {i.name for i in g.input}
    for n in g.node:
        slope = _slope(g, n.input[1], identity, inputs) if n.op_type == "PRelu" else None
        if slope is None or slope.dtype != np.float32 or not np.isfinite(slope).all():
            out.append(n)
            continue
        out.extend(_prelu_nodes(n, slope, zero))
        counts["PRelu"] += 1
    if counts:
        if any(zero in n.input for n in out) and not any(i.name == zero for i in g.initializer):
            g.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
        del g.node[:]
        g.node.extend(out)
    return dict(counts)


def write_cpu_graph(src: str, dst: str) -> dict[str, int]:
    """``src`` rewritten for ONNX Runtime's CPU into ``dst``; nothing is written when nothing changes."""
    m = onnx.load(src)
    counts = rewrite_for_ort_cpu(m)
    if counts:
        onnx.save(m, dst)
    return counts
