"""Must-show: the three students on CamVid at 360x480 on this machine's CPU (ORT FP32 / INT8, PyTorch).

One run exports every model itself and measures it, and writes ``students_cpu.json`` (command, machine,
settings, each model's source and rows), ``students_cpu.md`` and ``students_cpu.png`` under ``--out``.
Weights: ``--checkpoint NAME=PATH`` (a checkpoint or run folder) for any model; else ``espnet`` is the
ESPNet authors' trained CamVid model (``--weights``, imported with ``import_weights``: its 12-output
variant, void as a class); else a randomly initialised model, labelled "untrained" (latency does not
depend on the weights; its mIoU is not reported). Each model is exported with ``export_bundle`` (FP32 +
INT8, calibrated on CamVid train images) and measured by ``apd-edge bench`` in a fresh process.
The committed result (``--render`` rewrites the .md and .png from the JSON without measuring):

    OMP_NUM_THREADS=1 python benchmarks/students_cpu.py --threads 1
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
AUTHORS_WEIGHTS = REPO.parent / "shared" / "weights" / "espnet_p2_q8_camvid_authors.pth"


def random_checkpoint(model_name: str, camvid: Path, out: Path) -> Path:
    """An untrained checkpoint with a CamVid recipe (classes, palette, mean/std from the dataset)."""
    import torch

    from apd_edge.config import DataConfig, Recipe, recipe_to_dict
    from apd_edge.data import build_dataset
    from apd_edge.checkpoint import save_checkpoint
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


def _relative(p: Path) -> str:
    p = Path(p).resolve()
    return os.path.relpath(p, REPO) if p.is_relative_to(REPO.parent) else str(p)


def model_source(name: str, args, work: Path) -> tuple[Path, str, bool]:
    """(checkpoint or run folder, note, trained) for one model, by the rule in the module docstring."""
    given = dict(spec.split("=", 1) for spec in args.checkpoint)
    if name in given:
        return Path(given[name]), f"checkpoint {given[name]} (--checkpoint)", True
    if name == "espnet" and args.weights and Path(args.weights).is_file():
        from apd_edge.engine.importers import import_weights
        from apd_edge.runtime.manifest import sha256_file

        run = Path(import_weights(args.weights, out=work / "runs", data_root=args.camvid, force=True))
        return run, (f"the ESPNet authors' CamVid model {_relative(Path(args.weights))} "
                     f"(sha256 {sha256_file(args.weights)[:12]}), imported"), True
    return (random_checkpoint(name, Path(args.camvid), work),
            "UNTRAINED (random init): latency only, mIoU not reported", False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", default=os.environ.get("APD_CAMVID", str(REPO.parent / "shared" / "data" / "camvid")))
    ap.add_argument("--weights", default=str(AUTHORS_WEIGHTS), help="the ESPNet authors' CamVid model (espnet row)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                    help="a trained checkpoint or run folder for one model (repeatable)")
    ap.add_argument("--work", default=str(REPO / "export" / "students_cpu"), help="checkpoints and bundles")
    ap.add_argument("--models", default=",".join(STUDENTS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-images", type=int, default=101, help="CamVid val images for mIoU (101 = all)")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="ORT / torch threads (default: library default)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--render", action="store_true", help="only rewrite students_cpu.md/.png from students_cpu.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        write_summary(out)
        return
    bad = [s for s in args.checkpoint if "=" not in s or s.split("=", 1)[0] not in STUDENTS]
    if bad:
        sys.exit(f"error: --checkpoint {bad[0]}: expected NAME=PATH with NAME in {', '.join(STUDENTS)}")

    from apd_edge.bench.machine import machine_info
    from apd_edge.bench.run import load_rows
    from apd_edge.export import export_bundle

    camvid, work = Path(args.camvid), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cmd = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "unset") + " python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    doc = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(),
           "settings": {k: (_relative(v) if k in ("camvid", "weights", "work", "out") and v else v)
                        for k, v in vars(args).items() if k != "render"},
           "loadavg_start": list(os.getloadavg()), "models": []}
    t_run = time.time()
    for name in args.models.split(","):
        t_start = time.time()
        src, note, trained = model_source(name, args, work)
        # always exported here, from the source above: the bundle is this command's own
        bundle = export_bundle(src, work / name, precisions=("fp32", "int8"), calib_images=args.calib_images,
                               parity_images=2, data_root=camvid, progress=False)
        t_export = time.time() - t_start
        print(f"{name}: exported in {t_export:.0f} s -> {bundle}", flush=True)
        # The benchmark itself runs as `apd-edge bench` in a fresh process: torch is imported only for the
        # torch row, and glibc returns large buffers to the OS so each row's RSS growth is its own.
        bench_cmd = [sys.executable, "-m", "apd_edge.cli.main", "bench", str(bundle), "--backends", "ort,torch",
                     "--precisions", "fp32,int8", "--iters", str(args.iters), "--warmup", str(args.warmup),
                     "--max-images", str(args.max_images if trained else 1), "--data", f"camvid:{camvid}",
                     "--out", str(work / name)]
        if args.threads:
            bench_cmd += ["--threads", str(args.threads)]
        subprocess.run(bench_cmd, check=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
        rows = load_rows(work / name / "bench.json")
        for r in rows:
            if not trained:  # random weights: scored on one image only to run the code path; not a result
                r.model, r.miou, r.pixel_acc = f"{r.model} (untrained)", None, None
                r.eval_data = "random weights: mIoU not reported"
        doc["models"].append({"model": name, "note": note, "export_seconds": round(t_export),
                              "seconds": round(time.time() - t_start), "loadavg": list(os.getloadavg()),
                              "rows": [asdict(r) for r in rows]})
    doc["seconds"] = round(time.time() - t_run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "students_cpu.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    write_summary(out)


def write_summary(out: Path) -> Path:
    """students_cpu.md (+ .png) from ``students_cpu.json``."""
    from apd_edge.bench.machine import describe
    from apd_edge.bench.report import markdown_table, plot, row_from_dict

    doc = json.loads((out / "students_cpu.json").read_text())
    st = doc["settings"]
    rows = [row_from_dict(r) for m in doc["models"] for r in m["rows"]]
    text = [
        "# Students on CamVid 360x480, CPU (ONNX Runtime FP32 / INT8, PyTorch FP32)",
        "",
        f"Command (from the repo root): `{doc['command']}`; {doc['date']}, {doc['seconds']} s in all.",
        "",
        f"Machine: {describe(doc['machine'])}. A shared machine (load average {doc['loadavg_start'][0]:.1f} at the "
        "start, other jobs running): latencies include contention; compare rows with each other, not with "
        "published numbers.",
        "",
        "Every bundle was exported by this command from the source named below (FP32 + INT8; INT8 = ONNX Runtime's "
        f"Q/DQ model, calibrated on {st['calib_images']} CamVid train images). CamVid images are 360x480; the "
        "bundles take a 384x480 input (the exporter's default: padded to a multiple of 32, labels cropped back). "
        f"Latency: ms per image at batch 1, {st['warmup']} warm-up calls, {st['iters']} timed calls; `ms` = "
        "`infer` alone, `e2e` = pad + normalise + infer + argmax + crop, the two timed in alternating calls so "
        f"that load changes hit both alike. mIoU on the first {st['max_images']} CamVid val images (void ignored), "
        "for trained weights only. "
        "PyTorch has no INT8 row (skipped, reason shown). `RSS MB +grow/peak`: host RSS growth while loading and "
        "running the row, and the process's peak RSS (torch's libraries are loaded only for the torch row, which "
        "comes last). No GPU here: the torch-CUDA rows are in `students_cuda.md`.",
        "",
        "Weights:",
        "",
        *[f"- {m['model']}: {m['note']} (export {m['export_seconds']} s, model total {m['seconds']} s, "
          f"load average {m['loadavg'][0]:.1f})" for m in doc["models"]],
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
