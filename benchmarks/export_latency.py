"""ONNX Runtime CPU latency of the exported FP32 and INT8 students against PyTorch eager.

For each registered student: random-init weights (latency does not depend on them), exported at
CamVid's size (360x480 -> 384x480 padded) with INT8 calibrated on real CamVid training images. Batch 1,
the same preprocessed val image for every backend, warm-up excluded, backends interleaved run by run
(so machine load hits all alike), median of ``--runs``. Ratios are speed-ups over PyTorch eager.
    OMP_NUM_THREADS=1 python benchmarks/export_latency.py --runs 50 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from apd_edge.config import recipe_from_dict, recipe_to_dict
from apd_edge.data import build_dataset
from apd_edge.checkpoint import save_checkpoint
from apd_edge.export.bundle import export_bundle
from apd_edge.models import build_model, list_models
from apd_edge.runtime import Segmenter
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]


def bench_student(name: str, camvid: str, tmp: Path, args) -> dict:
    torch.manual_seed(0)
    recipe = recipe_from_dict({"name": f"{name}_latency", "model": {"name": name},
                               "data": {"dataset": "camvid", "root": camvid}, "train": {"crop": [352, 480]}})
    model = build_model(name, 11)
    ckpt = tmp / name / "best.pt"
    save_checkpoint({"model_name": name, "model_kwargs": {}, "num_classes": 11, "model": model.state_dict(),
                     "recipe": recipe_to_dict(recipe), "step": 0, "best_miou": 0.0}, ckpt)
    bundle = export_bundle(ckpt, tmp / name / "bundle", precisions=("fp32", "int8"), calib_images=args.calib_images,
                           parity_images=2, progress=False)
    img, _ = build_dataset(recipe.data, "val")[0]
    segs = {p: Segmenter.from_bundle(bundle, backend="ort", precision=p, threads=args.threads)
            for p in ("fp32", "int8")}
    x, _ = segs["fp32"].preprocess(img)
    model.eval()
    xt = torch.from_numpy(x)
    runners = {
        "torch_eager": lambda: model(xt),
        "ort_fp32": lambda: segs["fp32"].infer(x, output="logits"),
        "ort_int8": lambda: segs["int8"].infer(x, output="logits"),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runners.values():
                fn()
        for _ in range(args.runs):
            for k, fn in runners.items():  # interleaved
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "input": list(x.shape), "median_ms": med,
            "p90_ms": {k: float(np.percentile(v, 90)) for k, v in times.items()},
            "speedup_vs_torch": {k: med["torch_eager"] / med[k] for k in med},
            "int8_vs_fp32": med["ort_fp32"] / med["ort_int8"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--models", nargs="*", default=None)
    args = ap.parse_args()
    prov = provenance()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models or list_models("student"):
            rows.append(bench_student(name, args.camvid, Path(tmp), args))
    import onnxruntime

    result = {**prov, "loadavg_end": list(os.getloadavg()),
              "settings": {**vars(args), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
              "runs": args.runs, "warmup": args.warmup, "rows": rows}
    out = REPO / "benchmarks" / "results" / "export_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model':<12} {'torch ms':>9} {'ort fp32 ms':>11} {'ort int8 ms':>11} "
          f"{'fp32 x':>7} {'int8 x':>7} {'int8/fp32':>9}")
    for r in rows:
        m, s = r["median_ms"], r["speedup_vs_torch"]
        print(f"{r['model']:<12} {m['torch_eager']:>9.1f} {m['ort_fp32']:>11.1f} {m['ort_int8']:>11.1f} "
              f"{s['ort_fp32']:>7.2f} {s['ort_int8']:>7.2f} {r['int8_vs_fp32']:>9.2f}")
    print(f"(median of {args.runs} interleaved batch-1 runs, {args.threads} thread(s); x = speed-up over PyTorch eager)"
          f" -> {out}")


if __name__ == "__main__":
    main()
