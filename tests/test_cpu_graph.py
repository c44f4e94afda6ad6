"""ONNX Runtime CPU rewrites (export/cpu_graph.py): PRelu becomes fast ops with bit-identical outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from apd_edge.export.cpu_graph import rewrite_for_ort_cpu, write_cpu_graph

C = 6
SLOPES = {
    "below_one": np.array([-0.7, -0.1, 0.5, 0.25, 0.9, 1.0], np.float32),  # negative slopes too: Max works
    "above_one": np.array([1.0, 1.5, 2.0, 3.0, 1.25, 7.0], np.float32),
    "mixed": np.array([-0.5, 0.2, 1.7, 1.0, 0.0, 4.0], np.float32),
    "zero_slope": np.array([-0.5, 0.2, 0.0, 1.0, 0.3, 0.1], np.float32),  # Max(+inf, +inf*0) would be NaN
}
SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 3e38], np.float32)


def _prelu_model(slope: np.ndarray, as_constant_node: bool = False, direct: bool = False) -> onnx.ModelProto:
    """Conv -> PRelu -> Add(x), or with ``direct`` PRelu on the input itself (to feed it inf, NaN, zeros)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 5, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 5, 7])
    a = numpy_helper.from_array(slope.reshape(C, 1, 1), "a")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["x" if direct else "c", "a"], ["p"], name="prelu"),
             helper.make_node("Add", ["p", "x"], ["y"], name="residual")]
    if direct:
        nodes = [nodes[1]]
        nodes[0].output[0] = "y"
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((C, C, 3, 3)).astype(np.float32), "w")
    inits = [w]
    if as_constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["a"], value=a))
    else:
        inits.append(a)
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("case,ops", [("below_one", ["Mul", "Max"]), ("above_one", ["Mul", "Min"]),
                                      ("mixed", ["Relu", "Min", "Mul", "Add"]),
                                      ("zero_slope", ["Relu", "Min", "Mul", "Add"])])
def test_prelu_rewrite_gives_the_same_values(case, ops):
    ref = _prelu_model(SLOPES[case])
    new = _prelu_model(SLOPES[case])
    assert rewrite_for_ort_cpu(new) == {"PRelu": 1}
    onnx.checker.check_model(new, full_check=True)
    types = [n.op_type for n in new.graph.node]
    assert "PRelu" not in types and types[1:-1] == ops
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((1, C, 5, 7)).astype(np.float32) * 3
        assert np.array_equal(_run(ref, x), _run(new, x))
    # PRelu straight on the input: zeros, infinities, NaN, denormals, huge values in every channel
    ref, new = _prelu_model(SLOPES[case], direct=True), _prelu_model(SLOPES[case], direct=True)
    rewrite_for_ort_cpu(new)
    x = np.resize(SPECIAL, (1, C, 5, 7)).astype(np.float32)
    x[0, :, 1:] = rng.standard_normal((C, 4, 7)).astype(np.float32)
    x[0, :, 0, :] = SPECIAL[:7]
    np.testing.assert_array_equal(_run(ref, x), _run(new, x))  # NaN equals NaN here; -0.0 equals 0.0


def test_slope_from_a_constant_node_and_graphs_without_prelu(tmp_path):
    m = _prelu_model(SLOPES["mixed"], as_constant_node=True)
    x = np.random.default_rng(2).standard_normal((1, C, 5, 7)).astype(np.float32)
    ref = _run(m, x)
    assert rewrite_for_ort_cpu(m) == {"PRelu": 1}
    assert np.array_equal(ref, _run(m, x))
    over = _prelu_model(SLOPES["below_one"])  # a slope a caller may override at run time: left as PRelu
    over.graph.input.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [C, 1, 1]))
    assert rewrite_for_ort_cpu(over) == {}
    onnx.save(m, str(tmp_path / "done.onnx"))  # nothing left to rewrite: nothing is written
    assert write_cpu_graph(str(tmp_path / "done.onnx"), str(tmp_path / "out.onnx")) == {}
    assert not (tmp_path / "out.onnx").exists()


def test_bundle_ships_the_cpu_graph_and_the_runtime_uses_it(tiny_bundle):
    """The tiny ESPNet has PReLUs: its bundle carries model_cpu.onnx, equal to model.onnx, run on CPU only."""
    from apd_edge.runtime.manifest import find_file
    from apd_edge.runtime.segmenter import Segmenter

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    n_prelu = sum(n.op_type == "PRelu" for n in onnx.load(str(tiny_bundle / "model.onnx")).graph.node)
    assert n_prelu > 0 and m["cpu_fp32"]["rewrites"] == {"PRelu": n_prelu}
    assert m["cpu_fp32"]["max_abs_diff"] == 0.0
    cpu = onnx.load(str(tiny_bundle / "model_cpu.onnx"))
    assert not any(n.op_type == "PRelu" for n in cpu.graph.node)
    twin = onnx.load(str(tiny_bundle / "model_int8_cpu.onnx"))
    assert not any(n.op_type == "PRelu" for n in twin.graph.node)
    assert any(n.op_type == "PRelu" for n in onnx.load(str(tiny_bundle / "model_int8.onnx")).graph.node)
    assert find_file(m, "onnx", "fp32")["path"] == "model.onnx"  # TensorRT's source keeps PRelu
    r = m["parity"]["results"]
    assert r["fp32_cpu"]["max_abs_diff"] == r["fp32"]["max_abs_diff"]
    assert r["fp32_cpu"]["agreement"] == r["fp32"]["agreement"]
    seg = Segmenter.from_bundle(tiny_bundle, backend="ort", precision="fp32", device="cpu")
    x = np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    ref = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    xin, _ = seg.preprocess(x)
    assert np.array_equal(seg.infer(xin, "logits"), ref.run(["logits"], {"input": xin})[0])
    assert seg.impl.path.name == "model_cpu.onnx"
