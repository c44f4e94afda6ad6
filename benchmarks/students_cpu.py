"""Must-show: the three students on CamVid at 360x480 on this machine's CPU (ORT FP32 / INT8, PyTorch).

For each student a checkpoint is taken from ``runs/`` when one trained on CamVid exists (newest
``best.pt``/``last.pt`` whose ``model_name`` matches); otherwise a randomly initialised one is written
and its mIoU is labelled "untrained" (latency does not depend on the weights; accuracy does).
Each is exported with ``export_bundle`` (FP32 + INT8, calibrated on CamVid train images) and measured
by ``apd-edge bench`` in a fresh process. Each model's rows go to ``benchmarks/results/students_cpu/<model>.json`` (with the
command that produced them); ``students_cpu.md`` and ``.png`` summarise every model present, so models
can be run one at a time:

    OMP_NUM_THREADS=2 python benchmarks/students_cpu.py --models espnet --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDENTS = ("bisenetv2", "espnet", "mobilenetv2")
SIZE = (360, 480)


def find_trained(model_name: str, runs: Path) -> Path | None:
    """Newest checkpoint under ``runs`` for ``model_name`` trained on CamVid (any folder depth)."""
    from apd_edge.engine.checkpoint import load_checkpoint

    found = []
    for p in list(runs.glob("**/best.pt")) + list(runs.glob("**/last.pt")):
        if p.parent.is_symlink() or "latest" in p.parts:
            continue
        try:
            ck = load_checkpoint(p)
        except Exception:
            continue
        data = (ck.get("recipe") or {}).get("data") or {}
        if ck.get("model_name") == model_name and data.get("dataset") == "camvid" and ck.get("step", 0):
            found.append(p)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def random_checkpoint(model_name: str, camvid: Path, out: Path) -> Path:
    """An untrained checkpoint with a CamVid recipe (classes, palette, mean/std from the dataset)."""
    import torch

    from apd_edge.config import DataConfig, Recipe, recipe_to_dict
    from apd_edge.data import build_dataset
    from apd_edge.engine.checkpoint import save_checkpoint
    from apd_edge.models import build_model

    ds = build_dataset(DataConfig(dataset="camvid", root=str(camvid)), "val")
    r = Recipe(name=f"{model_name}_camvid_untrained")
    r.model.name, r.data.dataset, r.data.root = model_name, "camvid", str(camvid)
    r.train.crop = [352, 480]  # export.input_size stays unset: the exporter pads 360x480 images to 384x480
    torch.manual_seed(0)
    model = build_model(model_name, ds.num_classes)
    path = out / f"{model_name}_untrained.pt"
    save_checkpoint({"model_name": model_name, "model_kwargs": {}, "num_classes": ds.num_classes,
                     "model": model.state_dict(), "recipe": recipe_to_dict(r), "step": 0, "best_miou": 0.0,
                     "classes": list(ds.class_names), "palette": ds.palette, "mean": r.data.mean, "std": r.data.std},
                    path)
    return path


def _bundle_source(bundle: Path) -> str | None:
    """The checkpoint a bundle was exported from (None when there is no bundle)."""
    try:
        return json.loads((bundle / "manifest.json").read_text())["source"]["checkpoint"]
    except (OSError, KeyError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", default=os.environ.get("APD_CAMVID", str(REPO.parent / "shared" / "data" / "camvid")))
    ap.add_argument("--runs", default=str(REPO / "runs"))
    ap.add_argument("--work", default=str(REPO / "export" / "students_cpu"), help="checkpoints and bundles")
    ap.add_argument("--models", default=",".join(STUDENTS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-images", type=int, default=10, help="CamVid val images for mIoU (101 = all)")
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="ORT / torch threads (default: library default)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--reuse-bundles", action="store_true", help="skip the export when --work has a bundle of the same checkpoint")
    args = ap.parse_args()

    from apd_edge.bench.run import load_rows
    from apd_edge.export import export_bundle

    camvid, work, out = Path(args.camvid), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    per_model = out / "students_cpu"
    per_model.mkdir(parents=True, exist_ok=True)
    cmd = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "unset") + " python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    for name in args.models.split(","):
        t_start = time.time()
        ckpt = find_trained(name, Path(args.runs))
        trained = ckpt is not None
        if ckpt is None:
            ckpt = random_checkpoint(name, camvid, work)
        if trained:
            from apd_edge.engine.checkpoint import load_checkpoint

            step = load_checkpoint(ckpt).get("step")
            note = f"trained checkpoint {ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt} (step {step})"
        else:
            note = "UNTRAINED (random init): mIoU is meaningless, latency is valid"
        if args.reuse_bundles and _bundle_source(work / name) == str(ckpt.resolve()):
            bundle = work / name
        else:
            bundle = export_bundle(ckpt, work / name, precisions=("fp32", "int8"), calib_images=args.calib_images,
                                   parity_images=2, data_root=camvid, progress=False)
        print(f"{name}: exported in {time.time() - t_start:.0f} s -> {bundle}", flush=True)
        # The benchmark itself runs as `apd-edge bench` in a fresh process: torch is imported only for the
        # torch row, and glibc returns large buffers to the OS so each row's RSS growth is its own.
        bench_cmd = [sys.executable, "-m", "apd_edge.cli.main", "bench", str(bundle), "--backends", "ort,torch",
                     "--precisions", "fp32,int8", "--iters", str(args.iters), "--warmup", str(args.warmup),
                     "--max-images", str(args.max_images), "--data", f"camvid:{camvid}", "--out", str(work / name)]
        if args.threads:
            bench_cmd += ["--threads", str(args.threads)]
        subprocess.run(bench_cmd, check=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
        rows = load_rows(work / name / "bench.json")
        for r in rows:
            r.model = r.model if trained else f"{r.model} (untrained)"
        (per_model / f"{name}.json").write_text(json.dumps(
            {"model": name, "command": cmd, "note": note, "seconds": round(time.time() - t_start),
             "loadavg": os.getloadavg(), "settings": vars(args), "rows": [asdict(r) for r in rows]},
            indent=2, default=str) + "\n")
    write_summary(out)


def write_summary(out: Path) -> Path:
    """students_cpu.md (+ .png) from every per-model result present under ``out/students_cpu/``."""
    from apd_edge.bench.machine import describe, machine_info
    from apd_edge.bench.report import markdown_table, plot, row_from_dict

    results = [json.loads(p.read_text()) for p in sorted((out / "students_cpu").glob("*.json"))]
    rows = [row_from_dict(r) for res in results for r in res["rows"]]
    text = [
        "# Students on CamVid 360x480, CPU (ONNX Runtime FP32 / INT8, PyTorch FP32)",
        "",
        f"Machine: {describe(machine_info())}. A shared machine (other jobs were running): latencies include "
        "contention; compare rows with each other, not with published numbers.",
        "",
        "CamVid images are 360x480; the bundles take a 384x480 input (the exporter's default: padded to a "
        "multiple of 32, labels cropped back). Latency: ms per image at batch 1 after the warm-up calls; `ms` = "
        "`infer` only, `e2e` = pad + normalise + infer + argmax + crop. mIoU on the first N CamVid val images "
        "(void ignored); iterations, N and the INT8 calibration set differ per model and are in each command below. "
        "INT8 is ONNX Runtime's QDQ model (percentile calibration on CamVid train images). PyTorch has no INT8 row "
        "(skipped, reason shown). `RSS MB +grow/peak`: host RSS growth while loading and running the row, and the "
        "process's peak RSS (torch's libraries are loaded only for the torch row, which comes last). No GPU here: "
        "the torch-CUDA rows are in `students_cuda.md`.",
        "",
        "Commands (from the repo root), one per model:",
        "",
        *[f"- {r['model']} ({r['seconds']} s, load average {r['loadavg'][0]:.1f}): `{r['command']}` -- {r['note']}"
          for r in results],
        "",
        markdown_table(rows),
        "",
    ]
    md = out / "students_cpu.md"
    md.write_text("\n".join(text))
    plot(rows, out / "students_cpu.png", title="CamVid 360x480, CPU: latency vs mIoU")
    print("\n".join(text))
    return md


if __name__ == "__main__":
    main()
