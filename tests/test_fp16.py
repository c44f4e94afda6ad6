"""FP16 conversion (ONNX Runtime's converter + our passes and checks) on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from apd_edge.errors import ApdError
from apd_edge.export.fp16 import KEEP_FP32_OPS, check_fp16, convert_fp16, topological_sort


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _seg_like() -> onnx.ModelProto:
    """conv-relu, a ReduceMean gate (kept FP32), nearest Resize by constant scales, Min, ArgMax labels."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    w[0, 0, 0, 0] = 1e-9  # below FP16's smallest subnormal
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([1e5], np.float32), "big")]  # above FP16's 65504
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("ReduceMean", ["b"], ["m"], name="mean", axes=[2, 3], keepdims=1),
        helper.make_node("Mul", ["b", "m"], ["c"], name="mul"),
        helper.make_node("Resize", ["c", "", "scales"], ["d"], name="resize", mode="nearest"),
        helper.make_node("Min", ["d", "big"], ["logits"], name="min"),
        helper.make_node("ArgMax", ["logits"], ["labels"], name="argmax", axis=1, keepdims=0),
    ]
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 16]),
                   helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 16, 16])])


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_convert_keeps_fp32_io_and_sensitive_ops(tmp_path):
    onnx.save(_seg_like(), tmp_path / "a.onnx")
    summary = convert_fp16(tmp_path / "a.onnx", tmp_path / "a16.onnx")
    assert summary["fp16_nodes"] == 5 and summary["fp32_nodes"] == 2
    assert summary["fp32_op_types"] == ["ArgMax", "ReduceMean"]
    assert summary["casts"] == 5  # input, logits output, around ReduceMean (2), before ArgMax
    assert summary["clamped_weights"] == 2 and summary["converter"].startswith("onnxruntime ")
    half = onnx.load(str(tmp_path / "a16.onnx"))
    onnx.checker.check_model(half, full_check=True)  # topologically sorted, typed
    inits = {i.name: i for i in half.graph.initializer}
    assert inits["w"].data_type == TensorProto.FLOAT16 and inits["scales"].data_type == TensorProto.FLOAT
    assert float(numpy_helper.to_array(inits["big"])[0]) == 65504.0  # clamped, not inf
    assert numpy_helper.to_array(inits["w"])[0, 0, 0, 0] == np.float16(5.96e-08)  # clamped, not flushed to 0
    sess = ort.InferenceSession(str(tmp_path / "a16.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("x", "tensor(float)")]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [("logits", "tensor(float)"), ("labels", "tensor(int64)")]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref, out = _run(tmp_path / "a.onnx", x), _run(tmp_path / "a16.onnx", x)
    assert 0 < np.abs(out[0] - ref[0]).max() < 2e-3 * np.abs(ref[0]).max()  # FP16 compute: close, not equal
    assert (out[1] == ref[1]).mean() > 0.99


def _chain(constant: bool) -> onnx.ModelProto:
    """Relu -> Pow(., 1/3 as a Constant node) -> Exp -> ReduceSum -> Log -> output: FP32-kept ops in a row."""
    k = numpy_helper.from_array(np.array([1 / 3], np.float32), "k")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")]
    nodes += [helper.make_node("Constant", [], ["k"], name="k", value=k)] if constant else []
    nodes += [helper.make_node("Pow", ["r", "k"], ["p"], name="pow"),
              helper.make_node("Exp", ["p"], ["e"], name="exp"),
              helper.make_node("ReduceSum", ["e"], ["s"], name="sum", keepdims=1),
              helper.make_node("Log", ["s"], ["y"], name="log")]
    return _model(nodes, [] if constant else [k], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])


@pytest.mark.parametrize("constant", [True, False])
def test_fp32_kept_ops_read_unrounded_values(tmp_path, constant):
    """ORT's converter alone rounds the 1/3 Constant to FP16 and casts every FP32 op's output to FP16 and back:
    the sum (about 5e6 here) overflows FP16 and the log becomes inf. Our passes keep FP32 between FP32 ops."""
    onnx.save(_chain(constant), tmp_path / "c.onnx")
    summary = convert_fp16(tmp_path / "c.onnx", tmp_path / "c16.onnx")
    assert summary["fp32_op_types"] == ["Exp", "Log", "Pow", "ReduceSum"] and summary["fp16_nodes"] == 1
    x = np.arange(1, 1001, dtype=np.float32)[None]  # integers: exact in FP16
    ref, out = _run(tmp_path / "c.onnx", x)[0], _run(tmp_path / "c16.onnx", x)[0]
    assert np.isfinite(ref).all() and np.array_equal(out, ref)  # only the Relu ran in FP16: exact on these inputs


def test_an_initializer_shared_by_fp32_and_fp16_nodes_stays_exact_for_the_fp32_one(tmp_path):
    k = numpy_helper.from_array(np.array([1 / 3], np.float32), "k")
    nodes = [helper.make_node("Pow", ["x", "k"], ["p"], name="pow"),
             helper.make_node("Mul", ["p", "k"], ["y"], name="mul")]
    onnx.save(_model(nodes, [k], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])]), tmp_path / "s.onnx")
    convert_fp16(tmp_path / "s.onnx", tmp_path / "s16.onnx")
    half = onnx.load(str(tmp_path / "s16.onnx"))
    pow_node = next(n for n in half.graph.node if n.name == "pow")
    inits = {i.name: i for i in half.graph.initializer}
    assert inits[pow_node.input[1]].data_type == TensorProto.FLOAT  # Pow reads an FP32 copy
    assert inits["k"].data_type == TensorProto.FLOAT16  # the Mul reads the FP16 one


def test_check_fp16_refuses_wrong_precisions_and_changed_io(tmp_path):
    src = onnx.shape_inference.infer_shapes(_seg_like(), strict_mode=True)
    onnx.save(src, tmp_path / "a.onnx")
    convert_fp16(tmp_path / "a.onnx", tmp_path / "a16.onnx")
    half = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "a16.onnx")))
    assert check_fp16(src, half, KEEP_FP32_OPS, set())["fp32_nodes"] == 2
    with pytest.raises(ApdError, match=r"node 'mean' \(ReduceMean\) computes in FP32 but should be FP16"):
        check_fp16(src, half, set(KEEP_FP32_OPS) - {"ReduceMean"}, set())
    with pytest.raises(ApdError, match=r"node 'conv' \(Conv\) computes in FP16 but should be FP32"):
        check_fp16(src, half, KEEP_FP32_OPS, {"conv"})
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16_io = convert_float_to_float16(onnx.load(str(tmp_path / "a.onnx")), keep_io_types=False)
    with pytest.raises(ApdError, match="graph I/O changed"):
        check_fp16(src, fp16_io, KEEP_FP32_OPS, set())


def test_topological_sort_is_stable_and_complete():
    model = _seg_like()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[::-1])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    topological_sort(model.graph)
    assert [n.name for n in model.graph.node] == [n.name for n in nodes]
    onnx.checker.check_model(model)
