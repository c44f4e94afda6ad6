"""Speed-up of teacher sharing: the same runs trained apart (``apd-edge distill`` each) vs. in one study.

Students x methods of one seed, each for ``--steps`` steps at the CPU study's tensor sizes (batch 8,
160x224 crops, 10 synthetic classes (CamVid has 11), PSPNet-R18 teacher at output stride 16), on synthetic
images so no val set
dominates the timing (2 val images). Both sides build their runs (construction included) and train the
same steps; the study computes one teacher forward per batch, the separate runs one each. Times are this
process's CPU time (robust on a shared machine) and wall time. Usage:

    OMP_NUM_THREADS=1 python benchmarks/study_speedup.py [--steps 6] [--students bisenetv2,espnet]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"bisenetv2": "recipes/bisenet_camvid.yaml", "espnet": "recipes/espnet_camvid.yaml",
           "mobilenetv2": "recipes/mobilenetv2_camvid.yaml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", default="bisenetv2,espnet")
    ap.add_argument("--methods", default="none,kd,cwd,apd")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--crop", default="160x224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "study_speedup.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*random weights.*")
    from apd_edge.config import load_recipe
    from apd_edge.engine.study import load_plan, plan_runs, run_study
    from apd_edge.engine.trainer import train

    h, w = (int(v) for v in args.crop.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="study_speedup_"))
    try:
        common = ["data.dataset=synthetic", "data.root=null", "data.workers=0",
                  f"data.options={{num_train: 32, num_val: 2, size: [{h + 20}, {w + 16}]}}",
                  "model.pretrained=false", "train.device=cpu", f"train.crop=[{h},{w}]",
                  f"train.batch_size={args.batch}", f"train.iterations={args.steps}", "train.warmup_iters=1",
                  "train.log_interval=1", f"train.eval_interval={args.steps}", f"train.ckpt_interval={args.steps}"]
        plan = {"output_dir": str(tmp / "study"), "threads": args.threads,
                "students": [{"recipe": str(REPO / RECIPES[s])} for s in args.students.split(",")],
                "methods": args.methods.split(","), "seeds": [0], "set": common,
                "teacher": {"name": "pspnet_r18", "kwargs": {"output_stride": 16}, "checkpoint": None}}
        (tmp / "plan.yaml").write_text(yaml.safe_dump(plan))
        # warm-up (lazy imports, allocator, oneDNN kernels): one step of every student with the costliest method
        warm = dict(plan, output_dir=str(tmp / "warm"), methods=[plan["methods"][-1]],
                    set=[*common, "train.iterations=1"])
        (tmp / "warm.yaml").write_text(yaml.safe_dump(warm))
        run_study(load_plan(tmp / "warm.yaml"), progress=False, log=lambda m: None)
        p = load_plan(tmp / "plan.yaml")
        runs = plan_runs(p)

        c0, w0 = time.process_time(), time.perf_counter()
        record = run_study(p, progress=False, log=lambda m: None)
        shared_cpu, shared_wall = time.process_time() - c0, time.perf_counter() - w0

        apart = {}
        for r in runs:
            recipe = load_recipe(r.recipe_file, [*r.overrides, f"output_dir={tmp / 'apart'}"])
            c0, w0 = time.process_time(), time.perf_counter()
            train(recipe, distill=True, progress=False)
            apart[r.name] = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0}
            print(f"  apart {r.name}: {apart[r.name]['cpu_s']:.1f} s CPU", flush=True)
        apart_cpu = sum(v["cpu_s"] for v in apart.values())
        apart_wall = sum(v["wall_s"] for v in apart.values())
        stream = record["streams"]["seed 0"]
        report = {
            **provenance(),  # command as typed, date, machine (one line and details), load average at the end
            "command_resolved": "python benchmarks/study_speedup.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
            "settings": {**vars(args), "teacher": "pspnet_r18 (output_stride 16, random weights)", "classes": 10,
                         "data": "synthetic", "overrides": common},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(), "runs": [r.name for r in runs],
            "study": {"cpu_s": shared_cpu, "wall_s": shared_wall, "teacher_s": stream["teacher_s"],
                      "teacher_forwards": stream["teacher_forwards"], "run_s": stream["run_s"]},
            "apart": {"cpu_s": apart_cpu, "wall_s": apart_wall, "per_run": apart},
            "speedup": apart_cpu / shared_cpu, "speedup_wall": apart_wall / shared_wall,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\n{len(runs)} runs x {args.steps} steps ({args.batch}x3x{h}x{w}), {args.threads} thread(s)")
        print(f"{'':<8}{'CPU s':>10}{'wall s':>10}")
        print(f"{'apart':<8}{apart_cpu:>10.1f}{apart_wall:>10.1f}")
        print(f"{'study':<8}{shared_cpu:>10.1f}{shared_wall:>10.1f}   (teacher {stream['teacher_s']:.1f} s, "
              f"{stream['teacher_forwards']} forwards)")
        print(f"speed-up {report['speedup']:.2f}x (CPU time), {report['speedup_wall']:.2f}x (wall); wrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
