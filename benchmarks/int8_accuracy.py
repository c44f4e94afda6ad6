"""INT8 accuracy, calibration memory and CPU speed on real models (issue 16's evidence).

For each model (the ESPNet authors' CamVid model, imported; and any run folder given with --run):
  * FP32 / INT8 plain (percentile, the old default) / INT8 plain (auto method) / INT8 mixed precision
    (auto method, default 0.5-point target) / INT8 after QAT (with --qat NAME=RUN) mIoU on all CamVid val
    images (ONNX Runtime, the bundle's own parity images), with the number of layers kept float;
  * peak RSS of calibrating on 512 images at the export size (a subprocess running only the calibration;
    CamVid train has 367 images, so the list cycles through them, the repeats horizontally flipped);
  * ONNX Runtime CPU latency of FP32, the INT8 TensorRT graph (int8 activations), the INT8 CPU twin
    (uint8 activations) and PyTorch eager: interleaved rounds, median of the per-round medians.
Latency-only students (random weights: speed does not depend on training) with --latency-only.

    python benchmarks/int8_accuracy.py [--data-root ../shared/data/camvid] [--run NAME=RUN ...]
        [--qat NAME=RUN ...] [--latency-only bisenetv2,espnet,mobilenetv2] [--threads 2]

Writes benchmarks/results/int8_accuracy.{json,md}; every number comes from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid"
DEFAULT_WEIGHTS = REPO.parent / "shared" / "weights" / "espnet_p2_q8_camvid_authors.pth"
RESULTS = REPO / "benchmarks" / "results"


def _cpu_flags() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"model": model, "cores": os.cpu_count(),
            **{f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")}}


def _export(run: Path, out: Path, data_root: str, threads: int, reuse: bool = False, parity_images: int = 10_000,
            **kw) -> dict:
    from apd_edge.export import export_bundle

    t0 = time.perf_counter()
    reused = None
    if reuse and (out / "manifest.json").is_file():  # an earlier export of this command: read its measurements
        reused = json.loads((out / "manifest.json").read_text()).get("created")
        print(f"reusing {out} (exported {reused})", flush=True)
    else:
        export_bundle(run, out, precisions=("fp32", "int8"), data_root=data_root, parity_images=parity_images,
                      threads=threads, progress=True, **kw)
    m = json.loads((out / "manifest.json").read_text())
    q, par = m["quantization"], m["parity"]["results"]
    return {"seconds": round(time.perf_counter() - t0, 1), "method": q["method"], "scheme": q.get("scheme"),
            "float_precision": q.get("float_precision", "fp32"), "float_layers": q["float_layers"],
            "groups": q["groups"], "float_nodes": q["float_nodes"], "target": q["target"],
            "calib_images": q["calib_images"], "cache_hit": q["calibration_cache_hit"],
            "method_scores": q["method_scores"], "images": par["fp32"]["images"],
            "miou_torch": par["fp32"]["miou_torch"], "miou_fp32": par["fp32"]["miou"], "miou_int8": par["int8"]["miou"],
            "miou_int8_cpu": par.get("int8_cpu", {}).get("miou"), "agreement_int8": par["int8"]["agreement"],
            "sensitivity": q.get("sensitivity"), "reused_bundle_created": reused,
            "export_seconds_in_manifest": q.get("seconds")}


# ---------------------------------------------------------------------------------------------------
# calibration memory (run in a subprocess: its peak RSS is the calibration's alone)
# ---------------------------------------------------------------------------------------------------
def _calib_rss_child(bundle: str, data_root: str, n: int) -> None:
    import cv2

    from apd_edge.data import build_dataset
    from apd_edge.config import DataConfig
    from apd_edge.export.calibrate import collect_histograms, tensors_to_calibrate
    from apd_edge.export.quantize import OP_TYPES_TO_QUANTIZE, prepare_for_quantization
    from apd_edge.runtime.preprocess import preprocess_image

    m = json.loads((Path(bundle) / "manifest.json").read_text())
    p = m["preprocess"]
    ds = build_dataset(DataConfig(dataset="camvid", root=data_root), "train")
    with tempfile.TemporaryDirectory() as tmp:
        pre = prepare_for_quantization(Path(bundle) / "model.onnx", Path(tmp) / "pre.onnx")
        names = tensors_to_calibrate(pre, OP_TYPES_TO_QUANTIZE)

        def inputs():
            for i in range(n):
                img = ds[i % len(ds)][0]
                if (i // len(ds)) % 2:
                    img = cv2.flip(img, 1)
                yield preprocess_image(img, tuple(p["size"]), p["mean"], p["std"], p["mode"], p["pad_fill"])[0]

        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        c = collect_histograms(pre, names, inputs(), threads=2)
        print(json.dumps({"images": c.images, "tensors": len(names), "seconds": round(time.perf_counter() - t0, 1),
                          "rss_before_mb": round(base / 1024, 1),
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def calib_rss(bundle: Path, data_root: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "_calib_rss", str(bundle), data_root, str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------------------------------
def latency(bundle: Path, threads: int, rounds: int, iters: int) -> dict:
    import onnxruntime as ort
    import torch

    from apd_edge.checkpoint import model_from_checkpoint

    m = json.loads((bundle / "manifest.json").read_text())
    h, w = m["preprocess"]["size"]
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # interleaved sessions in one process: a pool left spinning after its run steals the cores from the next
    # session (ESPNet FP32 on 2 cores: 38 ms interleaved with spinning, 25 ms without, 22-24 ms alone)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    fns = {}
    # ort_fp32: the FP32 graph ONNX Runtime's CPU runs (model_cpu.onnx, PRelu rewritten, when the bundle has one);
    # ort_fp32_trt_source: model.onnx as exported (what TensorRT builds from)
    fp32_cpu = "model_cpu.onnx" if (bundle / "model_cpu.onnx").is_file() else "model.onnx"
    for key, f in (("ort_fp32", fp32_cpu), ("ort_fp32_trt_source", "model.onnx"),
                   ("ort_int8_trt_graph", "model_int8.onnx"), ("ort_int8_cpu", "model_int8_cpu.onnx")):
        if key == "ort_fp32_trt_source" and f == fp32_cpu:
            continue
        if (bundle / f).is_file():
            s = ort.InferenceSession(str(bundle / f), sess_options=opts, providers=["CPUExecutionProvider"])
            fns[key] = (lambda s=s: s.run(None, {"input": x}))
    torch.set_num_threads(threads)
    model, _ = model_from_checkpoint(m["source"]["checkpoint"])
    model.eval()
    xt = torch.from_numpy(x)

    def torch_fn():
        with torch.inference_mode():
            model(xt)

    fns["torch_eager"] = torch_fn
    for f in fns.values():  # warm-up
        for _ in range(3):
            f()
    per = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():  # interleaved: every variant sees the same machine state in a round
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                f()
                ts.append(1000 * (time.perf_counter() - t0))
            per[k].append(statistics.median(ts))
    res = {k: round(statistics.median(v), 2) for k, v in per.items()}
    res["int8_cpu_speedup_vs_fp32"] = round(res["ort_fp32"] / res["ort_int8_cpu"], 3) if "ort_int8_cpu" in res else None
    res["int8_trt_graph_speedup_vs_fp32"] = (round(res["ort_fp32"] / res["ort_int8_trt_graph"], 3)
                                             if "ort_int8_trt_graph" in res else None)
    res["ort_fp32_over_torch"] = round(res["ort_fp32"] / res["torch_eager"], 3)
    res["ort_fp32_file"] = fp32_cpu
    res["rounds"], res["iters"], res["threads"], res["size"] = rounds, iters, threads, [h, w]
    res["ort_spinning"] = False
    return res


def random_student(name: str, work: Path, data_root: str) -> Path:
    """A random-weight student with a CamVid recipe (latency does not depend on the weights)."""
    import torch

    from apd_edge.config import Recipe, recipe_to_dict
    from apd_edge.checkpoint import save_checkpoint
    from apd_edge.models import build_model

    torch.manual_seed(0)
    r = Recipe(name=f"{name}_random")
    r.model.name = name
    r.data.dataset, r.data.root = "camvid", data_root
    model = build_model(name, 11).eval()
    path = work / f"{name}_random" / "best.pt"
    save_checkpoint({"model_name": name, "model_kwargs": {}, "num_classes": 11, "model": model.state_dict(),
                     "recipe": recipe_to_dict(r), "step": 0, "best_miou": None}, path)
    return path.parent


def _md(doc: dict) -> str:
    L = ["# INT8 accuracy, calibration memory and CPU speed\n",
         f"Command: `{doc['command']}`  ", f"Date: {doc['date']}  ",
         f"Machine: {doc['machine']['model']}, {doc['machine']['cores']} cores; flags: "
         + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in doc["machine"].items() if k not in ("model", "cores"))
         + "  ", f"Settings: {json.dumps(doc['settings'])}\n",
         "## Accuracy (mIoU %, all CamVid val images, ONNX Runtime CPU)\n",
         "| model | variant | calibration, scheme, TensorRT float layers | float layers / groups | FP32 | INT8 | drop "
         "| target met | export s |",
         "|---|---|---|---|---:|---:|---:|---|---:|"]
    for name, r in doc["models"].items():
        for var, v in r.get("variants", {}).items():
            how = ", ".join(str(x) for x in (v["method"], v.get("scheme"), v.get("float_precision")) if x)
            L.append(f"| {name} | {var} | {how} | {v['float_layers']} / {v['groups']} | {v['miou_fp32']:.2f} | "
                     f"{v['miou_int8']:.2f} | {v['miou_fp32'] - v['miou_int8']:+.2f} | {v['target']['met']} | "
                     f"{v['seconds']:.0f} |")
    L += ["", "Data: " + "; ".join(f"{name}: {r['data_root']}" for name, r in doc["models"].items()
                                   if r.get("data_root"))]
    L += ["", "## Calibration memory (512 images at the export size, calibration alone, subprocess peak RSS)\n",
          "| model | size | tensors | images | peak RSS MB | seconds |", "|---|---|---:|---:|---:|---:|"]
    for name, r in doc["models"].items():
        c = r.get("calib_rss")
        if c:
            L.append(f"| {name} | {r['latency']['size'][0]}x{r['latency']['size'][1]} | {c['tensors']} | "
                     f"{c['images']} | {c['peak_rss_mb']:.0f} | {c['seconds']:.0f} |")
    L += ["", "## CPU latency (ms, batch 1, median of interleaved rounds)\n",
          "ONNX Runtime sessions run with intra-op spinning off (`session.intra_op.allow_spinning=0`): "
          "interleaved in one process, a pool left spinning slows whichever session runs next. "
          "ORT FP32 runs the graph the runtime runs on CPU (`model_cpu.onnx`, PRelu rewritten, when the bundle has "
          "one); the column after it is `model.onnx` as exported, where that differs.\n",
          "| model | size | threads | PyTorch eager | ORT FP32 | ORT FP32 (model.onnx) "
          "| ORT INT8 (TensorRT graph, s8 act.) "
          "| ORT INT8 (CPU twin, u8 act.) "
          "| INT8 CPU speed-up vs FP32 | ORT FP32 / PyTorch |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in doc["models"].items():
        t = r.get("latency")
        if t:
            L.append(f"| {name} | {t['size'][0]}x{t['size'][1]} | {t['threads']} | {t['torch_eager']:.1f} | "
                     f"{t['ort_fp32']:.1f} | "
                     + (f"{t['ort_fp32_trt_source']:.1f} | " if "ort_fp32_trt_source" in t else "= | ")
                     + f"{t.get('ort_int8_trt_graph', float('nan')):.1f} | {t.get('ort_int8_cpu', float('nan')):.1f} | "
                     f"{t['int8_cpu_speedup_vs_fp32']:.2f}x | {t['ort_fp32_over_torch']:.2f} |")
    v = doc["verdicts"]
    L += ["", "## Verdicts (computed from the numbers above)\n"]
    L += [f"- {k}: {val}" for k, val in v.items()]
    return "\n".join(L) + "\n"


def _verdicts(doc: dict) -> dict:
    out = {}
    for name, r in doc["models"].items():
        mixed = r.get("variants", {}).get("mixed (default)")
        if mixed:
            drop = mixed["miou_fp32"] - mixed["miou_int8"]
            out[f"{name}: INT8 (default settings) within 0.5 mIoU of FP32"] = (
                f"{'yes' if drop <= 0.5 else 'no'} (drop {drop:+.2f}, {mixed['float_layers']} float layers)")
        t = r.get("latency")
        if t:
            out[f"{name}: INT8 CPU twin >= 1.3x faster than ORT FP32"] = (
                f"{'yes' if t['int8_cpu_speedup_vs_fp32'] >= 1.3 else 'no'} ({t['int8_cpu_speedup_vs_fp32']:.2f}x)")
            out[f"{name}: ORT FP32 <= 0.6x PyTorch eager"] = (
                f"{'yes' if t['ort_fp32_over_torch'] <= 0.6 else 'no'} ({t['ort_fp32_over_torch']:.2f})")
        c = r.get("calib_rss")
        if c:
            out[f"{name}: calibration peak RSS <= 4 GB for 512 images"] = (
                f"{'yes' if c['peak_rss_mb'] <= 4096 else 'no'} ({c['peak_rss_mb']:.0f} MB)")
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_calib_rss":
        _calib_rss_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "rss":  # calibration memory alone, for bundles already exported
        ap = argparse.ArgumentParser(description="peak RSS of calibrating a bundle's FP32 graph on N images")
        ap.add_argument("rss")
        ap.add_argument("bundles", nargs="+")
        ap.add_argument("--data-root", default=os.environ.get("APD_EDGE_CAMVID", str(DEFAULT_DATA)))
        ap.add_argument("--images", type=int, nargs="+", default=[64, 512])
        ap.add_argument("--out", default=str(RESULTS / "int8_calib_rss.json"))
        a = ap.parse_args()
        doc = {"command": " ".join(shlex.quote(x) for x in [sys.executable.split("/")[-1], *sys.argv]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _cpu_flags(), "rows": []}
        for b in a.bundles:
            for n in a.images:
                row = {"bundle": b, **calib_rss(Path(b), a.data_root, n)}
                print(json.dumps(row), flush=True)
                doc["rows"].append(row)
        peak = max(r["peak_rss_mb"] for r in doc["rows"])
        doc["verdict"] = f"peak calibration RSS {peak:.0f} MB: {'within' if peak <= 4096 else 'over'} the 4 GB bound"
        Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(doc["verdict"])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=os.environ.get("APD_EDGE_CAMVID", str(DEFAULT_DATA)))
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="the ESPNet authors' CamVid model")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=RUN[@DATA_ROOT]",
                    help="a trained run folder (and the data copy it was trained on, if not --data-root)")
    ap.add_argument("--qat", action="append", default=[], metavar="NAME=RUN",
                    help="a QAT run folder (apd-edge qat) of model NAME")
    ap.add_argument("--latency-only", default="", help="students timed with random weights, e.g. bisenetv2,mobilenetv2")
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--rss-images", type=int, default=512, help="0: skip the calibration-memory measurement")
    ap.add_argument("--variants", default="plain-percentile,plain-auto,mixed",
                    help="exports per model; 'mixed' alone also reports plain INT8 with the chosen method")
    ap.add_argument("--sensitivity-images", type=int, default=8)
    ap.add_argument("--reuse-bundles", action="store_true",
                    help="read the measurements of bundles this script already exported instead of exporting again")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--work", default=str(REPO / "runs" / "int8_accuracy"))
    ap.add_argument("--out", default=str(RESULTS / "int8_accuracy"))
    args = ap.parse_args()
    if not Path(args.data_root).is_dir():
        sys.exit(f"error: CamVid not found at {args.data_root} (pass --data-root or set APD_EDGE_CAMVID)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Path] = {}
    if args.weights and Path(args.weights).is_file():
        from apd_edge.engine.importers import import_weights

        runs["espnet_authors"] = Path(import_weights(args.weights, out=work / "runs", data_root=args.data_root,
                                                     force=True))
    roots: dict[str, str] = {}
    for spec in args.run:
        name, _, path = spec.partition("=")
        path, _, root = path.partition("@")  # NAME=RUN@ROOT: a run trained on another copy of the data
        runs[name] = Path(path)
        if root:
            roots[name] = root
    qat = dict(s.partition("=")[::2] for s in args.qat)
    doc = {"command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _cpu_flags(),
           "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")}, "models": {}}
    for name, run in runs.items():
        bundle = work / "bundles" / name
        data_root = roots.get(name, args.data_root)
        r = doc["models"][name] = {"run": str(run), "data_root": data_root, "variants": {}}
        variants = args.variants.split(",")
        if "plain-percentile" in variants:
            r["variants"]["plain (percentile)"] = _export(run, bundle, data_root, args.threads,
                                                          calib_images=args.calib_images, calib_method="percentile",
                                                          int8_target=None, int8_sensitivity=False)
        if "plain-auto" in variants:
            r["variants"]["plain (auto method)"] = _export(run, bundle, data_root, args.threads,
                                                           calib_images=args.calib_images, int8_target=None,
                                                           int8_sensitivity=False)
        if "mixed" in variants:
            v = _export(run, bundle, data_root, args.threads, reuse=args.reuse_bundles,
                        calib_images=args.calib_images, sensitivity_images=args.sensitivity_images)
            r["variants"]["mixed (default)"] = v
            if "plain-auto" not in variants:  # the same export measured plain INT8 first, on the same images
                m = json.loads((bundle / "manifest.json").read_text())["quantization"]
                r["variants"]["plain (auto method)"] = {**v, "float_layers": 0, "float_nodes": [],
                                                        "miou_int8": v["miou_fp32"] - m["plain"]["miou_drop"],
                                                        "target": {"met": m["plain"]["miou_drop"] <= 0.5},
                                                        "note": "measured inside the mixed export (INT8 before "
                                                                "any layer went back to float)"}
        if name in qat:
            r["variants"]["QAT + mixed (default)"] = _export(Path(qat[name]), work / "bundles" / f"{name}_qat",
                                                             data_root, args.threads,
                                                             calib_images=args.calib_images)
        if args.rss_images:
            r["calib_rss"] = calib_rss(bundle, data_root, args.rss_images)
        r["latency"] = latency(bundle, args.threads, args.rounds, args.iters)
        print(json.dumps({name: {"latency": r["latency"], "calib_rss": r.get("calib_rss")}}), flush=True)
    for name in [n for n in args.latency_only.split(",") if n]:
        run = random_student(name, work / "runs", args.data_root)
        bundle = work / "bundles" / f"{name}_random"
        r = doc["models"][f"{name} (random weights)"] = {"run": str(run)}
        # random weights: only the graphs' speed matters, so calibration and parity stay small
        _export(run, bundle, args.data_root, args.threads, reuse=args.reuse_bundles, parity_images=4,
                calib_images=min(args.calib_images, 16), int8_target=None, int8_sensitivity=False)
        if args.rss_images:
            r["calib_rss"] = calib_rss(bundle, args.data_root, args.rss_images)
        r["latency"] = latency(bundle, args.threads, args.rounds, args.iters)
        print(json.dumps({name: {"latency": r["latency"], "calib_rss": r.get("calib_rss")}}), flush=True)
    doc["verdicts"] = _verdicts(doc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(_md(doc))
    print(_md(doc))


if __name__ == "__main__":
    main()
