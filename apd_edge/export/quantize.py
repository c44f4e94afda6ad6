"""INT8 post-training quantization into an explicit Q/DQ ONNX that TensorRT 10/11 and ONNX Runtime run.

ONNX Runtime's ``quant_pre_process`` + ``quantize_static`` (QDQ format, symmetric int8 activations and
weights, per-channel weights), calibrated on real images preprocessed exactly like the runtime does.
The final classifier conv and everything after it (Resize, ArgMax) stay in float by default.
``check_qdq`` verifies TensorRT's rules on the result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ApdError

CALIB_METHODS = ("entropy", "minmax", "percentile")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# what gets Q/DQ: weighted ops (per-channel weights), residual adds, and ops that just pass int8 through.
# Not PRelu/Mul slopes or Resize: TensorRT takes Q/DQ weights only on weighted layers.
OP_TYPES_TO_QUANTIZE = WEIGHTED_OPS + ("Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip")


class ImageCalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed real images (one batch-1 input per call)."""

    def __init__(self, images: Iterable[np.ndarray], preprocess: Callable[[np.ndarray], np.ndarray],
                 input_name: str = "input"):
        self._images = iter(images)
        self._pre = preprocess
        self.input_name = input_name
        self.count = 0

    def get_next(self) -> dict | None:
        img = next(self._images, None)
        if img is None:
            return None
        self.count += 1
        return {self.input_name: self._pre(img)}

    def rewind(self) -> None:  # part of the reader protocol; a single pass is all quantize_static needs
        pass


def _entropy_ranges(model_path: Path, reader, op_types: list[str], tmp: Path) -> Path:
    """Entropy (KL) calibration with a fine histogram, saved as an onnxruntime calibration cache.

    ``quantize_static`` cannot pass histogram sizes to its entropy calibrator, whose defaults
    (128 bins, 128 quantized bins) leave a single candidate threshold: the full range, i.e. min-max.
    We run the calibrator with 2048 bins / 256 quantized bins (int8) and hand the ranges over.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(model_path, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"symmetric": True, "num_bins": 2048, "num_quantized_bins": 256})
    calibrator.collect_data(reader)
    path = tmp / "entropy_ranges.json"
    save_tensors_data(calibrator.compute_data(), path)
    return path


def _ranges_with_overrides(model_path: Path, reader, op_types: list[str], tmp: Path, method: str, percentile: float,
                           overrides: dict[str, float]) -> Path:
    """Calibrate as ``method`` would, then replace the ranges of ``overrides`` (tensor -> amax, symmetric),
    e.g. the frozen activation ranges of a QAT checkpoint; saved as a calibration cache for quantize_static."""
    from onnxruntime.quantization.calibrate import (CalibrationMethod, TensorData, create_calibrator,
                                                    save_tensors_data)

    cm, opts = {"entropy": (CalibrationMethod.Entropy, {"num_bins": 2048, "num_quantized_bins": 256}),
                "percentile": (CalibrationMethod.Percentile, {"percentile": percentile}),
                "minmax": (CalibrationMethod.MinMax, {})}[method]
    calibrator = create_calibrator(model_path, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=cm, extra_options={"symmetric": True, **opts})
    calibrator.collect_data(reader)
    data = calibrator.compute_data()
    for name, amax in overrides.items():
        if name in data.data:
            data.data[name] = TensorData(lowest=np.array(-amax, np.float32), highest=np.array(amax, np.float32))
    path = tmp / "ranges.json"
    save_tensors_data(data, path)
    return path


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


def quantize_int8(fp32_path: str | Path, out_path: str | Path, reader, *, method: str = "percentile",
                  nodes_to_exclude: Sequence[str] | None = None, exclude_classifier: bool = True,
                  per_channel: bool = True, quantize_bias: bool = False, percentile: float = 99.999,
                  op_types: Sequence[str] = OP_TYPES_TO_QUANTIZE,
                  range_overrides: Callable[[onnx.ModelProto], dict[str, float]] | None = None) -> dict:
    """Quantize ``fp32_path`` into a symmetric Q/DQ ONNX at ``out_path``; returns a summary for the manifest.

    ``quantize_bias=False`` keeps conv biases in float (TensorRT fuses them; int32 bias DQ is not part of
    its Q/DQ rules). ``range_overrides(graph) -> {tensor: amax}`` replaces calibrated ranges (QAT's).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise ApdError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    cm = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
          "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        model = onnx.load(str(pre))
        _ensure_node_names(model)
        onnx.save(model, str(pre))
        excluded = list(nodes_to_exclude or [])
        overrides = range_overrides(model) if range_overrides is not None else {}
        cls_nodes = classifier_nodes(model) if exclude_classifier else []
        excluded += [n for n in cls_nodes if n not in excluded]
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": quantize_bias,
                 "CalibPercentile": percentile, "CalibTensorRangeSymmetric": True}
        # onnxruntime prints progress and logs per-tensor warnings: keep them off the user's terminal
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cache = None
                if overrides:
                    cache = _ranges_with_overrides(pre, reader, list(op_types), Path(tmp), method, percentile, overrides)
                elif method == "entropy":
                    cache = _entropy_ranges(pre, reader, list(op_types), Path(tmp))
                quantize_static(str(pre), str(out_path), None if cache else reader, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(op_types), per_channel=per_channel,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=excluded, calibrate_method=cm, extra_options=extra,
                                calibration_cache_path=cache)
        finally:
            root.setLevel(level)
    report = assert_qdq_conformance(out_path, classifier=cls_nodes[:1] if cls_nodes else None)
    return {"method": method, "calib_images": getattr(reader, "count", None), "per_channel": per_channel,
            "symmetric": True, "quantize_bias": quantize_bias, "excluded_nodes": excluded, "op_types": list(op_types),
            **({"percentile": percentile} if method == "percentile" else {}), "qdq_check": report,
            **({"qat_ranges": len(overrides)} if overrides else {})}


# ---------------------------------------------------------------------------------------------------
# Conformance with TensorRT's explicit-quantization rules
# ---------------------------------------------------------------------------------------------------


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
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
    scales (axis 0, length = out channels); the ``classifier`` nodes have float weights and unquantized outputs and no graph output
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
        zp = _const(g, n.input[2])
        if zp is None:
            problems.append(f"{n.name}: zero point is not a constant")
        elif zp.dtype != np.int8:
            problems.append(f"{n.name}: zero point dtype {zp.dtype}, expected int8")
        elif np.any(zp != 0):
            problems.append(f"{n.name}: non-zero zero point {zp.ravel()[:4]}")
    convs = [n for n in g.node if n.op_type == "Conv"]
    quantized = 0
    for c in convs:
        w_dq = prod.get(c.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        quantized += 1
        src = w_dq.input[0]
        w = _const(g, src)
        if w is None and src in prod and prod[src].op_type == "QuantizeLinear":
            w = _const(g, prod[src].input[0])
        scale = _const(g, w_dq.input[1])
        if w is None or scale is None:
            problems.append(f"{c.name}: weight or weight scale is not constant")
            continue
        if w.dtype not in (np.int8, np.float32):
            problems.append(f"{c.name}: weight dtype {w.dtype}, expected int8")
        if scale.ndim != 1 or scale.shape[0] != w.shape[0] or _axis(w_dq) != 0:
            problems.append(f"{c.name}: weight scale shape {scale.shape} axis {_axis(w_dq)}, "
                            f"expected per-channel ({w.shape[0]},) on axis 0")
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


