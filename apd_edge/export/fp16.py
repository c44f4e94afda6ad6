"""FP32 ONNX -> FP16 ONNX for strongly typed TensorRT builds (TensorRT 11 has no FP16 builder flag).

Walks the graph in topological order: every node computes in FP16 except numerically sensitive ops
(reductions, softmax, exp/log/pow, normalisations, argmax), which stay FP32. Float initializers used
by FP16 nodes are stored in FP16; ``Cast`` nodes are inserted wherever a tensor crosses between the two
domains. Graph inputs and outputs stay FP32 so callers never see the change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_FP32_OPS = frozenset({
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "GlobalAveragePool", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
    "Erf", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "ArgMax", "ArgMin", "TopK", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
})
# ops whose output dtype is fixed by an attribute or that pass types through untouched
_NEUTRAL_OPS = frozenset({"Cast", "Shape", "Size", "Constant", "ConstantOfShape", "NonZero"})
# float inputs that must stay FP32 whatever the node's precision (spec-fixed types), by op: input indices
_FIXED_FP32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}

_F32, _F16 = TensorProto.FLOAT, TensorProto.FLOAT16
_FP16_MAX = 65504.0


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def convert_fp16(src: str | Path, dst: str | Path, keep_fp32_ops: frozenset[str] | set[str] = KEEP_FP32_OPS,
                 keep_fp32_nodes: set[str] | None = None) -> dict:
    """Write an FP16 copy of ``src`` to ``dst``; returns a summary (node counts, FP32-kept op types)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)), strict_mode=True)
    g = model.graph
    types = _elem_types(model)
    keep_nodes = keep_fp32_nodes or set()
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}

    # FP32 initializers consumed by FP16 nodes get an FP16 twin; each tensor is cast at most once per dtype
    cur: dict[str, int] = {}  # float tensor name -> its current dtype in the new graph
    for inp in g.input:
        if types.get(inp.name) == _F32:
            cur[inp.name] = _F32
    for name, init in inits.items():
        if init.data_type == _F32:
            cur[name] = _F32

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    casts: dict[tuple[str, int], str] = {}
    half_inits: dict[str, str] = {}
    n16 = n32 = 0
    kept_ops: set[str] = set()

    def as_dtype(name: str, want: int) -> str:
        if cur.get(name) == want or name == "":
            return name
        if name in inits and inits[name].data_type == _F32 and want == _F16:
            if name not in half_inits:
                arr = numpy_helper.to_array(inits[name])
                arr16 = np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16)
                half_inits[name] = f"{name}__fp16"
                new_inits.append(numpy_helper.from_array(arr16, half_inits[name]))
                cur[half_inits[name]] = _F16
            return half_inits[name]
        key = (name, want)
        if key not in casts:
            out = f"{name}__to_{'fp16' if want == _F16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=want, name=f"Cast_{out}"))
            cur[out] = want
            casts[key] = out
        return casts[key]

    for node in g.node:
        float_in = [i for i, t in enumerate(node.input) if t and cur.get(t) in (_F32, _F16)]
        if node.op_type in _NEUTRAL_OPS or not float_in:
            new_nodes.append(node)
            for o in node.output:
                if types.get(o) in (_F32, _F16):
                    cur[o] = types[o]
            continue
        fp16 = node.op_type not in keep_fp32_ops and node.name not in keep_nodes
        want = _F16 if fp16 else _F32
        fixed = _FIXED_FP32_INPUTS.get(node.op_type, set())
        for i in float_in:
            node.input[i] = as_dtype(node.input[i], _F32 if i in fixed else want)
        new_nodes.append(node)
        if fp16:
            n16 += 1
        else:
            n32 += 1
            kept_ops.add(node.op_type)
        for o in node.output:
            if types.get(o) == _F32:
                cur[o] = want

    # graph outputs that ended up FP16: rename the producer's tensor and cast back under the public name
    renames: dict[str, str] = {}
    for o in g.output:
        if cur.get(o.name) == _F16:
            renames[o.name] = f"{o.name}__fp16"
    if renames:
        for node in new_nodes:
            for i, t in enumerate(node.output):
                if t in renames:
                    node.output[i] = renames[t]
            for i, t in enumerate(node.input):
                if t in renames:
                    node.input[i] = renames[t]
        for public, internal in renames.items():
            new_nodes.append(helper.make_node("Cast", [internal], [public], to=_F32, name=f"Cast_{public}_out"))

    used = {t for n in new_nodes for t in n.input}
    keep_inits = [i for i in g.initializer if i.name in used] + [i for i in new_inits if i.name in used]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    del g.value_info[:]
    assert all(o.name in graph_outputs for o in g.output)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return {"fp16_nodes": n16, "fp32_nodes": n32, "fp32_op_types": sorted(kept_ops),
            "casts": len(casts) + len(renames)}
