"""FP32 ONNX -> FP16 ONNX for strongly typed TensorRT builds (TensorRT 11 has no FP16 builder flag).

The conversion is ONNX Runtime's ``float16.convert_float_to_float16``: every node computes in FP16 except
the numerically sensitive ops of ``KEEP_FP32_OPS`` (reductions, softmax, exp/log/pow, normalisations,
argmax), which stay FP32 behind inserted ``Cast`` nodes; graph inputs and outputs stay FP32 so callers
never see the change. Around it, ours:

- before: ``_exact_inputs_for_fp32_nodes``, after: ``_drop_cast_round_trips``. The converter alone rounds
  what FP32-kept ops read: it halves every float ``Constant`` node and every initializer with any FP16
  consumer, and wraps each FP32-kept node in casts of its own, so a tensor between two FP32-kept ops goes
  through FP16. Measured (onnxruntime 1.32, tests/test_fp16.py): Relu -> Pow(., 1/3) -> Exp -> ReduceSum
  -> Log on x = 1..1000 gives inf (the sum, 5.4e6, overflows FP16) instead of 15.5; a 1/3 exponent read
  as a Constant by Pow gives a 3.8e-4 relative error instead of 0. Our students contain neither pattern
  (with or without the passes their FP16 outputs are bit-identical; MobileNetV2's Clip bounds 0 and 6
  become initializers instead of Constant nodes), other models may.
- the graph is put back in topological order (the converter appends its casts at the end of the node
  list, which the ONNX checker refuses), shapes are re-inferred strictly, the
  checker runs, and ``check_fp16`` verifies the result against the source.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import ApdError

KEEP_FP32_OPS = frozenset({
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "GlobalAveragePool", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
    "Erf", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "ArgMax", "ArgMin", "TopK", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
})
# ops whose output dtype is fixed by an attribute or that pass types through untouched: not counted as compute
_NEUTRAL_OPS = frozenset({"Cast", "Shape", "Size", "Constant", "ConstantOfShape", "NonZero"})
# float inputs whose type the spec fixes independently of the data (they may stay FP32 in an FP16 node)
_FIXED_FLOAT_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}

_F32, _F16 = TensorProto.FLOAT, TensorProto.FLOAT16
_FLOATS = (_F32, _F16)
_FP16_MAX = 65504.0


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (after shape inference): I/O, value_info, initializers, constants."""
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


def _io_signature(vis) -> list[tuple[str, int, tuple]]:
    return [(v.name, v.type.tensor_type.elem_type,
             tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)) for v in vis]


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (stable: ties keep the old order)."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[t] for t in n.input if t in producer} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ApdError(f"FP16 conversion produced a graph with a cycle ({len(nodes) - len(order)} nodes unreachable)")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _node_precision(node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    """The float type a node computes in (its float data inputs'), None for non-float or neutral nodes."""
    if node.op_type in _NEUTRAL_OPS:
        return None
    fixed = _FIXED_FLOAT_INPUTS.get(node.op_type, set())
    got = {types.get(t) for i, t in enumerate(node.input) if t and i not in fixed} & set(_FLOATS)
    if len(got) > 1:
        raise ApdError(f"FP16 check: node {node.name!r} ({node.op_type}) mixes FP16 and FP32 inputs")
    return got.pop() if got else None


def check_fp16(src: onnx.ModelProto, half: onnx.ModelProto, keep_fp32_ops: frozenset[str] | set[str],
               keep_fp32_nodes: set[str]) -> dict:
    """Verify an FP16 graph against its (shape-inferred) FP32 source; returns the converter summary.

    Checks: the same graph inputs and outputs (names, types, shapes: FP32 I/O); every source node still
    there; blocked op types and nodes compute in FP32, every other float node in FP16; no FP32 initializer
    feeds an FP16 node; every FP16 initializer finite where its source was (clamped to +-65504, not inf).
    """
    if _io_signature(half.graph.input) != _io_signature(src.graph.input) or \
            _io_signature(half.graph.output) != _io_signature(src.graph.output):
        raise ApdError(f"FP16 check: graph I/O changed: {_io_signature(half.graph.input)} -> "
                       f"{_io_signature(half.graph.output)} (expected the FP32 source's)")
    types = _elem_types(half)
    src_names = {n.name for n in src.graph.node}
    by_name = {n.name: n for n in half.graph.node}
    missing = sorted(src_names - set(by_name))
    if missing:
        raise ApdError(f"FP16 check: source nodes missing after conversion: {missing[:5]}")
    n16 = n32 = 0
    kept_ops: set[str] = set()
    for node in half.graph.node:
        if node.name not in src_names:
            continue  # a cast the converter inserted
        prec = _node_precision(node, types)
        if prec is None:
            continue
        blocked = node.op_type in keep_fp32_ops or node.name in keep_fp32_nodes
        if blocked != (prec == _F32):
            raise ApdError(f"FP16 check: node {node.name!r} ({node.op_type}) computes in "
                           f"{'FP32' if prec == _F32 else 'FP16'} but should be {'FP32' if blocked else 'FP16'}")
        if blocked:
            n32 += 1
            kept_ops.add(node.op_type)
        else:
            n16 += 1
    src_inits = {i.name: i for i in src.graph.initializer}
    for init in half.graph.initializer:
        if init.data_type != _F16:
            continue
        arr = numpy_helper.to_array(init)
        if not np.isfinite(arr).all():
            orig = src_inits.get(init.name)
            if orig is None or np.isfinite(numpy_helper.to_array(orig)).all():
                raise ApdError(f"FP16 check: initializer {init.name!r} has non-finite values after conversion")
    casts = sum(n.op_type == "Cast" for n in half.graph.node) - sum(n.op_type == "Cast" for n in src.graph.node)
    return {"fp16_nodes": n16, "fp32_nodes": n32, "fp32_op_types": sorted(kept_ops), "casts": casts}


def _clamped_weights(model: onnx.ModelProto, converted: set[str]) -> int:
    """How many values of the ``converted`` FP32 weights fall outside FP16's range (the converter clamps them
    to +-65504, and nonzero ones below the smallest subnormal to +-5.96e-8)."""
    n = 0
    for init in model.graph.initializer:
        if init.data_type == _F32 and init.name in converted:
            a = np.abs(numpy_helper.to_array(init))
            n += int(((a > _FP16_MAX) & np.isfinite(a)).sum() + ((a > 0) & (a < 5.96e-08)).sum())
    return n


def _exact_inputs_for_fp32_nodes(model: onnx.ModelProto, blocked) -> None:
    """Before the converter, which halves every float ``Constant`` node and every initializer with any FP16
    consumer: float constants become initializers, and an initializer feeding both FP32-kept and FP16 nodes
    gets a copy for the FP32 ones. FP32-kept nodes then read their constants unrounded (as before issue 17)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    nodes = []
    for n in g.node:
        if (n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"
                and n.attribute[0].t.data_type == _F32 and n.output[0] not in outputs):
            t = TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    inits = {i.name: i for i in g.initializer if i.data_type == _F32}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for i, t in enumerate(n.input):
            if t in inits:
                uses.setdefault(t, []).append((n, i))
    for name, where in uses.items():
        fp32 = [(n, i) for n, i in where if blocked(n)]
        if fp32 and len(fp32) < len(where):
            twin = TensorProto()
            twin.CopyFrom(inits[name])
            twin.name = f"{name}__fp32"
            g.initializer.append(twin)
            for n, i in fp32:
                n.input[i] = twin.name


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _drop_cast_round_trips(model: onnx.ModelProto) -> None:
    """After the converter, which wraps each FP32-kept node in casts of its own: an FP32 tensor cast to FP16
    and straight back to FP32 (between two FP32-kept nodes, or before an FP32 graph output) is used unrounded."""
    g = model.graph
    types = _elem_types(onnx.shape_inference.infer_shapes(model))
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    graph_inputs = {i.name for i in g.input}
    rename: dict[str, str] = {}
    drop: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type != "Cast" or _cast_to(n) != _F32:
            continue
        inner = producer.get(n.input[0])
        if inner is None or inner.op_type != "Cast" or _cast_to(inner) != _F16 or types.get(inner.input[0]) != _F32:
            continue
        exact, public = inner.input[0], n.output[0]
        if public in outputs:  # the public name must stay: the FP32 tensor takes it, this cast goes
            if exact in outputs or exact in graph_inputs or exact in rename:
                continue
            rename[exact] = public
            drop.append(n)
        else:
            rename[public] = exact
    if not rename:
        return
    for n in drop:
        g.node.remove(n)
    produced_as = {k: v for k, v in rename.items() if v in outputs}  # the FP32 producer writes the public name
    for n in g.node:
        n.input[:] = [rename.get(t, t) for t in n.input]
        n.output[:] = [produced_as.get(t, t) for t in n.output]
    # casts whose output nobody reads any more
    while True:
        read = {t for n in g.node for t in n.input} | outputs
        dead = [n for n in g.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)


def convert_fp16(src: str | Path, dst: str | Path, keep_fp32_ops: frozenset[str] | set[str] = KEEP_FP32_OPS,
                 keep_fp32_nodes: set[str] | None = None) -> dict:
    """Write an FP16 copy of ``src`` to ``dst``; returns a summary (node counts, FP32-kept op types, casts)."""
    import onnxruntime
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep_nodes = set(keep_fp32_nodes or ())
    source = onnx.shape_inference.infer_shapes(onnx.load(str(src)), strict_mode=True)
    _exact_inputs_for_fp32_nodes(source, lambda n: n.op_type in keep_fp32_ops or n.name in keep_nodes)
    work = onnx.ModelProto()
    work.CopyFrom(source)  # the converter edits its argument in place
    half = convert_float_to_float16(work, keep_io_types=True, op_block_list=sorted(keep_fp32_ops),
                                    node_block_list=sorted(keep_nodes), disable_shape_infer=True)
    topological_sort(half.graph)
    del half.graph.value_info[:]  # re-inferred below from the converted types
    _drop_cast_round_trips(half)
    half = onnx.shape_inference.infer_shapes(half, strict_mode=True)
    onnx.checker.check_model(half)
    summary = check_fp16(source, half, keep_fp32_ops, keep_nodes)
    halved = {i.name for i in half.graph.initializer if i.data_type == _F16}
    summary["clamped_weights"] = _clamped_weights(source, halved)
    summary["converter"] = f"onnxruntime {onnxruntime.__version__} transformers.float16"
    onnx.save(half, str(dst))
    return summary
