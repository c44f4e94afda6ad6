"""Export: ONNX FP32/FP16/INT8 bundle of a tiny ESPNet, parity, Q/DQ conformance, refusals, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from torch import nn

from apd_edge.errors import ApdError
from apd_edge.export.quantize import check_qdq, classifier_nodes
from helpers.bundles import tiny_checkpoint


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle  # conftest.py: exported once per session


def test_manifest_and_fp32_parity(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert [(f["format"], f["precision"], f.get("variant")) for f in m["files"]] == [
        ("onnx", "fp32", None), ("onnx", "fp32", "cpu"), ("onnx", "fp16", None), ("onnx", "int8", None),
        ("onnx", "int8", "cpu"),
        ("data", "int8", None)]  # the calibration cache (no sensitivity report: the tests switch it off)
    assert m["files"][-1]["path"] == "calibration.npz"
    assert m["input"] == {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": [1, 3, 64, 96],
                          "dynamic_axes": {}}
    assert [o["name"] for o in m["outputs"]] == ["logits", "labels"]
    assert m["preprocess"]["mode"] == "pad" and m["preprocess"]["size"] == [64, 96]
    fp32 = m["parity"]["results"]["fp32"]
    assert fp32["images"] == 3
    assert fp32["agreement"] >= 99.9
    assert fp32["max_abs_diff"] < 1e-3
    assert abs(fp32["miou"] - fp32["miou_torch"]) < 0.5
    assert len(m["source"]["sha256"]) == 64 and m["versions"]["opset"] == 17


def test_fp16_io_float32_and_close(bundle):
    s16 = ort.InferenceSession(str(bundle / "model_fp16.onnx"), providers=["CPUExecutionProvider"])
    s32 = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.type for i in s16.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in s16.get_outputs()] == ["tensor(float)", "tensor(int64)"]
    g = onnx.load(str(bundle / "model_fp16.onnx")).graph
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in g.initializer) > 10
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    a, b = s32.run(["logits"], {"input": x})[0], s16.run(["logits"], {"input": x})[0]
    assert np.abs(a - b).max() < 0.05 * max(1.0, np.abs(a).max())
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["parity"]["results"]["fp16"]["agreement"] > 95


def test_int8_qdq_conformance(bundle):
    model = onnx.load(str(bundle / "model_int8.onnx"))
    fp32 = onnx.load(str(bundle / "model.onnx"))
    cls = classifier_nodes(fp32)
    assert cls[0].endswith("ConvTranspose") and any("ArgMax" in n for n in cls)  # ESPNet's classifier + argmax
    report = check_qdq(model, classifier=cls[:1])
    assert report["problems"] == []
    # every conv but the classifier (a ConvTranspose, kept float) is quantized
    assert report["quantized_convs"] == report["convs"] - 1 > 50
    for n in model.graph.node:  # every zero point int8 and 0
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == n.input[2])
            assert zp.dtype == np.int8 and not zp.any()
    m = json.loads((bundle / "manifest.json").read_text())
    q = m["quantization"]
    assert q["method_choice"] == "auto" and q["calib_images"] == 4 and len(q["method_scores"]) == 8  # 2 schemes x 4
    best = min(q["method_scores"], key=lambda k: (round(q["method_scores"][k]["disagreement"], 6),
                                                  q["method_scores"][k]["rel_rmse"]))
    assert (q["method_scores"][best]["method"], q["method_scores"][best]["scheme"]) == (q["method"], q["scheme"])


def test_check_qdq_flags_nonzero_zero_point(bundle):
    model = onnx.load(str(bundle / "model_int8.onnx"))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    init = next(i for i in model.graph.initializer if i.name == q.input[2])
    init.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), init.name))
    problems = check_qdq(model)["problems"]
    assert any("non-zero zero point" in p for p in problems)


def test_int8_without_dataset_fails_naming_root(tmp_path):
    import torch as _t

    from apd_edge.export import export_bundle

    ckpt = tiny_checkpoint(tmp_path)
    c = _t.load(ckpt, weights_only=True)
    c["recipe"]["data"] = {"dataset": "camvid", "root": str(tmp_path / "nowhere")}
    _t.save(c, ckpt)
    with pytest.raises(ApdError, match="data.root=.*nowhere"):
        export_bundle(ckpt, tmp_path / "b", precisions=("fp32", "int8"), progress=False)


class _PSPLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        y = self.conv(x)
        return y + nn.functional.interpolate(self.pool(y), size=y.shape[2:], mode="bilinear")


def test_dynamic_refused_for_pyramid_pooling(tmp_path):
    from apd_edge.export.onnx import export_onnx

    with pytest.raises(ApdError, match="AdaptiveAvgPool2d"):
        export_onnx(_PSPLike(), tmp_path / "m.onnx", (64, 64), dynamic=True)
    io = export_onnx(_PSPLike(), tmp_path / "m.onnx", (64, 64))  # static is fine
    assert io["outputs"][0]["shape"] == [1, 4, 64, 64]


def test_dynamic_export_runs_other_sizes(tmp_path):
    from apd_edge.export.onnx import export_onnx
    from apd_edge.models import build_model

    torch.manual_seed(0)
    model = build_model("espnet", 5).eval()
    io = export_onnx(model, tmp_path / "d.onnx", (64, 64), dynamic=True)
    assert io["input"]["shape"] == ["N", 3, "H", "W"]
    s = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, 96, 128)).astype(np.float32)
    y = s.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert y.shape == (2, 5, 96, 128) and np.abs(y - ref).max() < 1e-3


def test_cli_export(tmp_path):
    from apd_edge.cli.main import cli

    ckpt = tiny_checkpoint(tmp_path)
    res = CliRunner().invoke(cli, ["export", str(ckpt.parent), "--out", str(tmp_path / "b"), "--fp16",
                                   "--parity-images", "2", "--size", "64x96"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["name"] == "tiny"
    assert {f["path"] for f in m["files"]} == {"model.onnx", "model_cpu.onnx", "model_fp16.onnx"}
    bad = CliRunner().invoke(cli, ["export", str(ckpt.parent), "--size", "65x96", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "multiples of 32" in bad.output
    no_trt = CliRunner().invoke(cli, ["export", str(ckpt.parent), "--trt", "--out", str(tmp_path / "d")])
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert no_trt.exit_code == 2 and "TensorRT is not installed" in no_trt.output
