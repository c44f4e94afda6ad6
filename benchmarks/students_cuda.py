"""Must-show (GPU): torch-CUDA rows for the three students at 360x480 (CamVid) and 1024x2048 (Cityscapes size).

Per student and size, ``run_bench`` with the torch backend is run twice in this process:
eager (FP32 and FP16, NCHW) and graphed (FP32 and FP16, channels-last, CUDA-graph replay).
Latency does not depend on the weights, so untrained checkpoints are used unless ``--ckpt-dir`` holds
``<model>.pt`` trained on CamVid (then the 360x480 rows carry a real mIoU on CamVid val).
Writes ``students_cuda.json`` / ``.md`` / ``.png`` under ``--out`` (default ``benchmarks/results``);
``--render`` rewrites the .md (and .png) from the JSON without measuring:

    python benchmarks/students_cuda.py --camvid ../shared/data/camvid
    python benchmarks/students_cuda.py --render
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDENTS = ("bisenetv2", "espnet", "mobilenetv2")
SIZES = {"camvid": (360, 480, 11), "cityscapes": (1024, 2048, 19)}


def make_checkpoint(model_name: str, dataset: str, size: tuple[int, int, int], camvid: Path | None,
                    ckpt_dir: Path | None, work: Path) -> tuple[Path, bool]:
    """A checkpoint whose recipe records the input size: trained (from ``ckpt_dir``) or random init."""
    import torch

    from apd_edge.config import Recipe, recipe_to_dict
    from apd_edge.checkpoint import load_checkpoint, save_checkpoint
    from apd_edge.models import build_model

    h, w, n = size
    trained = ckpt_dir is not None and dataset == "camvid" and (ckpt_dir / f"{model_name}.pt").is_file()
    r = Recipe(name=f"{model_name}_{dataset}")
    r.model.name, r.data.dataset = model_name, dataset
    # untrained weights: no dataset recorded, so bench spends no time on a meaningless mIoU
    r.data.root = str(camvid) if trained and camvid is not None else None
    r.export.input_size = [h, w]
    if trained:
        ck = load_checkpoint(ckpt_dir / f"{model_name}.pt")
        fresh = recipe_to_dict(r)
        ck["recipe"] = {**(ck.get("recipe") or {}), "data": fresh["data"], "export": fresh["export"]}
    else:
        torch.manual_seed(0)
        model = build_model(model_name, n)
        ck = {"model_name": model_name, "model_kwargs": {}, "num_classes": n, "model": model.state_dict(),
              "recipe": recipe_to_dict(r), "step": 0, "best_miou": 0.0, "classes": [str(i) for i in range(n)],
              "palette": [], "mean": r.data.mean, "std": r.data.std}
    path = work / f"{model_name}_{dataset}.pt"
    save_checkpoint(ck, path)
    return path, trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", default=os.environ.get("APD_CAMVID", str(REPO.parent / "shared" / "data" / "camvid")))
    ap.add_argument("--ckpt-dir", default=None, help="folder with trained <model>.pt (CamVid, 11 classes)")
    ap.add_argument("--models", default=",".join(STUDENTS))
    ap.add_argument("--sizes", default="camvid,cityscapes")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-images", type=int, default=101, help="CamVid val images for mIoU")
    ap.add_argument("--work", default=str(REPO / "export" / "students_cuda"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--render", action="store_true", help="only rewrite students_cuda.md/.png from students_cuda.json")
    args = ap.parse_args()
    if args.render:
        render(Path(args.out))
        return

    from apd_edge.bench.machine import machine_info
    from apd_edge.bench.report import markdown_table
    from apd_edge.bench.run import run_bench

    camvid = Path(args.camvid) if (Path(args.camvid) / "val").is_dir() else None
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    t0 = time.time()
    rows, notes = [], []
    for dataset in args.sizes.split(","):
        h, w, n = SIZES[dataset]
        for name in args.models.split(","):
            ckpt, trained = make_checkpoint(name, dataset, (h, w, n), camvid,
                                            Path(args.ckpt_dir) if args.ckpt_dir else None, work)
            notes.append(f"{name} {h}x{w}: {'trained on CamVid' if trained else 'untrained (latency only)'}")
            data = f"camvid:{camvid}" if trained and camvid is not None else None
            for graphed in (False, True):
                got = run_bench([ckpt], backends=["torch"], precisions=["fp32", "fp16"], device=args.device,
                                batch=args.batch, warmup=args.warmup, iters=args.iters, data=data,
                                max_images=args.max_images,
                                channels_last=graphed, cuda_graph=graphed,
                                out=work / f"{name}_{dataset}_{int(graphed)}",
                                echo=lambda s: None)
                for r in got:
                    r.model = f"{name} {h}x{w}" + ("" if trained else " (untrained)") + (
                        " [channels-last, CUDA graph]" if graphed else " [eager]")
                rows.extend(got)
                print(markdown_table(got), flush=True)
    info = machine_info()
    doc = {"command": cmd, "seconds": round(time.time() - t0), "machine": info, "notes": notes,
           "settings": vars(args), "gpu_memory": GPU_MEMORY, "rows": [asdict(r) for r in rows]}
    (out / "students_cuda.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    render(out)


# What the `gpu N` figure of a torch row is (TorchRunner.gpu_peak_mb), recorded in the JSON of every run.
GPU_MEMORY = (
    "`gpu N` (after the host RSS in the memory column) is the peak of PyTorch's CUDA caching allocator over the "
    "row, in MiB: `torch.cuda.max_memory_allocated` from just after the model was loaded to the end of the row "
    "(batch-1 and batch-N timing, CUDA-graph capture). It is not the model's memory need: the runner sets "
    "`torch.backends.cudnn.benchmark = True`, and the workspaces cuDNN's autotuner allocates while it tries "
    "convolution algorithms for each new input shape count in this peak. The 10 GB (360x480) and "
    "78-79 GB (1024x2048) MobileNetV2 "
    "FP32 rows, against 0.3-3 GB for FP16 eager at the same shapes, are mostly such workspace (inferred from that "
    "contrast); the steady-state footprint was not measured separately."
)


def render(out: Path) -> None:
    """students_cuda.md (+ .png) from students_cuda.json."""
    from apd_edge.bench.machine import describe
    from apd_edge.bench.report import markdown_table, plot, row_from_dict

    doc = json.loads((out / "students_cuda.json").read_text())
    st = doc["settings"]
    rows = [row_from_dict(r) for r in doc["rows"]]
    text = [
        "# Students with PyTorch on CUDA: FP32, FP16, channels-last + CUDA graph",
        "",
        f"Machine: {describe(doc['machine'])}.",
        "",
        f"Command: `{doc['command']}` ({doc['seconds']} s). Latency: ms per image at batch 1 after {st['warmup']} "
        f"warm-up calls, {st['iters']} timed calls, CUDA events for `ms` (compute only), synchronised wall clock "
        f"for `e2e` (pad + normalise + upload + infer + argmax + download + crop). `FPS bN`: batch {st['batch']}. "
        "Rows with `channels_last,cuda_graph` replay one captured graph per input shape. "
        "mIoU only where a trained CamVid checkpoint was given (on CamVid val, 360x480 rows). Sizes are fed as "
        "given: 360x480 is not padded to 384x480 as in the ONNX bundles of `students_cpu.md` (6% fewer pixels).",
        "",
        "Memory: `RSS MB +grow/peak` is the host RSS growth during the row and the process's peak RSS. "
        + doc.get("gpu_memory", GPU_MEMORY),
        "",
        *[f"- {n}" for n in doc["notes"]],
        "",
        markdown_table(rows),
        "",
    ]
    if "gpu_memory" not in doc:
        text[4:4] = ["(Re-rendered from `students_cuda.json` by `python benchmarks/students_cuda.py --render`; "
                       "the numbers are those of the run above, not re-measured. That run's JSON predates the "
                       "memory note, which describes the code it ran.)", ""]
    (out / "students_cuda.md").write_text("\n".join(text))
    ok = [r for r in rows if r.ok and r.miou is not None]
    if ok:
        plot(ok, out / "students_cuda.png", title="Students, PyTorch CUDA: latency vs mIoU (CamVid val)")
    print("\n".join(text))


if __name__ == "__main__":
    main()
