"""Runtime pure logic: manifest round trip, pre/postprocessing, TensorRT profile/binding plans, engine refusal."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from apd_edge.errors import ApdError
from apd_edge.runtime.backends.trt import binding_plan, check_engine_compat, io_from_manifest
from apd_edge.runtime.manifest import file_entry, find_file, load_manifest, save_manifest
from apd_edge.runtime.postprocess import logits_to_labels, restore_logits
from apd_edge.runtime.preprocess import preprocess_image


def _manifest(dynamic: bool = False) -> dict:
    H, W = 384, 480
    n, h, w = ("N", "H", "W") if dynamic else (1, H, W)
    return {
        "format": "apd-edge-bundle", "format_version": 1, "name": "m", "model": {"name": "espnet"},
        "num_classes": 11, "classes": [f"c{i}" for i in range(11)], "palette": [[i, i, i] for i in range(11)],
        "mean": [0.5] * 3, "std": [0.25] * 3,
        "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": [n, 3, h, w],
                  "dynamic_axes": {"0": "N", "2": "H", "3": "W"} if dynamic else {}},
        "outputs": [{"name": "logits", "kind": "logits", "dtype": "float32", "shape": [n, 11, h, w]},
                    {"name": "labels", "kind": "labels", "dtype": "int64", "shape": [n, h, w]}],
        "preprocess": {"mode": "pad", "size": [H, W], "pad_fill": "reflect"}, "output_kind": "labels",
        "files": [],
    }


def test_manifest_round_trip_and_sha(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    m = _manifest()
    m["files"].append(file_entry(tmp_path, "model.onnx", "onnx", "fp32"))
    save_manifest(m, tmp_path)
    back = load_manifest(tmp_path, verify=True)
    assert back == m
    assert find_file(back, "onnx", "fp32")["bytes"] == 10
    with pytest.raises(ApdError, match="no engine file for precision 'int8'; available: none"):
        find_file(back, "engine", "int8")
    (tmp_path / "model.onnx").write_bytes(b"tampered!!")
    with pytest.raises(ApdError, match="does not match the manifest"):
        load_manifest(tmp_path, verify=True)


@pytest.mark.parametrize("key,value,msg", [
    ("classes", ["a"], "1 class names for num_classes=11"),
    ("output_kind", "probs", "output_kind 'probs'"),
    ("format_version", 99, "newer than this apd-edge"),
])
def test_manifest_validation(tmp_path, key, value, msg):
    m = _manifest()
    m[key] = value
    with pytest.raises(ApdError, match=msg):
        save_manifest(m, tmp_path)
    m = _manifest()
    del m["preprocess"]
    with pytest.raises(ApdError, match="missing required key 'preprocess'"):
        save_manifest(m, tmp_path)
    with pytest.raises(ApdError, match="not an apd-edge bundle"):
        load_manifest(tmp_path / "nothing")


def test_pad_preprocess_crops_back_exactly():
    img = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    x, meta = preprocess_image(img, (384, 480), [0.5] * 3, [0.25] * 3, "pad")
    assert x.shape == (1, 3, 384, 480) and x.dtype == np.float32
    assert meta.valid == (360, 480) and meta.orig == (360, 480)
    np.testing.assert_allclose(x[0, :, 360 + 3], x[0, :, 360 - 5])  # reflect padding
    np.testing.assert_allclose(x[0, 0, 0, 0], (img[0, 0, 0] / 255 - 0.5) / 0.25, rtol=1e-6)
    logits = np.zeros((1, 4, 384, 480), np.float32)
    logits[0, 2, :360] = 1.0
    logits[0, 3, 360:] = 5.0  # padding region must be cropped away
    lab = logits_to_labels(logits, meta)
    assert lab.shape == (360, 480) and (lab == 2).all()
    assert restore_logits(logits, meta).shape == (4, 360, 480)


def test_resize_and_scale_down_modes():
    img = np.zeros((100, 300, 3), np.uint8)
    x, meta = preprocess_image(img, (64, 96), [0.0] * 3, [1.0] * 3, "resize")
    assert x.shape == (1, 3, 64, 96) and meta.valid == (64, 96)
    assert logits_to_labels(np.zeros((4, 64, 96), np.float32), meta).shape == (100, 300)
    x, meta = preprocess_image(img, (64, 96), [0.0] * 3, [1.0] * 3, "pad")  # too big: scaled to fit, then padded
    assert meta.valid == (32, 96)
    with pytest.raises(ApdError, match="uint8"):
        preprocess_image(img.astype(np.float32), (64, 96), [0.0] * 3, [1.0] * 3)


def test_binding_plan_static_and_dynamic():
    plan = binding_plan(io_from_manifest(_manifest()), (1, 3, 384, 480))
    assert plan == [("input", "input", (1, 3, 384, 480), "float32", 4 * 3 * 384 * 480),
                    ("logits", "output", (1, 11, 384, 480), "float32", 4 * 11 * 384 * 480),
                    ("labels", "output", (1, 384, 480), "int64", 8 * 384 * 480)]
    dyn = binding_plan(io_from_manifest(_manifest(dynamic=True)), (2, 3, 256, 320))
    assert [p[2] for p in dyn] == [(2, 3, 256, 320), (2, 11, 256, 320), (2, 256, 320)]
    # engine-style descriptions use -1 for dynamic dims
    eng = [{"name": "input", "mode": "input", "dtype": "float32", "shape": [-1, 3, -1, -1]},
           {"name": "labels", "mode": "output", "dtype": "int32", "shape": [-1, -1, -1]}]
    assert binding_plan(eng, (1, 3, 64, 96))[1] == ("labels", "output", (1, 64, 96), "int32", 4 * 64 * 96)
    with pytest.raises(ApdError, match="expects shape"):
        binding_plan(io_from_manifest(_manifest()), (1, 3, 256, 480))


def test_profile_plan():
    from apd_edge.export.tensorrt import engine_plan, profile_plan

    assert profile_plan(_manifest()) == {"input": ((1, 3, 384, 480),) * 3}
    assert profile_plan(_manifest(dynamic=True), max_batch=4) == {
        "input": ((1, 3, 192, 224), (1, 3, 384, 480), (4, 3, 768, 960))}
    with pytest.raises(ApdError, match="bad profile"):
        profile_plan(_manifest(dynamic=True), max_batch=0)
    # TensorRT 10 adds the classic FP16-flag build of the FP32 graph; 11 removed the flag
    assert engine_plan(["fp32", "fp16", "int8"], "10.3.0") == [
        ("fp32", "fp32", False, False), ("fp32_trtfp16", "fp32", False, True),
        ("fp16", "fp16", True, False), ("int8", "int8", True, False)]
    assert [p[0] for p in engine_plan(["fp32", "int8"], "11.4.0")] == ["fp32", "int8"]


def test_engine_compat_refusal():
    meta = {"gpu_name": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt_version": "10.3.0.30"}
    check_engine_compat(meta, dict(meta, tensorrt_version="10.3.0"))  # same major.minor.patch: fine
    other = {"gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9", "tensorrt_version": "11.4.0"}
    with pytest.raises(ApdError) as e:
        check_engine_compat(meta, other)
    msg = str(e.value)
    assert "compute capability 8.7 vs 8.9" in msg and "TensorRT 10.3.0.30 vs 11.4.0" in msg and "rebuild" in msg
    with pytest.raises(ApdError, match="TensorRT 10.3.0.30 vs 10.4.0"):
        check_engine_compat(meta, dict(meta, tensorrt_version="10.4.0"))
    with pytest.raises(ApdError, match="no recorded engine_meta"):
        check_engine_compat(None, other)
    # the GPU model alone differing is a refusal too; a local build tag and padding do not matter
    with pytest.raises(ApdError, match=r"GPU 'Orin \(nvgpu\)' vs 'Orin Nano' here"):
        check_engine_compat(meta, dict(meta, gpu_name="Orin Nano"))
    check_engine_compat(meta, dict(meta, gpu_name=" Orin (nvgpu) ", tensorrt_version="10.3.0.30+cuda12.6"))


def test_binding_plan_refuses_what_it_cannot_resolve():
    io = io_from_manifest(_manifest(dynamic=True))
    with pytest.raises(ApdError, match="has rank 4, got shape \\(1, 3, 64\\)"):
        binding_plan(io, (1, 3, 64))
    with pytest.raises(ApdError, match="expected one input tensor, got 2"):
        binding_plan(io + [dict(io[0], name="second")], (1, 3, 64, 96))
    square = [{"name": "x", "mode": "input", "dtype": "float32", "shape": ["N", 3, "S", "S"]},
              {"name": "y", "mode": "output", "dtype": "float32", "shape": ["N", "S"]}]
    assert binding_plan(square, (2, 3, 8, 8))[1][2] == (2, 8)
    with pytest.raises(ApdError, match="input dim 'S' given two values"):
        binding_plan(square, (2, 3, 8, 16))
    with pytest.raises(ApdError, match="output 'y' uses dim 'C' that the input does not define"):
        binding_plan([square[0], dict(square[1], shape=["N", "C"])], (1, 3, 8, 8))
    with pytest.raises(ApdError, match="output 'y' has an unresolvable dynamic dim at axis 1"):
        binding_plan([square[0], dict(square[1], shape=[1, -1, 4, 8, 8])], (1, 3, 8, 8))


class _BrokenTensorRT:
    """An import hook for a TensorRT wheel whose CUDA libraries cannot be loaded (what ``import`` raises then)."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file")
        return None


def test_trt_backend_without_tensorrt_is_one_line(tmp_path, monkeypatch):
    """What the TensorRT backend does on a machine without TensorRT: a one-line error naming the install,
    raised before the engine file is read (so a missing or foreign engine never hides the real problem)."""
    from apd_edge.runtime.backends import trt as trt_mod
    from apd_edge.runtime.backends import trt_check

    monkeypatch.setattr(trt_check, "on_jetson", lambda path=None: False)
    monkeypatch.setattr(trt_check, "driver_cuda_major", lambda: 12)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    engine = tmp_path / "missing.engine"
    with pytest.raises(ApdError) as e:
        trt_mod.TrtBackend(engine, {"gpu_name": "x"})
    msg = str(e.value)
    assert msg.startswith(trt_mod.TRT_MISSING + ': pip install "apd-edge[trt-cu12]"') and "\n" not in msg
    assert str(engine) not in msg

    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.setattr(sys, "meta_path", [_BrokenTensorRT(), *sys.meta_path])
    with pytest.raises(ApdError, match=r"^TensorRT is installed but its libraries cannot be loaded \(libnvinfer"):
        trt_mod.TrtBackend(engine, {"gpu_name": "x"})

    # TensorRT importable, cuda-python not: the second import names its own install
    monkeypatch.setattr(trt_mod, "import_tensorrt", lambda: object())
    for mod in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ApdError, match=r"^cuda-python is not installed: pip install"):
        trt_mod.TrtBackend(engine, {"gpu_name": "x"})


def test_trt_engine_agrees_with_onnx_runtime(request, tmp_path):
    """Build the FP32 engine of a tiny bundle and run it through the Segmenter: labels agree with ORT.

    Needs TensorRT, cuda-python and an NVIDIA GPU; elsewhere it skips, naming what is missing."""
    from apd_edge.runtime.backends.trt_check import preflight

    try:
        preflight()
    except ApdError as exc:
        pytest.skip(f"needs TensorRT + cuda-python + an NVIDIA GPU: {exc}")
    from apd_edge.export.build import build_bundle
    from apd_edge.runtime import Segmenter

    bundle = tmp_path / "bundle"
    shutil.copytree(request.getfixturevalue("tiny_bundle"), bundle)  # the shared bundle stays engine-free
    build_bundle(bundle, ["fp32"], workspace_gb=1.0, log=lambda _: None)
    img = np.random.default_rng(2).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    trt_seg = Segmenter.from_bundle(bundle, backend="trt", device="cuda")
    ort_seg = Segmenter.from_bundle(bundle, backend="ort")
    assert (trt_seg.predict(img) == ort_seg.predict(img)).mean() >= 0.99
