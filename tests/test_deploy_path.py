"""The device side exactly as the README runs it, in processes where torch (and TensorRT) cannot be imported.

A ``sitecustomize`` on PYTHONPATH puts a meta-path finder first that refuses the blocked packages (so they
look absent) and logs every real import attempt; a probe through ``importlib.util.find_spec`` (how
``list_backends`` asks what is installed) is refused but not logged. Any logged torch import fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from apd_edge.errors import ApdError

REPO = Path(__file__).resolve().parents[1]

BLOCKER = '''
import os, sys
_BLOCK = set(os.environ["APD_BLOCK"].split(","))
_LOG = os.environ["APD_BLOCK_LOG"]

def _probe():
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename.replace(os.sep, "/")
        if f.f_code.co_name == "find_spec" and (fn.endswith("importlib/util.py") or fn == "<frozen importlib.util>"):
            return True
        f = f.f_back
    return False

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            if not _probe():
                with open(_LOG, "a") as fh:
                    fh.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked in this test)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
'''


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle  # conftest.py: exported once per session


@pytest.fixture()
def blocked(tmp_path):
    """Run ``python -m apd_edge.cli.main ...`` / ``python -c`` with torch, TensorRT and friends blocked."""
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "imports.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), APD_BLOCK_LOG=str(log),
               APD_BLOCK="torch,torchvision,timm,onnxscript,tensorrt,matplotlib")

    def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "apd_edge.cli.main", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)

    run.log = log
    return run


def _attempts(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_blocker_blocks_and_logs(blocked):
    res = blocked(code="import importlib.util as u\ntry:\n u.find_spec('torch')\n"
                       "except ImportError: print('probe refused')\n"
                       "try:\n import torch\nexcept ImportError as e: print('blocked', e)")
    assert "probe refused" in res.stdout, res.stderr
    assert "blocked No module named 'torch' (blocked in this test)" in res.stdout, res.stderr
    assert _attempts(blocked.log) == ["torch"]  # the import is logged, the find_spec probe is not


def test_device_side_commands_without_torch(blocked, bundle, tmp_path):
    # 1. engine plan from the bundle: checked and printed without TensorRT
    res = blocked("build", str(bundle), "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "TensorRT 10:" in out and "TensorRT 11:" in out
    assert "model_fp32_trtfp16.engine" in out.split("TensorRT 11:")[0]  # the FP16 flag build exists on 10.x only
    assert "model_fp32_trtfp16.engine" not in out.split("TensorRT 11:")[1]
    assert "model_int8.engine          <- model_int8.onnx" in out
    assert "3 ONNX file(s) checked; 3 sample images for parity" in out
    assert "ONNX Runtime here reproduces 100.00% of the stored FP32 labels\n" in out
    # 2. the real build stops at TensorRT with one line naming what to install
    res = blocked("build", str(bundle))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not installed")
    assert 'apd-edge[trt-cu12]' in lines[0] and "Traceback" not in res.stderr
    res = blocked("export", str(bundle), "--trt", "--fp16", "--int8")  # the README's older form: same path
    assert res.returncode == 2 and res.stderr.startswith("error: TensorRT is not installed"), res.stderr
    # 3. bench on the bundle with ONNX Runtime (matplotlib blocked too: the plot is skipped with one line)
    res = blocked("bench", str(bundle), "--precisions", "fp32,int8", "--iters", "3", "--warmup", "1",
                  "--out", str(tmp_path / "bench"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 of 2 rows measured" in res.stdout
    assert "bench.png skipped: matplotlib is not installed" in res.stdout
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [(r["backend"], r["precision"], r["status"]) for r in rows] == [("ort", "fp32", "ok"), ("ort", "int8", "ok")]
    assert all(r["compute_p50"] > 0 and 0 <= r["miou"] <= 1 for r in rows)
    assert not (tmp_path / "bench" / "bench.png").exists()
    # 4. demo on a short video file
    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (120, 80))
    rng = np.random.default_rng(0)
    for _ in range(6):
        w.write(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8))
    w.release()
    res = blocked("demo", str(bundle), "--source", str(video), "--save", str(tmp_path / "out.avi"),
                  "--max-frames", "4", "--precision", "int8")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "4 frames" in res.stdout
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()
    # 5. Segmenter on an image, as the bundle README shows
    code = ("import sys, numpy as np\nfrom apd_edge.runtime import Segmenter\n"
            f"seg = Segmenter.from_bundle({str(bundle)!r}, backend='ort', precision='fp16')\n"
            "img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)\n"
            "lab = seg.predict(img); print(lab.shape, lab.dtype, int(lab.max()) < 10, 'torch' in sys.modules)")
    res = blocked(code=code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "(50, 70) uint8 True False"
    # nothing on the deploy path tried to import torch (TensorRT: only the build's own import, by design)
    attempts = _attempts(blocked.log)
    assert not [a for a in attempts if a.split(".")[0] in ("torch", "torchvision", "timm", "onnxscript")], attempts
    assert set(a.split(".")[0] for a in attempts) <= {"tensorrt", "matplotlib"}
    # a training-side command in this install: one line naming the extra, no traceback
    res = blocked("train", str(REPO / "recipes" / "quickstart.yaml"))
    assert res.returncode == 2 and res.stderr.strip() == (
        'error: `apd-edge train` needs torch, which this install lacks: pip install "apd-edge[train]" '
        "(deployment commands: build, bench, demo on bundles)")


# --------------------------------------------------------------------------------------------------
# Build planning and bundle integrity, in-process
# --------------------------------------------------------------------------------------------------


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def _edit(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_samples_stored_and_reproduced(bundle):
    from apd_edge.export.samples import load_samples, sample_parity
    from apd_edge.runtime.backends.ort import OrtBackend
    from apd_edge.runtime.manifest import load_manifest

    m = load_manifest(bundle)
    assert m["samples"]["count"] == 3 and m["samples"]["size"] == [64, 96]
    assert m["samples"]["source"] == "synthetic:val images [0, 1, 2]"
    images, labels = load_samples(bundle, m)
    assert images.shape == (3, 64, 96, 3) and images.dtype == np.uint8 and labels.shape == (3, 64, 96)
    # ONNX Runtime reproduces the stored FP32 labels exactly, and the INT8 model against FP32 is measured
    fp32 = OrtBackend(bundle / "model.onnx")
    same = sample_parity(fp32, (images, labels), m, reference=fp32)
    assert same["agreement_fp32_labels"] == 100.0 and same["max_abs_diff"] == 0.0 and same["agreement"] == 100.0
    int8 = sample_parity(OrtBackend(bundle / "model_int8.onnx"), (images, labels), m, reference=fp32)
    assert 0 < int8["max_abs_diff"] and int8["agreement"] == pytest.approx(int8["agreement_fp32_labels"])
    assert 50 < int8["agreement"] <= 100


def test_fit_to_input_matches_preprocessing():
    from apd_edge.export.samples import fit_to_input
    from apd_edge.runtime.preprocess import preprocess_image

    img = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    fitted = fit_to_input(img, (64, 96), "pad", "reflect", mean)
    assert fitted.shape == (64, 96, 3)
    a = preprocess_image(img, (64, 96), mean, std, "pad", "reflect")[0]
    b = preprocess_image(fitted, (64, 96), mean, std, "pad", "reflect")[0]
    np.testing.assert_allclose(a, b, atol=1e-6)  # padding in uint8 equals padding after normalisation


def test_build_refusals(bundle, tmp_path):
    from apd_edge.export.build import build_bundle, check_bundle, plan_engines

    folder, m, precisions, sessions = check_bundle(bundle)
    assert precisions == ["fp32", "fp16", "int8"] and set(sessions) == set(precisions)
    plan = plan_engines(m, ["int8"], "10.3.0")
    assert plan == [{"engine": "model_int8.engine", "precision": "int8", "onnx": "model_int8.onnx",
                     "strongly_typed": True, "builder_flags": [], "profile": {"input": [[1, 3, 64, 96]] * 3}}]
    with pytest.raises(ApdError, match="unknown precision 'bf16'"):
        check_bundle(bundle, ["bf16"])
    b = _copy(bundle, tmp_path)
    _edit(b, lambda m: m.__setitem__("files", [f for f in m["files"] if f["precision"] != "fp16"]))
    with pytest.raises(ApdError, match="has no fp16 ONNX .*export it with --fp16"):
        check_bundle(b, ["fp16"])
    (b / "model_int8.onnx").write_bytes(b"not the model")
    with pytest.raises(ApdError, match="does not match the manifest"):
        build_bundle(b, ["int8"], dry_run=True)
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(ApdError, match="is a checkpoint: export it first"):
        check_bundle(tmp_path / "x.pt")
    with pytest.raises(ApdError, match="not an apd-edge bundle"):
        check_bundle(tmp_path)
    plans = build_bundle(bundle, ["fp32"], dry_run=True, trt_version="11.4.0", log=lambda s: None)
    assert [e["engine"] for e in plans["11.4.0"]] == ["model_fp32.engine"]


def test_samples_tampered_refused(bundle, tmp_path):
    from apd_edge.export.build import check_bundle

    b = _copy(bundle, tmp_path)
    with np.load(b / "samples.npz") as z:
        images, labels = z["images"], z["labels"]
    np.savez_compressed(b / "samples.npz", images=images[:, :32], labels=labels[:, :32])
    with pytest.raises(ApdError, match="samples.npz: sha256 does not match"):
        check_bundle(b)


@pytest.mark.parametrize("edit,msg", [
    (lambda m: m.update(num_classes=11, classes=m["classes"] + ["extra"], palette=m["palette"] + [[1, 2, 3]]),
     "the model outputs 10 classes but the manifest lists 11"),
    (lambda m: m["preprocess"].update(size=[64, 128]),
     "model input is 64x96 but the manifest's preprocess.size is 64x128"),
    (lambda m: m["input"].update(name="image"), "model input is 'input' but the manifest says 'image'"),
    (lambda m: m["outputs"].append({"name": "probs", "kind": "logits", "dtype": "float32", "shape": [1, 10, 64, 96]}),
     "lists output 'probs' but the model has only logits, labels"),
])
def test_manifest_model_mismatch_refused(bundle, tmp_path, edit, msg):
    from apd_edge.demo.run import run_demo
    from apd_edge.export.build import check_bundle
    from apd_edge.runtime import Segmenter

    b = _copy(bundle, tmp_path)
    _edit(b, edit)
    with pytest.raises(ApdError, match=msg):
        Segmenter.from_bundle(b, precision="int8")
    with pytest.raises(ApdError, match="the manifest does not belong to this model"):
        check_bundle(b)
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.zeros((64, 96, 3), np.uint8))
    with pytest.raises(ApdError, match=msg):  # the demo refuses before drawing a wrong legend
        run_demo(b, str(frames), max_frames=1, echo=lambda s: None)


def test_cli_build_and_export_on_a_bundle(bundle):
    from click.testing import CliRunner

    from apd_edge.cli.main import cli

    res = CliRunner().invoke(cli, ["build", str(bundle), "--dry-run", "--precisions", "fp32,int8",
                                   "--trt-version", "10.3.0", "--max-batch", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[1:4] == [
        "TensorRT 10.3.0:",
        "  model_fp32.engine          <- model.onnx         plain                        profile min/opt/max "
        "input 1x3x64x96 / 1x3x64x96 / 1x3x64x96",
        "  model_fp32_trtfp16.engine  <- model.onnx         plain + BuilderFlag.FP16     profile min/opt/max "
        "input 1x3x64x96 / 1x3x64x96 / 1x3x64x96"]
    bad = CliRunner().invoke(cli, ["build", str(bundle), "--dry-run", "--precisions", "int4"])
    assert bad.exit_code == 2 and "unknown precision 'int4'" in bad.output
    again = CliRunner().invoke(cli, ["export", str(bundle)])
    assert again.exit_code == 2 and f"is already a bundle; build its TensorRT engines with `apd-edge build {bundle}`" \
        in again.output


def test_bench_trtfp16_precision_is_trt_only(bundle):
    from apd_edge.bench.run import run_bench

    rows = run_bench([bundle], backends=["ort"], precisions=["fp32_trtfp16"], write=False, show_table=False,
                     echo=lambda s: None)
    assert [(r.status, r.reason) for r in rows] == [
        ("skipped", "fp32_trtfp16 is a TensorRT 10 engine (the FP32 graph built with the FP16 flag): --backends trt")]
