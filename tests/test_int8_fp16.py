"""The INT8 graph with FP16 scales and FP16 float layers (what TensorRT's strongly typed build runs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from apd_edge.errors import ApdError
from apd_edge.export.calibrate import tensors_to_calibrate
from apd_edge.export.int8_fp16 import FP16_MIN, check_fp16_qdq, fp16_scales, qdq_to_fp16
from apd_edge.export.quantize import (OP_TYPES_TO_QUANTIZE, check_qdq, classifier_nodes, prepare_for_quantization,
                                      quantize_int8)

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime (the deploy extra) runs the graphs")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.cls = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y)) + y
        return self.cls(y)


@pytest.fixture(scope="module")
def qdq32(tmp_path_factory):
    """A Q/DQ graph with FP32 scales, ranges measured on the inputs the test feeds."""
    d = tmp_path_factory.mktemp("int8fp16")
    fp32, pre_path, out = d / "model.onnx", d / "pre.onnx", d / "int8.onnx"
    torch.onnx.export(Net().eval(), torch.zeros(1, 3, 32, 32), str(fp32), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    pre = prepare_for_quantization(fp32, pre_path)
    names = tensors_to_calibrate(pre, OP_TYPES_TO_QUANTIZE)
    probe = onnx.load(str(pre_path))
    probe.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names
                               if n not in {o.name for o in probe.graph.output}])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    amax = {n: 0.0 for n in names}
    for x in _inputs(4):
        for name, v in zip(outs, sess.run(None, {"input": x})):
            if name in amax:
                amax[name] = max(amax[name], float(np.abs(v).max()))
    quantize_int8(pre_path, out, amax)
    return out


def _inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(n)]


def test_fp16_graph_is_trt_valid_and_close_to_the_fp32_scale_graph(qdq32, tmp_path):
    dst = tmp_path / "int8_fp16.onnx"
    info = qdq_to_fp16(qdq32, dst)
    m = onnx.load(str(dst))
    assert info["opset"] == 19 and next(o.version for o in m.opset_import if o.domain == "") == 19
    assert check_fp16_qdq(m) == []
    assert check_qdq(m, classifier=classifier_nodes(onnx.load(str(qdq32)))[:1])["problems"] == []
    inits = {i.name: i for i in m.graph.initializer}
    dqs = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in dqs)
    # quantizing happens in FP32 (FP16 arithmetic flips roundings), with the FP16-rounded scale
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(inits[n.input[1]].data_type == TensorProto.FLOAT for n in qs)
    prod = {o: n for n in m.graph.node for o in n.output}
    assert all(prod[n.input[0]].op_type == "Cast" for n in qs if n.input[0] in prod)
    # the classifier conv computes in FP16 too; the graph's I/O stay FP32
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert all(inits[c.input[1]].data_type == TensorProto.FLOAT16 for c in convs if c.input[1] in inits)
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    a = ort.InferenceSession(str(qdq32), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    for x in _inputs(3):
        ya, yb = a.run(None, {"input": x})[0], b.run(None, {"input": x})[0]
        assert np.abs(ya - yb).mean() <= 0.02 * np.abs(ya).mean()
        assert np.mean(ya.argmax(1) == yb.argmax(1)) > 0.97
    assert check_fp16_qdq(onnx.load(str(qdq32)))  # the FP32-scale graph is not an FP16 one


def _dq_graph(w_q: np.ndarray, scale: np.ndarray, axis: int) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["y"], axis=axis, name="dq")], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(w_q.shape))],
        [numpy_helper.from_array(w_q, "w"), numpy_helper.from_array(scale.astype(np.float32), "s"),
         numpy_helper.from_array(np.zeros(len(scale), np.int8), "z")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_weights_keep_their_values_and_dead_channels_go_to_zero():
    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, (3, 4, 3, 3)).astype(np.int8)
    # channel 0: an ordinary scale; 1: below FP16's normal range (subnormal); 2: below the smallest FP16
    scale = np.array([0.0123, 3.1e-6, 1e-20])
    m = _dq_graph(q, scale, axis=0)
    info = fp16_scales(m)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    s16 = inits["s"]
    assert np.array_equal(s16, s16.astype(np.float16).astype(np.float32)) and s16.min() >= FP16_MIN
    assert info["scales_clamped"] == 1
    assert np.array_equal(inits["w"][0], q[0])  # rounding the scale by 2^-11 never moves |q| <= 127
    w_old, w_new = q[1] * scale[1], inits["w"][1] * s16[1]
    assert np.abs(w_new - w_old).max() <= 0.5 * s16[1] + 1e-12  # re-derived within half a step
    assert not inits["w"][2].any()  # a channel of ~1e-18 weights is zero, as it was in effect
    assert info["weights_changed"] >= q[2].size - int((q[2] == 0).sum())


def test_refuses_a_zero_scale():
    m = _dq_graph(np.ones((2, 1, 1, 1), np.int8), np.array([0.1, 0.0]), axis=0)
    with pytest.raises(ApdError, match="non-positive"):
        fp16_scales(m)


def test_auto_float_precision_rule():
    from apd_edge.export.int8 import auto_keeps_fp16

    assert auto_keeps_fp16(0.70, 0.66, 0.5)  # both miss, FP16 within the tolerance: the faster graph
    assert not auto_keeps_fp16(0.90, 0.66, 0.5)  # both miss, FP16 costs 0.24 more
    assert not auto_keeps_fp16(0.55, 0.45, 0.5)  # FP16 would lose the target FP32 float layers meet
    assert auto_keeps_fp16(0.48, 0.45, 0.5) and auto_keeps_fp16(None, None, 0.5)
