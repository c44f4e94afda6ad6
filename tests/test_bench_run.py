"""``apd-edge bench`` end to end on a tiny exported ESPNet (4 classes, 64x64) with ONNX Runtime.

The bundle is conftest.py's ``folder_bundle`` (shared with the demo and reliability tests).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from apd_edge.errors import ApdError

from helpers.bundles import CLASSES, PALETTE  # noqa: F401


@pytest.fixture(scope="module")
def tiny(folder_bundle):
    return folder_bundle  # conftest.py: (bundle, checkpoint, data root), exported once per session


def _rows(path: Path) -> dict[tuple[str, str], dict]:
    return {(r["backend"], r["precision"]): r for r in json.loads(path.read_text())["rows"]}


def _sane_latency(r: dict) -> None:
    assert 0 < r["compute_p50"] <= r["compute_p90"] <= r["compute_p99"]
    assert 0 < r["e2e_p50"] <= r["e2e_p90"] <= r["e2e_p99"]
    assert r["fps_b1"] > 0


def test_bench_cli_ort_table_json_csv_png(tiny, tmp_path):
    from click.testing import CliRunner

    from apd_edge.cli.main import cli
    from apd_edge.metrics import ConfusionMatrix
    from apd_edge.runtime import Segmenter

    bundle, _, data = tiny
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", str(bundle), "--backends", "ort,trt", "--precisions", "fp32,int8",
                                   "--iters", "8", "--warmup", "2", "--batch", "2", "--threads", "1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "espnet" in res.output and "TensorRT not installed" in res.output and "2 of 4 rows measured" in res.output
    rows = _rows(out / "bench.json")
    for prec in ("fp32", "int8"):
        r = rows[("ort", prec)]
        assert r["status"] == "ok", r["reason"]
        _sane_latency(r)
        assert 0.0 <= r["miou"] <= 1.0 and r["eval_images"] == 3 and r["eval_data"] == "folder:val, all 3 images"
        assert r["size_mb"] > 0 and r["params"] > 100_000 and r["gmacs"] > 0
        assert r["batch_note"] == "static batch 1" and r["fps_batch"] is None  # exported with a fixed batch
        assert r["threads"] == "ort intra-op 1 [CPU]" and r["host_mem_mb"] is not None
    assert rows[("ort", "int8")]["size_mb"] < rows[("ort", "fp32")]["size_mb"]
    for prec in ("fp32", "int8"):
        assert rows[("trt", prec)]["status"] == "skipped" and "TensorRT" in rows[("trt", prec)]["reason"]
    # mIoU equals an independent evaluation through the runtime and the metrics module
    from apd_edge.config import DataConfig
    from apd_edge.data import build_dataset

    seg = Segmenter.from_bundle(bundle, backend="ort", precision="fp32")
    ds = build_dataset(DataConfig(dataset="folder", root=str(data)), "val")
    cm = ConfusionMatrix(4)
    for i in range(len(ds)):
        img, mask = ds[i]
        cm.update(seg.predict(img), mask)
    assert rows[("ort", "fp32")]["miou"] == pytest.approx(cm.compute()["miou"])
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {t["status"] for t in table} == {"ok", "skipped"}
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "bench.json").read_text())
    assert meta["machine"]["onnxruntime"] and meta["settings"]["iters"] == 8


def test_bench_checkpoint_with_torch_and_dynamic_batch(tiny, tmp_path):
    from apd_edge.bench.run import run_bench

    _, ckpt, _ = tiny
    import torch

    before = torch.get_num_threads()
    rows = run_bench([ckpt], backends=["torch"], precisions=["fp32", "fp16"], iters=5, warmup=1, batch=2,
                     threads=1, out=tmp_path, echo=lambda s: None, show_table=False)
    assert torch.get_num_threads() == before  # the runner restores the process-wide setting
    fp32, fp16 = rows
    assert fp32.status == "ok", fp32.reason
    assert fp32.input_size == "64x64" and fp32.fps_batch > 0 and 0 <= fp32.miou <= 1
    assert fp32.size_mb > 0 and fp32.params > 100_000 and fp32.threads == "torch 1"
    assert fp16.status == "skipped" and "CUDA" in fp16.reason  # CPU here: fp16 is a CUDA-only row


def test_bench_goes_on_after_a_broken_artifact(tiny, tmp_path):
    from apd_edge.bench.run import run_bench

    bundle, _, _ = tiny
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    rows = run_bench([broken, bundle], backends=["ort"], iters=3, warmup=0, threads=1, out=tmp_path,
                     data="folder:" + str(tiny[2]), max_images=1, echo=lambda s: None, show_table=False)
    assert rows[0].status == "failed" and "not valid JSON" in rows[0].reason
    assert rows[1].status == "ok" and rows[1].eval_images == 1


def test_newest_bundle_is_the_default(tmp_path):
    import os

    from apd_edge.bench.run import newest_bundle

    for i, name in enumerate(("old", "new", "mid")):
        (tmp_path / name).mkdir()
        m = tmp_path / name / "manifest.json"
        m.write_text("{}")
        os.utime(m, (1000 + [0, 20, 10][i],) * 2)
    assert newest_bundle(tmp_path) == tmp_path / "new"


def test_bench_bad_arguments(tmp_path):
    from apd_edge.bench.run import newest_bundle, run_bench

    with pytest.raises(ApdError, match="unknown backend 'onnx'"):
        run_bench([tmp_path], backends=["onnx"])
    with pytest.raises(ApdError, match="no bundle found"):
        newest_bundle(tmp_path)
    with pytest.raises(ApdError, match="artifact not found"):
        run_bench([tmp_path / "nope"])


BLOCK_TORCH = textwrap.dedent("""
    import sys, importlib.abc

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked for this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    from apd_edge.bench.run import run_bench
    rows = run_bench([sys.argv[1]], backends=["ort", "torch"], precisions=["fp32"], iters=3, warmup=1, threads=1,
                     out=sys.argv[2], max_images=1, echo=lambda s: None, show_table=False)
    assert "torch" not in sys.modules, "torch was imported"
    print("ROWS", [(r.backend, r.status, r.reason[:40], r.miou is not None, r.params) for r in rows])
""")


def test_bench_runs_without_torch(tiny, tmp_path):
    bundle, _, _ = tiny
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(bundle), str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("ROWS"))
    rows = eval(line[5:])  # noqa: S307 - our own subprocess output
    (ort, torch_row) = rows
    assert ort[0] == "ort" and ort[1] == "ok" and ort[3] is True and ort[4] > 0  # mIoU and params without torch
    assert torch_row[:2] == ("torch", "skipped") and "torch not installed" in torch_row[2]
    assert (tmp_path / "bench.json").is_file() and (tmp_path / "bench.png").is_file()


cuda = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("torch") or not __import__("torch").cuda.is_available(),
    reason="needs a CUDA GPU (torch fp16 / channels-last / CUDA-graph paths); this machine has none")


@cuda
def test_torch_cuda_fp16_channels_last_graph_agree(tiny):
    from apd_edge.bench.runners import torch_runner
    from apd_edge.runtime.manifest import load_manifest

    bundle, ckpt, _ = tiny
    manifest = load_manifest(bundle)
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ref = torch_runner(ckpt, manifest, device="cuda").predict(img)
    for kw in ({"precision": "fp16"}, {"channels_last": True}, {"cuda_graph": True},
               {"precision": "fp16", "channels_last": True, "cuda_graph": True}):
        got = torch_runner(ckpt, manifest, device="cuda", **kw).predict(img)
        assert (got == ref).mean() > 0.99, kw


@cuda
def test_bench_torch_cuda_rows(tiny, tmp_path):
    from apd_edge.bench.run import run_bench

    _, ckpt, _ = tiny
    rows = run_bench([ckpt], backends=["torch"], precisions=["fp32", "fp16"], device="cuda", iters=10, warmup=3,
                     cuda_graph=True, channels_last=True, out=tmp_path, echo=lambda s: None, show_table=False)
    for r in rows:
        assert r.status == "ok", r.reason
        assert r.gpu_mem_mb and r.gpu_mem_mb > 0 and "CUDA events" in r.timing
        assert 0 < r.compute_p50 <= r.compute_p90 <= r.compute_p99


def test_onnx_and_torch_mac_counts_agree(tiny):
    from apd_edge.bench.onnx_profile import onnx_profile
    from apd_edge.bench.runners import torch_runner
    from apd_edge.runtime.manifest import load_manifest

    bundle, ckpt, _ = tiny
    onnx = onnx_profile(bundle / "model.onnx")
    runner = torch_runner(ckpt, load_manifest(bundle))
    assert onnx["macs"] == runner.count_macs() > 1e6
    assert 0.98 * runner.params <= onnx["params"] <= runner.params  # BatchNorm folded into convs in ONNX


def test_precision_notes_and_plot_axes_from_zero(tmp_path):
    """A lower precision slower than FP32 gets a one-line reason; bench.png's axes start at zero."""
    from apd_edge.bench.report import Row, plot, precision_notes

    def row(prec, ms, miou):
        return Row(model="m", artifact="a", backend="ort", precision=prec, device="cpu", compute_p50=ms,
                   e2e_p50=ms + 1, miou=miou)

    rows = [row("fp32", 10.0, 0.5012), row("fp16", 14.0, 0.5011), row("int8", 8.0, 0.5004)]
    notes = precision_notes(rows, flags={"avx2", "fma"})
    assert len(notes) == 1 and notes[0].startswith("m ort/fp16 is slower than fp32 on cpu (14.00 vs 10.00 ms): ")
    assert "no native FP16" in notes[0]
    rows[2].compute_p50 = 12.0
    notes = precision_notes(rows, flags={"avx2"})
    assert "lacks int8 dot-product instructions" in notes[1]
    assert "has avx512_vnni" in precision_notes(rows, flags={"avx512_vnni"})[1]

    import matplotlib.pyplot as plt

    seen = {}
    orig = plt.Figure.savefig

    def spy(fig, *a, **k):
        seen["ylim"], seen["xlim"], seen["title"] = (fig.axes[0].get_ylim(), fig.axes[0].get_xlim(),
                                                     fig.axes[0].get_title())
        return orig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        plot(rows, tmp_path / "b.png")
    finally:
        plt.Figure.savefig = orig
    assert seen["ylim"][0] == 0 and seen["ylim"][1] > 50.12 and seen["xlim"][0] == 0
    assert "(mIoU 50.04 to 50.12 %)" in seen["title"]


def test_bench_split_and_max_images_are_stated(tiny, tmp_path):
    from click.testing import CliRunner

    from apd_edge.cli.main import cli

    bundle, _, _ = tiny
    res = CliRunner().invoke(cli, ["bench", str(bundle), "--precisions", "fp32", "--iters", "2", "--warmup", "0",
                                   "--threads", "1", "--split", "train", "--max-images", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    r = _rows(tmp_path / "bench.json")[("ort", "fp32")]
    assert r["eval_images"] == 2 and r["eval_data"] == "folder:train, 2 of 4 images (evenly spaced, max 2)"
    assert "mIoU on folder:train, 2 of 4 images (evenly spaced, max 2)" in res.output
