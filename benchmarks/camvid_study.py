"""The CamVid study: a teacher, then each student x method x seed, run through the CLI as a user would.

Every run is ``apd-edge train|distill RECIPE --set ...`` on a shipped recipe, with the same overrides for
every student of one architecture (only ``distill.method`` and ``seed`` change). Runs whose
``summary.json`` exists are skipped, so an interrupted study continues where it stopped. Students run
``--parallel`` at a time (one small model leaves most of a GPU idle).

    python benchmarks/camvid_study.py run --camvid ../shared/data/camvid --device cuda --parallel 8
    python benchmarks/camvid_study.py report            # benchmarks/results/camvid.{md,json,png}

``--teacher-iters`` / ``--student-iters`` scale the schedules to the machine; the recipes' optimiser,
learning rate, batch, crop and augmentation are kept (warm-up is scaled with the iteration count).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER_RECIPE = "recipes/pspnet_r50_camvid.yaml"
STUDENTS = {"bisenetv2": "recipes/bisenet_camvid.yaml", "espnet": "recipes/espnet_camvid.yaml",
            "mobilenetv2": "recipes/mobilenetv2_camvid.yaml"}
METHODS = ("none", "kd", "cwd", "apd")


def common_sets(args, iters: int) -> list[str]:
    warm = max(1, iters // 20)
    return [f"data.root={args.camvid}", f"data.workers={args.workers}", f"output_dir={args.runs}",
            f"train.iterations={iters}", f"train.warmup_iters={warm}", f"train.eval_interval={iters}",
            f"train.ckpt_interval={min(iters, 500)}", "train.log_interval=50", f"train.device={args.device}",
            f"train.channels_last={'true' if args.device.startswith('cuda') else 'false'}", "model.pretrained=false",
            *args.set]


def teacher_job(args) -> dict:
    name = "study_teacher"
    sets = common_sets(args, args.teacher_iters) + [f"name={name}"]
    return {"name": name, "cmd": "train", "recipe": TEACHER_RECIPE, "sets": sets}


def student_jobs(args) -> list[dict]:
    jobs = []
    teacher_ckpt = f"{args.runs}/study_teacher/best.pt"
    for model in args.models.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in args.methods.split(","):
                name = f"study_{model}_{method}_s{seed}"
                sets = common_sets(args, args.student_iters) + [
                    f"name={name}", f"seed={seed}", f"distill.method={method}", "teacher.name=pspnet_r50",
                    f"teacher.checkpoint={teacher_ckpt}"]
                jobs.append({"name": name, "cmd": "distill", "recipe": STUDENTS[model], "sets": sets,
                             "model": model, "method": method, "seed": seed})
    return jobs


def user_command(job: dict) -> str:
    """The command as a user types it."""
    return " ".join(["apd-edge", job["cmd"], job["recipe"], *[f"--set {shlex.quote(s)}" for s in job["sets"]]])


def run_job(job: dict, args) -> dict:
    run_dir = Path(args.runs) / job["name"]
    if (run_dir / "summary.json").is_file():
        return {**job, "status": "done before"}
    log_dir = Path(args.runs) / "study_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "apd_edge.cli.main", job["cmd"], job["recipe"], "--quiet"]
    for s in job["sets"]:
        argv += ["--set", s]
    if (run_dir / "last.pt").is_file():
        argv.append("--resume")
    t0 = time.time()
    with open(log_dir / f"{job['name']}.log", "a") as log:
        rc = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    status = "ok" if rc == 0 else f"failed (exit {rc}, see {log_dir / (job['name'] + '.log')})"
    print(f"[{time.strftime('%H:%M:%S')}] {job['name']}: {status} in {time.time() - t0:.0f} s", flush=True)
    return {**job, "status": status, "seconds": time.time() - t0}


def cmd_run(args) -> None:
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    source = args.camvid
    if args.copy_data:
        args.camvid = str(Path(args.copy_data).resolve())
    plan = {"teacher": teacher_job(args), "students": student_jobs(args),
            "commands": [user_command(j) for j in [teacher_job(args), *student_jobs(args)]],
            "settings": vars(args)}
    (Path(args.runs) / "study_plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    if args.dry_run:
        print("\n".join(plan["commands"]))
        return
    if args.copy_data:
        # a private copy on local disk: a lent machine's working tree can be re-synced under a running study
        import shutil

        shutil.copytree(source, args.camvid, dirs_exist_ok=True)
    if args.stage in ("teacher", "all"):
        if run_job(plan["teacher"], args)["status"].startswith("failed"):
            sys.exit(f"teacher failed; see {args.runs}/study_logs/{plan['teacher']['name']}.log")
    if args.stage in ("students", "all"):
        with ThreadPoolExecutor(args.parallel) as pool:
            done = list(pool.map(lambda j: run_job(j, args), plan["students"]))
        bad = [d["name"] for d in done if d["status"].startswith("failed")]
        if bad:
            sys.exit(f"{len(bad)} runs failed: {', '.join(bad)}")


def cmd_pack(args) -> None:
    """Logs, summaries, metrics and recipes as one tarball, plus each architecture's best student as a
    model-only checkpoint (optimizer, scheduler, RNG and distiller state dropped), for export elsewhere."""
    import tarfile

    import torch

    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "study_runs.tar.gz", "w:gz") as tar:
        for p in sorted(runs.rglob("*")):
            if p.is_file() and p.suffix != ".pt":
                tar.add(p, arcname=str(p.relative_to(runs)))
    best: dict[str, tuple[float, Path]] = {}
    for summ in runs.glob("study_*_s*/summary.json"):
        s = json.loads(summ.read_text())
        if s.get("final_miou") is not None and (s["model"] not in best or s["final_miou"] > best[s["model"]][0]):
            best[s["model"]] = (s["final_miou"], summ.parent)
    for model, (miou, run_dir) in best.items():
        ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        for k in ("optimizer", "scheduler", "scaler", "rng", "distiller", "distiller_extra"):
            ck.pop(k, None)
        ck["study_run"] = run_dir.name
        torch.save(ck, out / f"{model}.pt")
        print(f"{model}: {run_dir.name} (val mIoU {100 * miou:.2f}) -> {out / (model + '.pt')}")


def _summary(runs: Path, name: str) -> dict | None:
    p = runs / name / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None


def cmd_report(args) -> None:
    import statistics

    runs, out = Path(args.runs), Path(args.out)
    plan = json.loads((runs / "study_plan.json").read_text())
    teacher = _summary(runs, "study_teacher")
    results: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    missing = []
    for job in plan["students"]:
        s = _summary(runs, job["name"])
        if s is None or s.get("final_miou") is None:
            missing.append(job["name"])
            continue
        results.setdefault(job["model"], {}).setdefault(job["method"], []).append(
            (job["seed"], 100 * s["final_miou"], s["wall_time_s"]))
    st = plan["settings"]
    lines = ["# APD against the baselines on CamVid, end to end", ""]
    extra = Path(args.header).read_text().strip() if args.header and Path(args.header).is_file() else ""
    if extra:
        lines += [extra, ""]
    lines += [f"Teacher `pspnet_r50` (from scratch): val mIoU **{100 * teacher['final_miou']:.2f}**, "
              f"{teacher['steps']} steps in {teacher['wall_time_s'] / 60:.1f} min." if teacher else "Teacher: missing.", ""]
    table = {}
    for model, by_method in results.items():
        seeds = sorted({s for v in by_method.values() for s, _, _ in v})
        lines += [f"## {model}", "", "| method | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | mean | spread (max-min) | std | wall time per run |",
                  "|---|" + "---|" * (len(seeds) + 4)]
        for method in [m for m in METHODS if m in by_method]:
            vals = {s: v for s, v, _ in by_method[method]}
            xs = list(vals.values())
            mean = statistics.mean(xs)
            std = statistics.stdev(xs) if len(xs) > 1 else 0.0
            wall = statistics.mean(w for _, _, w in by_method[method])
            table.setdefault(model, {})[method] = {"seeds": vals, "mean": mean, "std": std,
                                                   "spread": max(xs) - min(xs), "wall_s": wall}
            lines.append(f"| {method} | " + " | ".join(f"{vals[s]:.2f}" if s in vals else "-" for s in seeds)
                         + f" | **{mean:.2f}** | {max(xs) - min(xs):.2f} | {std:.2f} | {wall:.0f} s |")
        lines.append("")
    if missing:
        lines += [f"Not finished ({len(missing)} of {len(plan['students'])} student runs): "
                  + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    lines += ["## Commands", "", "Each run, exactly (the report itself: "
              "`python benchmarks/camvid_study.py report`):", "", "```"] + plan["commands"] + ["```", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "camvid.md").write_text("\n".join(lines) + "\n")
    (out / "camvid.json").write_text(json.dumps({"teacher": teacher, "students": table, "missing": missing,
                                                 "settings": st},
                                                indent=2, default=str) + "\n")
    _plot(table, out / "camvid.png")
    print("\n".join(lines))


def _plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(table)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        methods = [m for m in METHODS if m in table[model]]
        for i, m in enumerate(methods):
            seeds = table[model][m]["seeds"]
            ax.scatter([i] * len(seeds), list(seeds.values()), color="0.55", s=14, zorder=2)
            ax.errorbar(i, table[model][m]["mean"], yerr=table[model][m]["std"], fmt="o", color="C3" if m == "apd"
                        else "C0", capsize=4, zorder=3)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(model)
        ax.set_ylabel("val mIoU %")
        ax.grid(alpha=0.3)
    fig.suptitle("CamVid val mIoU per method (dots: seeds; marker: mean +- std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run")
    run.add_argument("--camvid", default=os.environ.get("APD_CAMVID", str(REPO.parent / "shared" / "data" / "camvid")))
    run.add_argument("--stage", choices=["teacher", "students", "all"], default="all")
    run.add_argument("--device", default="auto")
    run.add_argument("--models", default=",".join(STUDENTS))
    run.add_argument("--methods", default=",".join(METHODS))
    run.add_argument("--seeds", default="0,1")
    run.add_argument("--teacher-iters", type=int, default=4000)
    run.add_argument("--student-iters", type=int, default=1000)
    run.add_argument("--parallel", type=int, default=1)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--runs", default="runs")
    run.add_argument("--copy-data", default=None, metavar="DIR",
                     help="copy --camvid to DIR first and train from the copy")
    run.add_argument("--dry-run", action="store_true", help="write study_plan.json and print the commands only")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="one more override for every run (smoke tests: train.crop=[64,64])")
    rep = sub.add_parser("report")
    rep.add_argument("--runs", default="runs")
    rep.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    rep.add_argument("--header", default=None, help="a markdown file whose text goes under the title")
    pack = sub.add_parser("pack")
    pack.add_argument("--runs", default="runs")
    pack.add_argument("--out", required=True)
    args = ap.parse_args()
    {"run": cmd_run, "report": cmd_report, "pack": cmd_pack}[args.what](args)


if __name__ == "__main__":
    main()
