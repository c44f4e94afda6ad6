"""INT8: streaming calibration, sensitivity, mixed precision, the gate, the CPU twin, ConvTranspose checks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from apd_edge.export.calibrate import HistogramCollector, collect_histograms, tensors_to_calibrate
from apd_edge.export.int8 import EvalSet, build_int8
from apd_edge.export.quantize import (OP_TYPES_TO_QUANTIZE, WEIGHTED_OPS, check_qdq, float_tensors,
                                     prepare_for_quantization, quantize_int8, quantized_tensors, to_cpu_variant)
from apd_edge.runtime.preprocess import preprocess_image

SIZE = (32, 32)
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


# ------------------------------------------------------------------------------------------------
# histograms
# ------------------------------------------------------------------------------------------------
def test_histogram_grows_range_without_losing_values():
    rng = np.random.default_rng(0)
    c = HistogramCollector(["t"], bins=256, max_samples=1 << 30)
    chunks = [rng.normal(0, s, 5000).astype(np.float32) for s in (0.1, 1.0, 30.0)]  # each widens the range
    for ch in chunks:
        c.update("t", ch)
        c.images += 1
    allv = np.abs(np.concatenate(chunks))
    assert c.hist["t"].sum() == allv.size  # nothing dropped by the pairwise merges
    assert c.amax("t", "minmax") == pytest.approx(allv.max())
    width = c.hi["t"] / c.bins
    for p in (50.0, 99.0, 99.9):
        assert abs(c.amax("t", "percentile", p) - np.percentile(allv, p)) <= 2 * width
    # the histogram equals one computed in one go over the final range
    ref, _ = np.histogram(allv, bins=c.bins, range=(0, c.hi["t"]))
    assert np.array_equal(ref, c.hist["t"])


def test_entropy_percentile_mse_clip_outliers_minmax_does_not():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(0, 1, 200_000), [200.0]]).astype(np.float32)  # one far outlier
    c = HistogramCollector(["t"], bins=2048, max_samples=1 << 30)
    c.update("t", v)
    assert c.amax("t", "minmax") == pytest.approx(200.0)
    for m in ("entropy", "percentile"):
        assert 2.0 < c.amax("t", m) < 20.0, m
    # mse weighs the outlier's squared clipping error against 200k rounding errors: it clips, but less
    assert 20.0 < c.amax("t", "mse") < 150.0


def test_cache_roundtrip_and_key(tmp_path):
    c = HistogramCollector(["a", "b"], bins=256)
    c.update("a", np.linspace(-3, 3, 1000, dtype=np.float32))
    c.update("b", np.zeros(10, np.float32))
    c.images = 1
    c.save(tmp_path / "calibration.npz", key="k1")
    d = HistogramCollector.load(tmp_path / "calibration.npz", key="k1")
    assert d is not None and d.images == 1
    assert np.array_equal(d.hist["a"], c.hist["a"]) and d.amax("a", "minmax") == c.amax("a", "minmax")
    assert HistogramCollector.load(tmp_path / "calibration.npz", key="other") is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert HistogramCollector.load(tmp_path / "bad.npz") is None


_MEM_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, onnx, torch
    from torch import nn
    from apd_edge.export.calibrate import collect_histograms, tensors_to_calibrate
    from apd_edge.export.quantize import OP_TYPES_TO_QUANTIZE, prepare_for_quantization
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 4, 1)).eval()
    path, pre = sys.argv[2] + "/m.onnx", sys.argv[2] + "/pre.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 256, 256), path, input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    model = prepare_for_quantization(path, pre)
    names = tensors_to_calibrate(model, OP_TYPES_TO_QUANTIZE)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((1, 3, 256, 256)).astype(np.float32) for _ in range(int(sys.argv[1])))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = collect_histograms(model, names, inputs, threads=1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(c.images, before, after)
""")


def test_calibration_memory_does_not_grow_with_images(tmp_path):
    """Peak RSS of a 4-image and a 48-image calibration differ by far less than the 44 extra images' activations."""
    peaks = {}
    for n in (4, 48):
        d = tmp_path / str(n)
        d.mkdir()
        out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(n), str(d)], capture_output=True, text=True,
                             check=True, timeout=240).stdout.split()
        assert int(out[0]) == n
        peaks[n] = int(out[2])  # KiB
    per_image_mb = 2 * 32 * 256 * 256 * 4 / 2**20  # two 32-channel float maps per image: 16 MiB
    growth_mb = (peaks[48] - peaks[4]) / 1024
    assert growth_mb < 2 * per_image_mb, (peaks, growth_mb)  # keeping activations would add ~700 MiB


# ------------------------------------------------------------------------------------------------
# a model with one deliberately fragile layer
# ------------------------------------------------------------------------------------------------
class Fragile(nn.Module):
    """conv3 reads a tensor in which one channel is 1000x larger than the rest (conv2 scaled it up,
    conv3 scales it back down): the same function in float, but a per-tensor int8 scale on conv3's input
    wipes out the other channels. Leaving conv3 in float repairs it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.cls = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.conv2.weight[0] *= 1000
            self.conv2.bias[0] *= 1000
            self.conv3.weight[:, 0] /= 1000
            self.cls.bias.zero_()  # the label map follows the features, not a constant bias

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv3(self.conv2(x)))
        x = torch.relu(self.conv4(x))
        return self.cls(x)


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    d = tmp_path_factory.mktemp("fragile")
    path = d / "model.onnx"
    torch.onnx.export(Fragile().eval(), torch.zeros(1, 3, *SIZE), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    return path


def _eval_set(fp32_path: Path, n: int = 8) -> EvalSet:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    inputs, metas, masks = [], [], []
    for img in _images(n, seed=1):
        x, meta = preprocess_image(img, SIZE, MEAN, STD, "pad", "reflect")
        inputs.append(x.astype(np.float32))
        metas.append(meta)
        masks.append(sess.run(None, {"input": x})[0][0].argmax(0).astype(np.uint8))  # FP32 is 100 % right
    return EvalSet(inputs, metas, masks, num_classes=4)


def _calib():
    return (preprocess_image(img, SIZE, MEAN, STD, "pad", "reflect")[0] for img in _images(16, seed=2))


def _build(fp32, out, **kw):
    return build_int8(fp32, out, calib_inputs=_calib, calib_desc={"test": 1}, ev=_eval_set(fp32),
                      sensitivity_images=8, threads=1, **kw)


def test_sensitivity_ranks_the_fragile_layer_first(fragile, tmp_path):
    q = _build(fragile, tmp_path, target_drop=None)
    rank = json.loads((tmp_path / "int8_sensitivity.json").read_text())["ranking"]
    assert rank[0]["nodes"] == ["/conv3/Conv"], [r["nodes"] for r in rank[:3]]
    assert rank[0]["tensor"] == "/conv2/Conv_output_0"  # the group is the fragile tensor conv3 reads
    assert rank[0]["gain"] > 5 * max(abs(r["gain"]) for r in rank[1:])
    assert "/conv3/Conv" in (tmp_path / "int8_sensitivity.md").read_text()
    assert q["float_layers"] == 0 and q["target"]["met"] is None


def test_mixed_precision_meets_target_that_plain_int8_misses(fragile, tmp_path):
    q = _build(fragile, tmp_path, target_drop=10.0)  # mIoU of 4 classes on 8 tiny images: a coarse measure
    assert q["plain"]["miou_drop"] > 50.0  # plain INT8 is badly off on this model
    assert q["target"]["met"] is True and q["final"]["miou_drop"] <= 10.0
    assert q["float_nodes"] == ["/conv3/Conv"]
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    conv3 = next(n for n in m.graph.node if n.name == "/conv3/Conv")
    prod = {o: n for n in m.graph.node for o in n.output}
    assert all(i not in prod or prod[i].op_type != "DequantizeLinear" for i in conv3.input)  # float inputs
    assert check_qdq(m)["problems"] == [] and check_qdq(m)["quantized_convs"] == 3  # conv1, conv2, conv4


class Branchy(Fragile):
    """Fragile's tensor read by two branch convs, conv3 and b (ESPNet's modules, in small): keeping one
    branch conv in float leaves the other reading the same rounded tensor."""

    def __init__(self):
        super().__init__()
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        with torch.no_grad():
            self.b.weight[:, 0] /= 1000

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.cls(torch.relu(self.conv3(y) + self.b(y)))


def test_a_group_is_a_tensor_with_every_layer_that_reads_it(tmp_path):
    path = tmp_path / "branchy.onnx"
    torch.onnx.export(Branchy().eval(), torch.zeros(1, 3, *SIZE), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    q = _build(path, tmp_path, target_drop=10.0, scheme="weighted", method="mse", max_float=0.5)  # 1 of 3
    assert q["plain"]["miou_drop"] > 50.0
    assert q["target"]["met"] is True and q["float_tensors"] == ["/conv2/Conv_output_0"]
    assert q["float_nodes"] == ["/conv3/Conv", "/b/Conv"] and q["float_layers"] == 2
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    prod = {o: n for n in m.graph.node for o in n.output}
    for name in ("/conv3/Conv", "/b/Conv"):  # float layers: float input and float weight, no DQ in front
        node = next(n for n in m.graph.node if n.name == name)
        assert all(i not in prod or prod[i].op_type != "DequantizeLinear" for i in node.input)


def test_weighted_scheme_quantizes_conv_inputs_only(fragile, tmp_path):
    pre = prepare_for_quantization(fragile, tmp_path / "pre.onnx")
    from apd_edge.export.calibrate import tensors_to_calibrate as names_of

    ranges = {n: 4.0 for n in names_of(pre, OP_TYPES_TO_QUANTIZE)}
    quantize_int8(tmp_path / "pre.onnx", tmp_path / "w.onnx", ranges, op_types=WEIGHTED_OPS,
                  exclude_outputs=WEIGHTED_OPS)
    m = onnx.load(str(tmp_path / "w.onnx"))
    readers = quantized_tensors(m)
    conv_inputs = {n.input[0] for n in pre.graph.node if n.op_type == "Conv" and n.name != "/cls/Conv"}
    assert set(readers) == conv_inputs  # no Q/DQ on conv outputs of their own
    assert readers["/conv2/Conv_output_0"] == ["/conv3/Conv"]
    f = float_tensors(m, pre, ["/conv2/Conv_output_0"])
    assert set(quantized_tensors(f)) == conv_inputs - {"/conv2/Conv_output_0"}
    conv3 = next(n for n in f.graph.node if n.name == "/conv3/Conv")
    w = {i.name for i in f.graph.initializer}
    assert conv3.input[0] == "/conv2/Conv_output_0" and conv3.input[1] in w  # float weight back


def test_gate_marks_a_model_that_cannot_meet_the_target(fragile, tmp_path):
    from apd_edge.runtime.manifest import int8_gate

    q = _build(fragile, tmp_path, target_drop=5.0, max_float=0.0, sensitivity=False)
    assert q["target"]["met"] is False and q["float_layers"] == 0
    assert (tmp_path / "model_int8.onnx").is_file()  # still written
    msg = int8_gate({"quantization": q})
    assert msg.startswith("INT8 missed its accuracy target: mIoU drop") and f"{q['target']['drop']:.2f}" in msg
    assert int8_gate({"quantization": {**q, "target": {**q["target"], "met": True}}}) is None


def test_cpu_twin_is_close_to_the_tensorrt_graph_and_fully_quantized(fragile, tmp_path):
    import onnxruntime as ort

    # the twin derives from the FP32-scale graph: compare it with that one
    _build(fragile, tmp_path, target_drop=None, sensitivity=False, float_precision="fp32")
    cpu = onnx.load(str(tmp_path / "model_int8_cpu.onnx"))
    g = cpu.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    act_zps = [inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear"]
    assert act_zps and all(z.dtype == np.uint8 and (z == 128).all() for z in act_zps)
    w_zps = [inits[n.input[2]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert w_zps and all(z.dtype == np.int8 for z in w_zps)
    a = ort.InferenceSession(str(tmp_path / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "model_int8_cpu.onnx"), providers=["CPUExecutionProvider"])
    # every quantized conv's output is quantized too (ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv)
    cons = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    convs = [n for n in g.node if n.op_type == "Conv" and n.name != "/cls/Conv"]
    assert convs and all(any(u.op_type == "QuantizeLinear" for u in cons[c.output[0]]) for c in convs)
    for x in list(_calib())[:3]:
        ya, yb = a.run(None, {"input": x})[0], b.run(None, {"input": x})[0]
        assert np.mean(ya.argmax(1) == yb.argmax(1)) > 0.95  # one more rounding per conv output, no more
        assert np.abs(ya - yb).mean() <= 0.05 * np.abs(ya).mean()


def test_cpu_variant_refuses_asymmetric_input(fragile, tmp_path):
    from apd_edge.errors import ApdError

    _build(fragile, tmp_path, target_drop=None, sensitivity=False)
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    init = next(i for i in m.graph.initializer if i.name == q.input[2])
    init.CopyFrom(numpy_helper.from_array(np.array(5, np.int8), init.name))
    with pytest.raises(ApdError, match="expected symmetric int8"):
        to_cpu_variant(m, tmp_path / "x.onnx")


def test_calibration_cache_is_reused(fragile, tmp_path):
    q1 = _build(fragile, tmp_path, target_drop=None, sensitivity=False)
    calls = []

    def calib():
        calls.append(1)
        return _calib()

    q2 = build_int8(fragile, tmp_path, calib_inputs=calib, calib_desc={"test": 1}, ev=_eval_set(fragile),
                    target_drop=None, sensitivity=False, method="mse", threads=1)
    assert q1["calibration_cache_hit"] is False and q2["calibration_cache_hit"] is True and calls == []
    assert q2["method"] == "mse" and q2["calib_images"] == 16


def test_tensors_to_calibrate_are_the_quantized_inputs(fragile, tmp_path):
    from apd_edge.export.quantize import prepare_for_quantization

    model = prepare_for_quantization(fragile, tmp_path / "pre.onnx")
    names = tensors_to_calibrate(model, OP_TYPES_TO_QUANTIZE)
    conv_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Conv"}
    assert conv_inputs <= set(names)
    assert not set(names) & {i.name for i in model.graph.initializer}
    c = collect_histograms(model, names, _calib(), threads=1)
    assert c.images == 16 and all(c.hist[n].sum() > 0 for n in names)


# ------------------------------------------------------------------------------------------------
# ConvTranspose per-channel axis
# ------------------------------------------------------------------------------------------------
class Up(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 5, 2, stride=2)  # weight (in=6, out=5, 2, 2): out channels on axis 1
        self.cls = nn.Conv2d(5, 3, 1)

    def forward(self, x):
        return self.cls(torch.relu(self.up(torch.relu(self.conv(x)))))


def test_check_qdq_convtranspose_axis(tmp_path):
    path = tmp_path / "up.onnx"
    torch.onnx.export(Up().eval(), torch.zeros(1, 3, *SIZE), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    _build(path, tmp_path, target_drop=None, sensitivity=False)
    m = onnx.load(str(tmp_path / "model_int8.onnx"))
    rep = check_qdq(m)
    assert rep["problems"] == [] and rep["quantized_convs"] == 2  # conv + convtranspose (cls stays float)
    ct = next(n for n in m.graph.node if n.op_type == "ConvTranspose")
    w_dq = next(n for n in m.graph.node if n.output[0] == ct.input[1])
    axis = next(a for a in w_dq.attribute if a.name == "axis")
    assert axis.i == 1
    axis.i = 0  # the wrong axis: in-channels
    problems = check_qdq(m)["problems"]
    assert any("ConvTranspose" in p or "axis 0" in p for p in problems), problems


# ------------------------------------------------------------------------------------------------
# the runtime and bench side of the gate and the CPU twin
# ------------------------------------------------------------------------------------------------
def test_find_file_prefers_the_cpu_twin_only_when_asked():
    from apd_edge.runtime.manifest import find_file

    m = {"name": "b", "files": [{"path": "model_int8.onnx", "format": "onnx", "precision": "int8"},
                                {"path": "model_int8_cpu.onnx", "format": "onnx", "precision": "int8",
                                 "variant": "cpu"}]}
    assert find_file(m, "onnx", "int8")["path"] == "model_int8.onnx"  # what TensorRT builds from
    assert find_file(m, "onnx", "int8", variant="cpu")["path"] == "model_int8_cpu.onnx"
    m["files"].pop()
    assert find_file(m, "onnx", "int8", variant="cpu")["path"] == "model_int8.onnx"  # older bundles


def test_bench_table_marks_int8_below_target():
    from apd_edge.bench.report import Row, format_table

    ok = Row(model="m", artifact="b", backend="ort", precision="int8", compute_p50=1.0)
    bad = Row(model="m", artifact="b", backend="ort", precision="int8", compute_p50=1.0,
              warning="INT8 missed its accuracy target: mIoU drop 2.00 > 0.5 points against FP32")
    table = format_table([ok, bad])
    lines = table.splitlines()
    assert "int8 (!)" in lines[3] and "int8 (!)" not in lines[2]
