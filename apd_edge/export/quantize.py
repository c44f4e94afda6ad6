"""The Q/DQ writer: an explicitly quantized INT8 ONNX that TensorRT 10/11 and ONNX Runtime run.

ONNX Runtime's ``quant_pre_process`` + ``quantize_static`` (QDQ format, symmetric int8 activations and
weights, per-channel weights) write the graph from activation ranges that our streaming calibration
(``calibrate.py``) computed on real images. The final classifier conv and everything after it (Resize,
ArgMax) stay in float, and so do the nodes that mixed precision keeps in float (``int8.py``).
``check_qdq`` verifies TensorRT's rules on the result; ``to_cpu_variant`` derives the numerically identical
uint8-activation graph that ONNX Runtime's CPU kernels run fastest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ApdError

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# what gets Q/DQ: weighted ops (per-channel weights), residual adds, and ops that just pass int8 through.
# Not PRelu/Mul slopes or Resize: TensorRT takes Q/DQ weights only on weighted layers.
OP_TYPES_TO_QUANTIZE = WEIGHTED_OPS + ("Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip")


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def classifier_nodes(model: onnx.ModelProto, output_name: str = "logits") -> list[str]:
    """Names of the final classifier conv and every node downstream of it (Resize, ArgMax, ...).

    Walks back from ``output_name`` through unweighted ops to the first weighted op.
    """
    g = model.graph
    prod, cons = _producers(g), _consumers(g)
    inits = {i.name for i in g.initializer}
    node = prod.get(output_name)
    while node is not None and node.op_type not in WEIGHTED_OPS:
        nxt = next((i for i in node.input if i and i not in inits and i in prod), None)
        node = prod.get(nxt) if nxt else None
    if node is None:
        raise ApdError(f"cannot find the classifier (a Conv/Gemm) feeding output '{output_name}'")
    names, stack, seen = [], [node], set()
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        names.append(n.name)
        for o in n.output:
            stack.extend(cons.get(o, []))
    return names


def _ensure_node_names(model: onnx.ModelProto) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def prepare_for_quantization(fp32_path: str | Path, out_path: str | Path) -> onnx.ModelProto:
    """ONNX Runtime's ``quant_pre_process`` (shape inference, graph clean-up) plus unique node names."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    model = onnx.load(str(out_path))
    _ensure_node_names(model)
    onnx.save(model, str(out_path))
    return model


def quantize_int8(pre_path: str | Path, out_path: str | Path, ranges: dict[str, float], *,
                  nodes_to_exclude: Sequence[str] = (), exclude_classifier: bool = True,
                  per_channel: bool = True, quantize_bias: bool = False,
                  op_types: Sequence[str] = OP_TYPES_TO_QUANTIZE, check: bool = True,
                  exclude_outputs: Sequence[str] = ()) -> dict:
    """Write a symmetric Q/DQ ONNX at ``out_path`` from a prepared FP32 model and activation ranges.

    ``pre_path`` comes from ``prepare_for_quantization``; ``ranges`` maps each tensor of
    ``calibrate.tensors_to_calibrate`` to its clip value |x| <= amax (from our streaming calibration).
    ONNX Runtime's ``quantize_static`` writes the graph (it reads the ranges as a calibration cache).
    ``quantize_bias=False`` keeps conv biases in float (TensorRT fuses them; int32 bias DQ is not part of
    its Q/DQ rules). ``exclude_outputs``: op types whose outputs get no Q/DQ of their own (ONNX Runtime's QDQ
    writer quantizes a Conv's output too unless told not to); a consumer in ``op_types`` still quantizes
    its inputs. Returns a summary for the manifest.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    model = onnx.load(str(pre_path))
    excluded = list(dict.fromkeys(nodes_to_exclude))
    cls_nodes = classifier_nodes(model) if exclude_classifier else []
    excluded += [n for n in cls_nodes if n not in excluded]
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": quantize_bias,
             "OpTypesToExcludeOutputQuantization": list(exclude_outputs)}
    data = {k: (np.array(-v, np.float32), np.array(v, np.float32)) for k, v in ranges.items()}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs per-tensor notes: keep them off the user's terminal
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
            quantize_static(str(pre_path), str(out_path), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra, calibration_cache_path=cache)
    except KeyError as exc:
        raise ApdError(f"INT8: no calibration range for tensor {exc}; the calibration cache does not match "
                       "this model (delete calibration.npz and export again)") from None
    finally:
        root.setLevel(level)
    report = (assert_qdq_conformance(out_path, classifier=cls_nodes[:1] if cls_nodes else None) if check
              else check_qdq(out_path, classifier=cls_nodes[:1] if cls_nodes else None))
    return {"per_channel": per_channel, "symmetric": True, "quantize_bias": quantize_bias,
            "excluded_nodes": excluded, "classifier_nodes": cls_nodes, "op_types": list(op_types),
            "qdq_check": report}


def float_groups(qdq: onnx.ModelProto, pre: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """A copy of the Q/DQ graph in which ``nodes`` read float inputs (their Q/DQ and int8 weights bypassed).

    ``pre`` is the prepared FP32 model the Q/DQ graph was written from: node and initializer names are
    shared, so each floated node simply takes its original inputs back (activations and float weights).
    Q/DQ nodes left without consumers are pruned. This is how sensitivity analysis and mixed precision
    derive their variants in milliseconds instead of re-running the writer.
    """
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    g = m.graph
    orig = {n.name: n for n in pre.graph.node}
    pre_inits = {i.name: i for i in pre.graph.initializer}
    have = {i.name for i in g.initializer}
    for n in g.node:
        if n.name not in nodes:
            continue
        src = orig.get(n.name)
        if src is None or len(src.input) != len(n.input):
            raise ApdError(f"cannot keep {n.name!r} in float: it is not a node of the prepared FP32 graph")
        for k, name in enumerate(src.input):
            n.input[k] = name
            if name in pre_inits and name not in have:
                g.initializer.append(pre_inits[name])
                have.add(name)
    _prune(g)
    return m


def quantized_tensors(qdq: onnx.ModelProto) -> dict[str, list[str]]:
    """The activation tensors that carry a Q/DQ pair, in graph order, each with the nodes that read it
    dequantized. One such tensor is one mixed-precision group: the branches of an ESPNet module all read one
    quantized tensor, so keeping one branch conv in float leaves that tensor's rounding in place."""
    g = qdq.graph
    inits = {i.name for i in g.initializer}
    cons = _consumers(g)
    out: dict[str, list[str]] = {}
    for q in g.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        readers = out.setdefault(q.input[0], [])
        for dq in cons.get(q.output[0], []):
            if dq.op_type == "DequantizeLinear":
                readers += [n.name for n in cons.get(dq.output[0], []) if n.name not in readers]
    return out


def float_tensors(qdq: onnx.ModelProto, pre: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of the Q/DQ graph in which ``tensors`` (keys of ``quantized_tensors``) stay float: their readers
    take the float tensor, and a weighted node left with no quantized activation input gets its float weight
    back (``float_groups``): it is a float layer, not INT8 weights behind a float input."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    g = m.graph
    keep = set(tensors)
    q_of = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in keep}
    back = {n.output[0]: q_of[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in q_of}
    to_float = []
    for n in g.node:
        if n.op_type in WEIGHTED_OPS and n.input and n.input[0] in back:
            to_float.append(n.name)  # its data input goes float: the whole layer does
        for k, i in enumerate(n.input):
            if i in back:
                n.input[k] = back[i]
    _prune(g)
    return float_groups(m, pre, to_float) if to_float else m


def _prune(g: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads (repeatedly), then unused initializers."""
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [n for n in g.node if n not in dead]
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    keep_i = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_i)


def to_cpu_variant(qdq: str | Path | onnx.ModelProto, out_path: str | Path,
                   output_ranges: dict[str, float] | None = None) -> dict:
    """The Q/DQ graph rewritten for ONNX Runtime's CPU kernels; TensorRT keeps the original.

    Two changes, both for ONNX Runtime's QDQ fusions (a ``DQ -> Conv -> Q`` chain becomes one QLinearConv
    running VNNI/AMX u8s8 dot products; a Conv without a Q after it runs in float behind its DQs, slower
    than plain FP32):

    * activations become uint8 with zero point 128 at the same scale: exactly the values of symmetric int8
      with zero point 0, so this alone changes nothing numerically;
    * every quantized Conv/ConvTranspose whose output is not already quantized gets a Q/DQ pair on its
      output, scaled from ``output_ranges`` (the calibrated |x| range of that tensor). This adds one
      rounding per such conv, so the twin's accuracy is measured on its own (the bundle's parity table).

    Weight Q/DQ (constant inputs) stay int8. Last, ``cpu_graph.rewrite_for_ort_cpu`` swaps ops ONNX Runtime's
    CPU runs slowly (PRelu) for fast forms that give the same values.
    """
    m = qdq if isinstance(qdq, onnx.ModelProto) else onnx.load(str(qdq))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    prod, cons = _producers(g), _consumers(g)
    added = 0
    if output_ranges:
        zp0 = "apd_cpu_zero_point_s8"
        g.initializer.append(numpy_helper.from_array(np.array(0, np.int8), zp0))
        new_nodes: list[tuple[int, list[onnx.NodeProto]]] = []
        for idx, n in enumerate(g.node):
            if n.op_type not in ("Conv", "ConvTranspose"):
                continue
            if not any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in n.input[:2]):
                continue  # a float conv (classifier, mixed precision): leave it float
            out = n.output[0]
            users = cons.get(out, [])
            if not users or any(u.op_type == "QuantizeLinear" for u in users) or out not in output_ranges:
                continue
            if out in {o.name for o in g.output}:
                continue
            scale = np.array(max(float(output_ranges[out]), 1e-8) / 127.0, np.float32)
            sname = f"{out}_cpu_scale"
            g.initializer.append(numpy_helper.from_array(scale, sname))
            q = onnx.helper.make_node("QuantizeLinear", [out, sname, zp0], [f"{out}_cpu_q"], name=f"{out}_cpu_Q")
            dq = onnx.helper.make_node("DequantizeLinear", [f"{out}_cpu_q", sname, zp0], [f"{out}_cpu_dq"],
                                       name=f"{out}_cpu_DQ")
            for u in users:
                for k, i in enumerate(u.input):
                    if i == out:
                        u.input[k] = f"{out}_cpu_dq"
            new_nodes.append((idx, [q, dq]))
            added += 1
        for idx, nodes in reversed(new_nodes):  # keep the graph topologically sorted
            for k, node in enumerate(nodes):
                g.node.insert(idx + 1 + k, node)
        inits = {i.name: i for i in g.initializer}
        prod = _producers(g)
    changed: dict[str, str] = {}  # old zero-point name -> new uint8 one
    n_act = 0
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        x = n.input[0]
        if n.op_type == "DequantizeLinear":
            src = prod.get(x)
            if x in inits or src is None or src.op_type != "QuantizeLinear":
                continue  # a constant (weight) DQ
        elif x in inits:
            continue
        zp = n.input[2]
        if zp not in changed:
            arr = numpy_helper.to_array(inits[zp]) if zp in inits else constant_value(g, zp)
            if arr is None or arr.dtype != np.int8 or np.any(arr != 0):
                raise ApdError(f"CPU INT8 variant: {n.name} has zero point {arr!r}; expected symmetric int8 (0)")
            new = zp + "_u8"
            g.initializer.append(numpy_helper.from_array(np.full(arr.shape, 128, np.uint8), new))
            changed[zp] = new
        n.input[2] = changed[zp]
        n_act += 1
    # value_info of the quantized tensors says int8: drop it and let ORT infer uint8
    q_out = {n.output[0] for n in g.node if n.op_type == "QuantizeLinear"}
    keep = [vi for vi in g.value_info if vi.name not in q_out]
    del g.value_info[:]
    g.value_info.extend(keep)
    from .cpu_graph import rewrite_for_ort_cpu  # cpu_graph reads constants through this module

    rewritten = rewrite_for_ort_cpu(m)
    _prune(g)
    onnx.save(m, str(out_path))
    return {"activation_qdq_nodes": n_act, "activation_type": "uint8 (zero point 128)", "weight_type": "int8",
            "conv_outputs_quantized": added, "cpu_rewrites": rewritten}


# ---------------------------------------------------------------------------------------------------
# Conformance with TensorRT's explicit-quantization rules
# ---------------------------------------------------------------------------------------------------


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or a Constant node's output, else None."""
    for i in graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _axis(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return a.i
    return 1  # ONNX default


def check_qdq(model: str | Path | onnx.ModelProto, classifier: Sequence[str] | None = None) -> dict:
    """Check a Q/DQ model against TensorRT's rules; returns counts and a list of ``problems`` (empty = ok).

    Rules: every Q/DQ zero point present, int8 and all 0; weighted convs take per-output-channel weight
    scales (axis 0, length = out channels); the ``classifier`` nodes have float weights and unquantized
    outputs and no graph output
    comes out of a DequantizeLinear.
    """
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    g = m.graph
    prod, cons = _producers(g), _consumers(g)
    problems: list[str] = []
    n_q = n_dq = 0
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_q += n.op_type == "QuantizeLinear"
        n_dq += n.op_type == "DequantizeLinear"
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"{n.name}: no zero point (defaults to uint8)")
            continue
        zp = constant_value(g, n.input[2])
        if zp is None:
            problems.append(f"{n.name}: zero point is not a constant")
        elif zp.dtype != np.int8:
            problems.append(f"{n.name}: zero point dtype {zp.dtype}, expected int8")
        elif np.any(zp != 0):
            problems.append(f"{n.name}: non-zero zero point {zp.ravel()[:4]}")
    convs = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]
    quantized = 0
    for c in convs:
        w_dq = prod.get(c.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        quantized += 1
        src = w_dq.input[0]
        w = constant_value(g, src)
        if w is None and src in prod and prod[src].op_type == "QuantizeLinear":
            w = constant_value(g, prod[src].input[0])
        scale = constant_value(g, w_dq.input[1])
        if w is None or scale is None:
            problems.append(f"{c.name}: weight or weight scale is not constant")
            continue
        if w.dtype not in (np.int8, np.float32):
            problems.append(f"{c.name}: weight dtype {w.dtype}, expected int8")
        # output channels: Conv weights are (out, in/g, k...), ConvTranspose weights (in, out/g, k...)
        if c.op_type == "Conv":
            axis, out_ch = 0, w.shape[0]
        else:
            groups = next((a.i for a in c.attribute if a.name == "group"), 1)
            axis, out_ch = 1, w.shape[1]
            if groups != 1:  # per-channel axis 1 then covers out/g channels: TensorRT needs group == 1 here
                problems.append(f"{c.name}: quantized ConvTranspose with group={groups}")
        if scale.ndim != 1 or scale.shape[0] != out_ch or _axis(w_dq) != axis:
            problems.append(f"{c.name}: weight scale shape {scale.shape} axis {_axis(w_dq)}, "
                            f"expected per-channel ({out_ch},) on axis {axis}")
    for name in classifier or []:
        node = next((n for n in g.node if n.name == name), None)
        if node is None:
            problems.append(f"classifier node {name} not found")
            continue
        if any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in node.input[1:]):
            problems.append(f"classifier {name} has quantized weights")
        if any(c.op_type == "QuantizeLinear" for o in node.output for c in cons.get(o, [])):
            problems.append(f"classifier {name} output is quantized")
    for o in g.output:
        p = prod.get(o.name)
        if p is not None and p.op_type in ("DequantizeLinear", "QuantizeLinear"):
            problems.append(f"graph output {o.name} comes out of {p.op_type}")
    return {"quantize_nodes": n_q, "dequantize_nodes": n_dq, "convs": len(convs), "quantized_convs": quantized,
            "problems": problems}


def assert_qdq_conformance(model: str | Path | onnx.ModelProto, classifier: Sequence[str] | None = None) -> dict:
    """``check_qdq`` that raises ApdError on the first problems or when nothing got quantized."""
    report = check_qdq(model, classifier)
    if report["problems"]:
        raise ApdError("INT8 model breaks TensorRT Q/DQ rules: " + "; ".join(report["problems"][:3]))
    if report["quantized_convs"] == 0:
        raise ApdError("INT8 quantization produced no quantized Conv (check nodes_to_exclude)")
    return report


