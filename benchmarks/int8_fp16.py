"""What FP16 float layers cost an INT8 graph: FP32 / FP16 / INT8 (FP32 scales) / INT8 (scales rounded to FP16) /
INT8 + FP16 float layers (the graph ``--int8-float fp16`` writes: quantize in FP32) / the same quantizing in FP16,
mIoU on all val images with ONNX Runtime's CPU.

ONNX Runtime's CPU provider has no FP16 kernels for most ops: it computes them in FP32 between casts, so the
FP16 numbers here carry FP16 storage rounding between layers, not a GPU's FP16 arithmetic.
Usage:
    python benchmarks/int8_fp16.py BUNDLE --data-root ../shared/data/camvid
BUNDLE holds model.onnx and an FP32-scale model_int8.onnx (exported with --int8-float fp32, or before the FP16
graph existed). Writes benchmarks/results/int8_fp16_<bundle name>.{json,md}.
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


REPO = Path(__file__).resolve().parents[1]


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        return ""


def make_graphs(bundle: Path, work: Path) -> tuple[dict[str, Path], dict]:
    import onnx

    from apd_edge.export.fp16 import convert_fp16
    from apd_edge.export.int8_fp16 import check_fp16_qdq, fp16_scales, qdq_to_fp16

    work.mkdir(parents=True, exist_ok=True)
    int8 = bundle / "model_int8.onnx"
    if not check_fp16_qdq(onnx.load(str(int8))):
        sys.exit(f"{int8} already has FP16 scales; export the bundle with --int8-float fp32")
    graphs = {"FP32": bundle / "model.onnx", "FP16": work / "fp16.onnx", "INT8 (FP32 scales)": int8,
              "INT8 (scales rounded to FP16)": work / "int8_scales16.onnx",
              "INT8 + FP16 float layers": work / "int8_fp16.onnx",
              "INT8 + FP16 float layers, quantize in FP16": work / "int8_fp16_q16.onnx"}
    convert_fp16(graphs["FP32"], graphs["FP16"])
    m = onnx.load(str(int8))
    fp16_scales(m)
    onnx.save(m, str(graphs["INT8 (scales rounded to FP16)"]))
    info = qdq_to_fp16(int8, graphs["INT8 + FP16 float layers"])  # what --int8-float fp16 writes
    qdq_to_fp16(int8, graphs["INT8 + FP16 float layers, quantize in FP16"], quantize_fp32=False)
    return graphs, info


def score(bundle: Path, graphs: dict[str, Path], data_root: str, threads: int, limit: int | None) -> dict:
    import onnxruntime as ort

    from apd_edge.config import recipe_from_dict
    from apd_edge.data import build_dataset
    from apd_edge.metrics import ConfusionMatrix
    from apd_edge.checkpoint import load_checkpoint
    from apd_edge.runtime.postprocess import logits_to_labels
    from apd_edge.runtime.preprocess import preprocess_image

    m = json.loads((bundle / "manifest.json").read_text())
    recipe = recipe_from_dict(load_checkpoint(m["source"]["checkpoint"])["recipe"])
    recipe.data.root = data_root
    ds = build_dataset(recipe.data, recipe.data.val_split)
    k, p = ds.num_classes, m["preprocess"]
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    sess = {name: ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for name, path in graphs.items()}
    extra = int(m["num_classes"]) - k  # trailing outputs the dataset does not label (void): scored as errors
    cms = {name: ConfusionMatrix(k, extra_classes=extra) for name in graphs}
    agree = {name: 0 for name in graphs}
    pixels, n = 0, len(ds) if limit is None else min(limit, len(ds))
    t0 = time.perf_counter()
    for i in range(n):
        img, mask = ds[i]
        x, meta = preprocess_image(img, tuple(p["size"]), p["mean"], p["std"], p["mode"], p.get("pad_fill", "reflect"))
        gt = mask.reshape(-1)
        labs = {}
        for name, s in sess.items():
            labs[name] = logits_to_labels(s.run(None, {s.get_inputs()[0].name: x})[0], meta).reshape(-1)
            cms[name].update(labs[name], gt)
        for name in graphs:
            agree[name] += int((labs[name] == labs["FP32"]).sum())
        pixels += labs["FP32"].size
    rows = {}
    for name, cm in cms.items():
        rows[name] = {"miou": 100 * cm.compute()["miou"], "agreement_with_fp32": 100 * agree[name] / pixels}
    return {"images": n, "classes": k, "seconds": time.perf_counter() - t0, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N val images")
    ap.add_argument("--target", type=float, default=0.5, help="the INT8 target (mIoU points) for the verdict")
    ap.add_argument("--work", default=str(REPO / "runs" / "int8_fp16"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    bundle = Path(args.bundle)
    graphs, info = make_graphs(bundle, Path(args.work) / bundle.name)
    res = score(bundle, graphs, args.data_root, args.threads, args.limit)
    r = res["rows"]
    fp32 = r["FP32"]["miou"]
    d32, d16 = fp32 - r["INT8 (FP32 scales)"]["miou"], fp32 - r["INT8 + FP16 float layers"]["miou"]
    from apd_edge.export.int8 import FP16_TOLERANCE, auto_keeps_fp16

    auto = "fp16" if auto_keeps_fp16(d16, d32, args.target) else "fp32"  # what --int8-float auto does
    doc = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": {"cpu": _cpu(), "python": platform.python_version(), "threads": args.threads},
           "settings": vars(args), "conversion": info, **res,
           "verdict": {"fp16_float_layers_cost": d16 - d32, "int8_drop_fp32_scales": d32, "int8_drop_fp16": d16,
                       "auto_picks": auto}}
    name = bundle.name
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"int8_fp16_{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [f"# INT8 with FP16 float layers: {name}", "", f"Command: `{doc['command']}`  ", f"Date: {doc['date']}  ",
             f"Machine: {doc['machine']['cpu']}, {args.threads} thread(s), ONNX Runtime CPU (FP16 ops run in FP32 "
             "between casts)  ", f"Images: {res['images']} val images, {res['classes']} classes", "",
             "| graph | mIoU | change vs FP32 | argmax agreement with FP32 |", "|---|---:|---:|---:|"]
    for g, row in r.items():
        lines.append(f"| {g} | {row['miou']:.2f} | {row['miou'] - fp32:+.2f} | {row['agreement_with_fp32']:.2f} % |")
    lines += ["", f"Conversion: {info['scales']} scales to FP16 ({info['scales_clamped']} below the smallest FP16 "
              f"clamped), {info['weights_changed']} int8 weight values re-derived, opset {info['opset']}.", "",
              f"Verdict (computed): FP16 float layers change the INT8 drop by {d16 - d32:+.2f} points "
              f"({d32:.2f} -> {d16:.2f}); with a {args.target} target and a {FP16_TOLERANCE} tolerance "
              "`--int8-float auto` "
              f"keeps **{auto}** float layers."]
    (out / f"int8_fp16_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
