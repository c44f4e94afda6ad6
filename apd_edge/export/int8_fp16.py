"""An INT8 Q/DQ graph whose float parts compute in FP16 (what TensorRT runs fastest).

TensorRT builds a Q/DQ graph strongly typed (10.x with the flag, 11.x always): every layer runs in the type
the graph gives it. Written with FP32 scales, everything that is not quantized (the mixed-precision float
groups, the classifier, Resize, the ops between quantized convolutions) runs in FP32. The same graph with
FP16 scales (ONNX opset 19: a DequantizeLinear's output has its scale's type) and FP16 float layers runs
them in FP16, what TensorRT 10's INT8+FP16 builder flags did and what NVIDIA's Model Optimizer writes for
strongly typed builds. QuantizeLinear itself reads FP32 (see ``qdq_to_fp16``). Quantized values do not move:
a scale is rounded to FP16 and, for constant weights,
the int8 values are re-derived from the dequantized weights with the rounded scale (|q| <= 127 and a
relative rounding of 2^-11 keep them unchanged; a scale below FP16's normal range (2^-14, e.g. a first
convolution with the input normalisation folded in) keeps less precision and moves some weights by one step).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, version_converter

from ..errors import ApdError
from .fp16 import KEEP_FP32_OPS, convert_fp16
from .quantize import _axis

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MIN_OPSET = 19  # float16 scales on QuantizeLinear / DequantizeLinear
FP16_MIN = 2.0 ** -24  # the smallest positive FP16 (subnormal); scales below it would round to 0
FP16_MAX = 65504.0


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fp16_scales(model: onnx.ModelProto) -> dict:
    """Round every Q/DQ scale initializer to a positive FP16 value, in place, re-deriving constant int8 weights.

    Returns counts: scales, scales clamped up to the smallest FP16, weight values that changed.
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_scale: dict[str, np.ndarray] = {}
    clamped = moved = 0
    for n in g.node:
        if n.op_type not in QDQ_OPS or len(n.input) < 2:
            continue
        name = n.input[1]
        if name not in inits:
            raise ApdError(f"INT8 FP16: scale {name} of {n.name} is not an initializer")
        if name not in new_scale:
            s = numpy_helper.to_array(inits[name]).astype(np.float32)
            if not np.all(np.isfinite(s)) or np.any(s <= 0):
                raise ApdError(f"INT8 FP16: {n.name} has a non-positive or non-finite scale")
            clamped += int((s < FP16_MIN).sum())
            new_scale[name] = np.clip(s, FP16_MIN, FP16_MAX).astype(np.float16).astype(np.float32)
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # a constant (weight): re-derive q
            q_init = inits[n.input[0]]
            q = numpy_helper.to_array(q_init)
            if q.dtype != np.int8:
                continue
            s_old = numpy_helper.to_array(inits[name]).astype(np.float32)
            s_new = new_scale[name]
            if s_old.ndim == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[_axis(n) % q.ndim] = -1
                s_old, s_new = s_old.reshape(shape), s_new.reshape(shape)
            q2 = np.clip(np.rint(q.astype(np.float32) * s_old / s_new), -127, 127).astype(np.int8)
            moved += int((q2 != q).sum())
            q_init.CopyFrom(numpy_helper.from_array(q2, q_init.name))
    for name, s in new_scale.items():
        inits[name].CopyFrom(numpy_helper.from_array(s.astype(np.float32), name))
    return {"scales": len(new_scale), "scales_clamped": clamped, "weights_changed": moved}


def qdq_to_fp16(src: str | Path, dst: str | Path, keep_fp32_ops: frozenset[str] | set[str] = KEEP_FP32_OPS,
                quantize_fp32: bool = True) -> dict:
    """Write ``src`` (a Q/DQ graph with FP32 scales) to ``dst`` with FP16 scales and FP16 float layers.

    Graph inputs and outputs stay FP32; numerically sensitive ops stay FP32 as in the FP16 export. With
    ``quantize_fp32`` every QuantizeLinear reads its input in FP32 (a Cast before it; its scale holds the same
    FP16-rounded value in FP32): quantizing in FP16 arithmetic flips the rounding of values near a step's
    midpoint (on the ESPNet authors' CamVid model ONNX Runtime lost 0.65 mIoU that way on 12 val images,
    none with FP32 quantize; benchmarks/int8_fp16.py). Dequantized tensors and float layers stay FP16.
    Returns a summary for the manifest.
    """
    model = onnx.load(str(src))
    opset = _opset(model)
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    scales = fp16_scales(model)
    with tempfile.TemporaryDirectory(prefix="apd_int8fp16_") as tmp:
        mid = Path(tmp) / "scaled.onnx"
        onnx.save(model, str(mid))
        keep = set(keep_fp32_ops) | ({"QuantizeLinear"} if quantize_fp32 else set())
        summary = convert_fp16(mid, dst, keep_fp32_ops=keep)
    problems = check_fp16_qdq(dst)
    if problems:
        raise ApdError("INT8 FP16 graph: " + "; ".join(problems[:3]))
    return {"float_precision": "fp16", "quantize_in": "fp32" if quantize_fp32 else "fp16",
            "opset": max(opset, MIN_OPSET), **scales, **summary}


def check_fp16_qdq(model: str | Path | onnx.ModelProto) -> list[str]:
    """Problems of an FP16-scale Q/DQ graph: opset below 19, a DequantizeLinear scale that is not FP16, a scale
    that is not a positive finite FP16 value (a QuantizeLinear may keep it in FP32, rounded to FP16)."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    problems = []
    if _opset(m) < MIN_OPSET:
        problems.append(f"opset {_opset(m)} < {MIN_OPSET}: float16 Q/DQ scales need opset {MIN_OPSET}")
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        init = inits.get(n.input[1])
        if init is None:
            problems.append(f"{n.name}: scale is not an initializer")
            continue
        allowed = ((TensorProto.FLOAT16,) if n.op_type == "DequantizeLinear"
                   else (TensorProto.FLOAT16, TensorProto.FLOAT))
        if init.data_type not in allowed:
            problems.append(f"{n.name}: scale type {TensorProto.DataType.Name(init.data_type)}, expected FLOAT16")
            continue
        s = numpy_helper.to_array(init).astype(np.float32)
        if not np.all(np.isfinite(s)) or np.any(s < FP16_MIN) or not np.array_equal(s, s.astype(np.float16)):
            problems.append(f"{n.name}: scale not a positive finite FP16")
    return problems
