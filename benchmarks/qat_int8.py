"""INT8 mIoU before and after QAT: a trained run, its PTQ INT8 export, and the INT8 export of its QAT run.

For SOURCE (a run folder) this runs ``apd-edge qat`` (unless --qat-run points at a finished one), exports
both with ``--int8`` (same calibration images and method; the QAT bundle with the QAT activation ranges and,
with --both-ranges, also with freshly calibrated ranges), and scores every bundle with ONNX Runtime on all
images of the val split: mIoU over the dataset's classes (a prediction of an extra output class, e.g. the
authors' ESPNet's void, counts as an error), and INT8 argmax agreement with the same bundle's FP32.
Usage:
    python benchmarks/qat_int8.py runs/espnet_camvid --iterations 120 --crop 256x352 --threads 1
Writes benchmarks/results/qat_int8_<name>.json and .md (command, machine, settings, numbers).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _machine() -> dict:
    cpu = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        pass
    return {"cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def score_bundle(bundle: Path, data_root: str | None, precisions=("fp32", "int8"), threads: int | None = None) -> dict:
    """mIoU (dataset classes) of each precision of ``bundle`` on all val images, and INT8 agreement with FP32."""
    from apd_edge.config import recipe_from_dict
    from apd_edge.data import build_dataset
    from apd_edge.checkpoint import load_checkpoint
    from apd_edge.runtime.backends.ort import OrtBackend
    from apd_edge.runtime.postprocess import logits_to_labels
    from apd_edge.runtime.preprocess import preprocess_image

    m = json.loads((bundle / "manifest.json").read_text())
    recipe = recipe_from_dict(load_checkpoint(m["source"]["checkpoint"])["recipe"])
    if data_root:
        recipe.data.root = data_root
    ds = build_dataset(recipe.data, recipe.data.val_split)
    k = ds.num_classes
    prep = m["preprocess"]
    # the TensorRT graphs (a CPU twin, ``variant: cpu``, is scored by int8_accuracy.py)
    files = {f["precision"]: f["path"] for f in m["files"] if f["format"] == "onnx" and not f.get("variant")}
    backends = {p: OrtBackend(bundle / files[p], device="cpu", threads=threads) for p in precisions}
    cms = {p: np.zeros((k + 1, k + 1), np.int64) for p in precisions}
    agree = pixels = 0
    for i in range(len(ds)):
        img, mask = ds[i]
        x, meta = preprocess_image(img, tuple(prep["size"]), prep["mean"], prep["std"], prep["mode"],
                                   prep.get("pad_fill", "reflect"))
        labs = {}
        for p, be in backends.items():
            lab = logits_to_labels(be.infer(x, ["logits"])["logits"], meta).reshape(-1)
            labs[p] = lab
            gt = mask.reshape(-1)
            keep = gt != 255
            pred = np.minimum(lab[keep], k)  # any extra output class is one "wrong" bucket
            cms[p] += np.bincount(gt[keep].astype(np.int64) * (k + 1) + pred,
                                  minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
        if "int8" in labs:
            agree += int((labs["int8"] == labs["fp32"]).sum())
            pixels += labs["fp32"].size
    q = m.get("quantization") or {}
    out = {"images": len(ds), "classes": k, "int8_method": q.get("method"), "int8_scheme": q.get("scheme"),
           "float_groups": len(q.get("float_nodes") or [])}
    for p, cm in cms.items():
        tp = np.diag(cm)[:k].astype(float)
        union = cm[:k, :].sum(1) + cm[:, :k].sum(0) - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        out[f"{p}_miou"] = float(100 * np.nanmean(iou))
    if pixels:
        out["int8_agreement"] = 100.0 * agree / pixels
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", help="trained run folder (or checkpoint)")
    ap.add_argument("--qat-run", help="a finished QAT run folder (skip fine-tuning)")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", default=None, help="HxW training crops for QAT (default: the recipe's)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="more QAT options KEY=VALUE")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--calib-method", default="percentile")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--int8-scheme", default="auto", help="Q/DQ placement of every export: auto, all, weighted")
    ap.add_argument("--sensitivity", default="auto", choices=["auto", "on", "off"],
                    help="sensitivity ranking (and mixed precision): auto = only when plain INT8 misses the target")
    ap.add_argument("--both-ranges", action="store_true", help="also export the QAT run with calibrated ranges")
    ap.add_argument("--stage", choices=["all", "source", "qat"], default="all",
                    help="source: only the PTQ export of SOURCE; qat: only the QAT run and its exports "
                         "(rows merge into an existing results file)")
    ap.add_argument("--work", default=str(REPO / "runs" / "qat_int8"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from apd_edge.engine.qat import parse_qat_overrides, read_summary, run_qat
    from apd_edge.export import export_bundle

    work = Path(args.work)
    src = Path(args.source)
    name = (src if src.is_dir() else src.parent).name
    res_dir = Path(args.results)
    res_path = res_dir / f"qat_int8_{name}.json"
    prev = json.loads(res_path.read_text()) if res_path.is_file() and args.stage != "all" else {}
    commands = dict(prev.get("commands") or {})
    commands[args.stage] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    qat_run, qat_summary = None, {}
    if args.stage == "source":
        pass
    elif args.qat_run:
        qat_run = Path(args.qat_run)
    else:
        sets = [f"iterations={args.iterations}", f"batch_size={args.batch_size}", f"lr={args.lr}"] + args.overrides
        if args.crop:
            sets.append(f"crop=[{args.crop.replace('x', ',')}]")
        qat_run = run_qat(src, parse_qat_overrides(sets), output_dir=work, data_root=args.data_root, progress=True)
    if qat_run is not None:
        qat_summary = read_summary(qat_run)

    common = dict(precisions=["fp32", "int8"], calib_images=args.calib_images, calib_method=args.calib_method,
                  parity_images=2, data_root=args.data_root, progress=True, int8_scheme=args.int8_scheme,
                  int8_sensitivity={"auto": "auto", "on": True, "off": False}[args.sensitivity], threads=args.threads)
    rows = dict(prev.get("rows") or {})
    jobs = [("PTQ (source)", src, {})] if args.stage != "qat" else []
    if qat_run is not None:
        jobs += [("QAT, QAT ranges", qat_run, {"qat_ranges": True})] + (
            [("QAT, calibrated ranges", qat_run, {"qat_ranges": False})] if args.both_ranges else [])
    for label, run, kw in jobs:
        out = (work / "bundles" / label.split(" ")[0].lower().replace(",", "")
               / ("qat_ranges" if kw.get("qat_ranges") else "calib"))
        t = time.perf_counter()
        bundle = export_bundle(run, out, **common, **kw)
        rows[label] = {"bundle": str(bundle), "export_s": time.perf_counter() - t,
                       **score_bundle(bundle, args.data_root, threads=args.threads)}
        print(label, rows[label], file=sys.stderr, flush=True)

    result = {
        "commands": commands, "machine": _machine(), "source": str(src),
        "qat_run": str(qat_run) if qat_run is not None else prev.get("qat_run"),
        "settings": {"calib_images": args.calib_images, "calib_method": args.calib_method,
                 "int8_scheme": args.int8_scheme, "sensitivity": args.sensitivity,
                     "qat": qat_summary.get("qat") or (prev.get("settings") or {}).get("qat")},
        "qat_summary": {k: qat_summary.get(k) for k in ("steps", "wall_time_s", "fp32_miou", "start_fake_quant_miou",
                                                        "final_miou", "best_miou", "best_step")}
        if qat_summary else prev.get("qat_summary"),
        "rows": rows,
    }
    res_dir.mkdir(parents=True, exist_ok=True)
    if args.stage != "all" and res_path.is_file():  # another stage may have finished meanwhile: merge its rows
        latest = json.loads(res_path.read_text())
        result["rows"] = rows = {**(latest.get("rows") or {}), **rows}
        result["commands"] = commands = {**(latest.get("commands") or {}), **commands}
        for key in ("qat_run", "qat_summary"):
            result[key] = result[key] or latest.get(key)
        if not result["settings"]["qat"]:
            result["settings"]["qat"] = (latest.get("settings") or {}).get("qat")
    res_path.write_text(json.dumps(result, indent=2) + "\n")
    steps = (result["qat_summary"] or {}).get("steps")
    lines = [f"# INT8 before/after QAT: {name}", ""] + [f"`{c}`" for c in commands.values()] + [
             "", f"machine: {result['machine']['cpu']}, {args.threads} threads; calibration {args.calib_method}, "
             f"{args.calib_images} images; QAT {steps} steps (mIoU over the dataset's classes, all val images)",
             "", "| export | FP32 mIoU | INT8 mIoU | INT8 - FP32 | INT8 argmax agreement |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['fp32_miou']:.2f} | {r['int8_miou']:.2f} | "
                     f"{r['int8_miou'] - r['fp32_miou']:+.2f} "
                     f"| {r['int8_agreement']:.1f} % |")
    if "PTQ (source)" in rows:
        ref = rows["PTQ (source)"]["fp32_miou"]
        best = max(r["int8_miou"] for r in rows.values())
        lines += ["", f"Best INT8 mIoU {best:.2f} vs source FP32 {ref:.2f}: {best - ref:+.2f} "
                      f"({'within' if best - ref >= -0.5 else 'not within'} 0.5 of FP32)."]
    (res_dir / f"qat_int8_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
