"""Activation ranges of a QAT checkpoint (``ckpt["qat"]``) mapped onto the ONNX graph's tensor names.

QAT records one scale per quantized conv module (its input, per tensor, amax / 127). The ONNX exporter
names each node after the chain of module calls that ran it: ``/level2/level2.0/reduce/Conv`` is module
``level2.0.reduce`` (a Sequential's child repeats its parent's name as a prefix), ``/level2_0/branches.0/Conv``
is ``level2_0.branches.0``. Node order is not call order (graph optimisation reorders), so names are used.
A tensor feeding several quantized convs gets the largest of their ranges.
"""

from __future__ import annotations

from typing import Callable

import onnx

from ..errors import ApdError

CONV_OPS = ("Conv", "ConvTranspose")


def module_of_node(node_name: str) -> str:
    """The dotted module name an exported node comes from ('' when the name carries no scope)."""
    segs = [p for p in node_name.split("/") if p][:-1]
    acc: list[str] = []
    for s in segs:
        if acc and s.startswith(acc[-1] + "."):
            acc[-1] = s
        else:
            acc.append(s)
    return ".".join(acc)


def qat_ranges_for_onnx(graph_model: onnx.ModelProto, qat: dict) -> dict[str, float]:
    """{conv input tensor name: amax} for every conv node whose module QAT quantized."""
    scales = qat.get("act_scales") or {}
    qmax = int((qat.get("scheme") or {}).get("qmax", 127))
    ranges: dict[str, float] = {}
    found: set[str] = set()
    for node in graph_model.graph.node:
        if node.op_type not in CONV_OPS:
            continue
        name = module_of_node(node.name)
        if name in scales:
            found.add(name)
            t = node.input[0]
            ranges[t] = max(ranges.get(t, 0.0), float(scales[name]) * qmax)
    missing = sorted(set(scales) - found)
    if missing:
        raise ApdError(f"QAT ranges: {len(missing)} quantized modules have no conv node in the ONNX graph "
                       f"(e.g. {missing[0]}); export with qat_ranges=False")
    return ranges


def qat_range_overrides(qat: dict) -> Callable[[onnx.ModelProto], dict[str, float]]:
    """A function the INT8 writer calls with the graph it quantizes; returns {tensor: amax} from QAT."""
    return lambda graph_model: qat_ranges_for_onnx(graph_model, qat)
