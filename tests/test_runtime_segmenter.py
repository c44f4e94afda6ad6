"""Segmenter on a real exported bundle: ORT predictions equal PyTorch's, also with torch unimportable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from apd_edge.errors import ApdError
from apd_edge.runtime import Segmenter, list_backends

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle  # conftest.py: exported once per session


def _image(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (60, 90, 3), dtype=np.uint8)  # padded to 64x96


def test_ort_equals_torch(bundle):
    img = _image()
    ort_seg = Segmenter.from_bundle(bundle, backend="ort")
    torch_seg = Segmenter.from_bundle(bundle, backend="torch")
    assert ort_seg.classes == torch_seg.classes and len(ort_seg.palette) == 10
    lab_o, lab_t = ort_seg.predict(img), torch_seg.predict(img)
    assert lab_o.shape == (60, 90) and lab_o.dtype == np.uint8
    assert (lab_o == lab_t).mean() >= 0.999
    lo, lt = ort_seg.predict_logits(img), torch_seg.predict_logits(img)
    assert lo.shape == (10, 60, 90) and np.abs(lo - lt).max() < 1e-3
    x, meta = ort_seg.preprocess(img)
    raw = ort_seg.infer(x)
    assert raw.dtype == np.int64 and raw.shape == (1, 64, 96)  # argmax output used by predict
    np.testing.assert_array_equal(ort_seg.postprocess(raw, meta), lab_o)


def test_all_onnx_precisions_load(bundle):
    img = _image(5)
    ref = Segmenter.from_bundle(bundle, precision="fp32").predict(img)
    for p in ("fp16", "int8"):
        seg = Segmenter.from_bundle(bundle, precision=p)
        assert seg.predict(img).shape == ref.shape and seg.precision == p
    with pytest.raises(ApdError, match="no onnx file for precision 'fp32_trtfp16'"):
        Segmenter.from_bundle(bundle, precision="fp32_trtfp16")
    with pytest.raises(ApdError, match="unknown backend 'onnx'"):
        Segmenter.from_bundle(bundle, backend="onnx")
    if not list_backends()["trt"][0]:
        with pytest.raises(ApdError, match="backend 'trt' is not available"):
            Segmenter.from_bundle(bundle, backend="trt")


def test_runtime_without_torch(bundle, tmp_path):
    img = _image(7)
    np.save(tmp_path / "img.npy", img)
    expected = Segmenter.from_bundle(bundle, backend="torch").predict(img)
    np.save(tmp_path / "expected.npy", expected)
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked by test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from apd_edge.runtime import Segmenter, list_backends
        seg = Segmenter.from_bundle({str(bundle)!r}, backend="ort")
        lab = seg.predict(np.load({str(tmp_path / 'img.npy')!r}))
        exp = np.load({str(tmp_path / 'expected.npy')!r})
        assert "torch" not in sys.modules
        print("AGREE", float((lab == exp).mean()), lab.shape)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    agree = float(res.stdout.split("AGREE")[1].split()[0])
    assert agree >= 0.999
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["output_kind"] == "labels"


def test_torch_backend_guards(bundle, tmp_path):
    for precision in ("int8", "fp16"):
        with pytest.raises(ApdError, match=f"runs the source checkpoint in fp32, not {precision}"):
            Segmenter.from_bundle(bundle, backend="torch", precision=precision)
    # the torch backend trusts the manifest's record of its source checkpoint: gone or changed is refused
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ApdError, match="changed since the bundle was exported"):
        Segmenter.from_bundle(copy, backend="torch")
    del manifest["source"]["checkpoint"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ApdError, match="records no source checkpoint"):
        Segmenter.from_bundle(copy, backend="torch")
