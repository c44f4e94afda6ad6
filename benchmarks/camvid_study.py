"""The CamVid study: a teacher, then each student x method x seed, run through the CLI as a user would.

Every run is ``apd-edge train|distill RECIPE --set ...`` on a shipped recipe, with the same overrides for
every student of one architecture (only ``distill.method`` and ``seed`` change). Runs whose
``summary.json`` exists are skipped, so an interrupted study continues where it stopped. Students run
``--parallel`` at a time (one small model leaves most of a GPU idle).

    python benchmarks/camvid_study.py run --camvid ../shared/data/camvid --device cuda --parallel 8
    python benchmarks/camvid_study.py export            # best student per architecture: FP32 + INT8, bench
    python benchmarks/camvid_study.py report            # benchmarks/results/camvid.{md,json,png}

``--teacher-iters`` / ``--student-iters`` scale the schedules to the machine; the recipes' optimiser,
learning rate and augmentation are kept (warm-up is scaled with the iteration count). On a CPU,
``--copy-data DIR --downscale 0.5`` trains on a half-resolution copy, ``--teacher pspnet_r18 --teacher-set
model.kwargs.output_stride=16`` picks a cheaper teacher, and ``--threads 1 --parallel 2`` fills two cores
(the exact CPU invocation is in ``benchmarks/results/camvid.md``).
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
    if args.teacher != "pspnet_r50":
        sets.append(f"model.name={args.teacher}")
    sets += args.teacher_set
    return {"name": name, "cmd": "train", "recipe": TEACHER_RECIPE, "sets": sets}


def student_jobs(args) -> list[dict]:
    jobs = []
    teacher_ckpt = f"{args.runs}/study_teacher/best.pt"
    for model in args.models.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in args.methods.split(","):
                name = f"study_{model}_{method}_s{seed}"
                sets = common_sets(args, args.student_iters) + [
                    f"name={name}", f"seed={seed}", f"distill.method={method}", f"teacher.name={args.teacher}",
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
    env = dict(os.environ)
    if args.threads:  # one pool size per run, so --parallel runs do not oversubscribe the cores
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t0 = time.time()
    with open(log_dir / f"{job['name']}.log", "a") as log:
        rc = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    status = "ok" if rc == 0 else f"failed (exit {rc}, see {log_dir / (job['name'] + '.log')})"
    print(f"[{time.strftime('%H:%M:%S')}] {job['name']}: {status} in {time.time() - t0:.0f} s", flush=True)
    return {**job, "status": status, "seconds": time.time() - t0}


def scaled_copy(src: Path, dst: Path, factor: float) -> None:
    """CamVid at a lower resolution, for CPU studies: images resized with area averaging, masks with nearest
    neighbour (labels stay exact). Files already there are kept, so a resumed study does not redo them."""
    import cv2

    from apd_edge.data.base import IMAGE_EXTS, list_files

    n = 0
    for split in ("train", "val"):
        for sub, interp in ((split, cv2.INTER_AREA), (f"{split}annot", cv2.INTER_NEAREST)):
            for f in list_files(src / sub, IMAGE_EXTS):
                out = dst / sub / f.relative_to(src / sub)
                if out.is_file():
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
                if img is None:
                    sys.exit(f"cannot read {f}")
                h, w = img.shape[:2]
                size = (round(w * factor), round(h * factor))
                tmp = out.with_name(".tmp_" + out.name)
                cv2.imwrite(str(tmp), cv2.resize(img, size, interpolation=interp))
                tmp.replace(out)
                n += 1
    print(f"scaled copy x{factor} of {src} in {dst} ({n} files written)", flush=True)


def cmd_run(args) -> None:
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    source = args.camvid
    if args.copy_data:
        args.camvid = str(Path(args.copy_data).resolve())
    teacher, students = teacher_job(args), student_jobs(args)
    plan = {"teacher": teacher, "students": students,
            "commands": [user_command(j) for j in [teacher, *students]], "settings": vars(args)}
    (Path(args.runs) / "study_plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    if args.dry_run:
        print("\n".join(plan["commands"]))
        return
    if args.copy_data:
        # a private copy on local disk: a lent machine's working tree can be re-synced under a running study
        if args.downscale != 1.0:
            scaled_copy(Path(source), Path(args.camvid), args.downscale)
        else:
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

    from apd_edge.checkpoint import load_checkpoint, save_checkpoint

    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "study_runs.tar.gz", "w:gz") as tar:
        for p in sorted(runs.rglob("*")):
            if p.is_file() and p.suffix != ".pt":
                tar.add(p, arcname=str(p.relative_to(runs)))
    for model, (miou, run_dir) in _best_runs(runs).items():
        ck = load_checkpoint(run_dir / "last.pt")
        for k in ("optimizer", "scheduler", "scaler", "rng", "distiller", "distiller_extra"):
            ck.pop(k, None)
        ck["study_run"] = run_dir.name
        save_checkpoint(ck, out / f"{model}.pt")
        print(f"{model}: {run_dir.name} (val mIoU {100 * miou:.2f}) -> {out / (model + '.pt')}")


def _best_runs(runs: Path) -> dict[str, tuple[float, Path]]:
    """Each architecture's best student run (final val mIoU) among the study's runs."""
    best: dict[str, tuple[float, Path]] = {}
    for summ in sorted(runs.glob("study_*_s*/summary.json")):
        s = json.loads(summ.read_text())
        if s.get("final_miou") is not None and (s["model"] not in best or s["final_miou"] > best[s["model"]][0]):
            best[s["model"]] = (s["final_miou"], summ.parent)
    return best


def cmd_export(args) -> None:
    """Export each architecture's best student (FP32 + INT8 ONNX) and bench every artifact, through the CLI.

    ``--stage export`` / ``--stage bench`` split the two, so exports can overlap training while latency is
    measured on an otherwise idle machine."""
    runs = Path(args.runs)
    plan = json.loads((runs / "study_plan.json").read_text())
    root = plan["settings"]["camvid"]
    wanted = set(args.models.split(",")) if args.models else None
    exports_path = runs / "study_exports.json"
    done = [e for e in (json.loads(exports_path.read_text()) if exports_path.is_file() else [])
            if wanted is not None and e["model"] not in wanted]  # keep other models' earlier entries
    for model, (miou, run_dir) in sorted(_best_runs(runs).items()):
        if wanted is not None and model not in wanted:
            continue
        bundle = Path(args.export_dir) / f"{run_dir.name}"
        cmds = {"export": ["apd-edge", "export", str(run_dir), "--out", str(bundle), "--int8", "--parity-images",
                           str(args.parity_images), "--calib-images", str(args.calib_images), "--data-root", root],
                "bench": ["apd-edge", "bench", str(bundle), "--backends", "ort,torch", "--precisions", "fp32,int8",
                          "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup),
                          "--data", f"camvid:{root}"]}
        t0 = time.time()
        for stage, c in cmds.items():
            if args.stage not in (stage, "all"):
                continue
            print("$ " + " ".join(shlex.quote(a) for a in c), flush=True)
            argv = [sys.executable, "-m", "apd_edge.cli.main", *c[1:]]
            if subprocess.run(argv, cwd=REPO).returncode != 0:
                sys.exit(f"{model}: '{' '.join(c[:2])}' failed")
        bench = bundle / "bench.json"
        rows = json.loads(bench.read_text())["rows"] if bench.is_file() else []
        done.append({"model": model, "run": run_dir.name, "train_miou": 100 * miou, "bundle": str(bundle),
                     "commands": [" ".join(shlex.quote(a) for a in c) for c in cmds.values()],
                     "seconds": round(time.time() - t0), "rows": rows})
    done.sort(key=lambda e: e["model"])
    exports_path.write_text(json.dumps(done, indent=2) + "\n")
    print(f"wrote {exports_path}")


def verdict(table: dict) -> dict[str, dict[str, dict]]:
    """APD's mean minus each baseline's mean, against the seed spread (max - min) of the two methods compared.

    A difference counts as larger than the seed noise only when it exceeds both methods' spreads (with 2 seeds
    the spread is the only honest noise estimate; no significance test is claimed)."""
    out: dict[str, dict[str, dict]] = {}
    for model, by_method in table.items():
        if "apd" not in by_method:
            continue
        apd = by_method["apd"]
        for base in ("none", "kd", "cwd"):
            if base in by_method:
                b = by_method[base]
                diff = apd["mean"] - b["mean"]
                noise = max(apd["spread"], b["spread"])
                # one seed has no spread: no verdict rather than a spread of 0
                seeded = min(len(apd.get("seeds", {})), len(b.get("seeds", {}))) >= 2
                out.setdefault(model, {})[base] = {"diff": diff, "noise": noise,
                                                   "beyond_noise": abs(diff) > noise if seeded else None}
    return out


def _verdict_lines(table: dict) -> list[str]:
    v = verdict(table)
    if not v:
        return []
    lines = ["## APD against each baseline", "",
             "Difference of means (APD minus baseline, mIoU points) and the larger seed spread of the two methods. "
             "A difference is called real here only when it is larger than that spread.", "",
             "| student | vs none | vs kd | vs cwd |", "|---|---|---|---|"]
    for model, bases in v.items():
        cells = []
        for base in ("none", "kd", "cwd"):
            if base not in bases:
                cells.append("-")
                continue
            d = bases[base]
            if d["beyond_noise"] is None:
                cells.append(f"{d['diff']:+.2f} (one seed: no spread yet)")
                continue
            tag = "beyond spread" if d["beyond_noise"] else "within spread"
            cells.append(f"{d['diff']:+.2f} (spread {d['noise']:.2f}, {tag})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines + [""]


def _export_lines(runs: Path) -> list[str]:
    p = runs / "study_exports.json"
    if not p.is_file():
        return ["## Exported artifacts", "", "Not exported yet (`python benchmarks/camvid_study.py export`).", ""]
    exports = json.loads(p.read_text())
    lines = ["## Exported artifacts (best run of each student)", "",
             "Val mIoU of each artifact on the whole val split, and single-image latency (batch 1) on this "
             "machine; e2e includes pre- and post-processing.", "",
             "| student | run | artifact | size MB | val mIoU | compute p50 ms | e2e p50 ms | FPS | threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in exports:
        for r in e["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {e['model']} | `{e['run']}` | {r['backend']} {r['precision']} | - | - | - | - | - | "
                             f"skipped: {r['reason']} |")
                continue
            lines.append(f"| {e['model']} | `{e['run']}` | {r['backend']} {r['precision']} {r['input_size']} | "
                         f"{r['size_mb']:.2f} | {100 * r['miou']:.2f} | {r['compute_p50']:.1f} | {r['e2e_p50']:.1f} | "
                         f"{r['fps_b1']:.1f} | {r['threads']} |")
    lines += ["", "Commands:", "", "```"] + [c for e in exports for c in e["commands"]] + ["```", ""]
    return lines


def _save_recipes(runs: Path, plan: dict, dest: Path) -> None:
    """The resolved recipes the study ran (as each run folder saved them): the teacher's, and one per student
    architecture, with the machine-specific data root and run name blanked. The runs of one architecture
    differ only in ``distill.method`` and ``seed``."""
    import yaml

    picks = {"teacher": plan["teacher"]["name"]}
    for job in plan["students"]:
        picks.setdefault(job["model"], job["name"])
    for label, name in picks.items():
        src = runs / name / "recipe.yaml"
        if not src.is_file():
            continue
        rec = yaml.safe_load(src.read_text())
        rec["data"]["root"] = "/path/to/camvid"
        rec["name"] = label if label == "teacher" else f"{label}_<method>_s<seed>"
        dest.mkdir(parents=True, exist_ok=True)
        head = f"# Resolved recipe of the CamVid study's {label} run{'s' if label != 'teacher' else ''}" + (
            "; the runs differ only in distill.method and seed\n" if label != "teacher" else "\n") + (
            f"# data: CamVid scaled by {plan['settings'].get('downscale', 1.0)} (camvid_study.py --downscale)\n")
        (dest / f"{label}.yaml").write_text(head + yaml.safe_dump(rec, sort_keys=False))


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
    tname = st.get("teacher", "pspnet_r50")
    lines += [f"Teacher `{tname}` (from scratch): val mIoU **{100 * teacher['final_miou']:.2f}**, "
              f"{teacher['steps']} steps in {teacher['wall_time_s'] / 60:.1f} min."
              if teacher else "Teacher: missing.", ""]
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
    lines += _verdict_lines(table)
    if missing:
        lines += [f"Not finished ({len(missing)} of {len(plan['students'])} student runs): "
                  + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    lines += _export_lines(runs)
    lines += ["## Commands", "", "Each run, exactly (the report itself: "
              "`python benchmarks/camvid_study.py report`):", "", "```"] + plan["commands"] + ["```", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    from apd_edge.bench.machine import describe, machine_info

    # the runs' commands (from the plan) and this report's own; the machine the runs used is in the header
    report_cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    (out / f"{args.name}.json").write_text(json.dumps({"teacher": teacher, "students": table, "missing": missing,
                                                       "apd_vs_baselines": verdict(table),
                                                       "settings": st, "commands": plan["commands"],
                                                       "report_command": report_cmd,
                                                       "report_machine": describe(machine_info()),
                                                       "header": extra},
                                                indent=2, default=str) + "\n")
    _plot(table, out / f"{args.name}.png")
    _save_recipes(runs, plan, out / f"{args.name}_recipes")
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
    run.add_argument("--teacher", default="pspnet_r50", help="teacher model (trained on the teacher recipe)")
    run.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE",
                     help="one more override for the teacher run only (model.kwargs.output_stride=16)")
    run.add_argument("--threads", type=int, default=0, help="OMP/MKL threads per run (CPU; 0: library default)")
    run.add_argument("--teacher-iters", type=int, default=4000)
    run.add_argument("--student-iters", type=int, default=1000)
    run.add_argument("--parallel", type=int, default=1)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--runs", default="runs")
    run.add_argument("--copy-data", default=None, metavar="DIR",
                     help="copy --camvid to DIR first and train from the copy")
    run.add_argument("--downscale", type=float, default=1.0, metavar="F",
                     help="with --copy-data: resize the copy by F (0.5: 360x480 -> 180x240), for CPU studies")
    run.add_argument("--dry-run", action="store_true", help="write study_plan.json and print the commands only")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="one more override for every run (smoke tests: train.crop=[64,64])")
    rep = sub.add_parser("report")
    rep.add_argument("--runs", default="runs")
    rep.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    rep.add_argument("--name", default="camvid", help="file stem of the .md/.json/.png written to --out")
    rep.add_argument("--header", default=None, help="a markdown file whose text goes under the title")
    exp = sub.add_parser("export", help="export and bench each architecture's best student")
    exp.add_argument("--runs", default="runs")
    exp.add_argument("--export-dir", default=str(REPO / "export" / "camvid_study"))
    exp.add_argument("--stage", choices=["export", "bench", "all"], default="all")
    exp.add_argument("--models", default="", help="comma list (default: every architecture with a finished run)")
    exp.add_argument("--calib-images", type=int, default=64)
    exp.add_argument("--parity-images", type=int, default=16,
                     help="export's own ONNX-vs-PyTorch check; bench scores every artifact on all of val anyway")
    exp.add_argument("--threads", type=int, default=1)
    exp.add_argument("--iters", type=int, default=30)
    exp.add_argument("--warmup", type=int, default=5)
    pack = sub.add_parser("pack")
    pack.add_argument("--runs", default="runs")
    pack.add_argument("--out", required=True)
    args = ap.parse_args()
    {"run": cmd_run, "report": cmd_report, "pack": cmd_pack, "export": cmd_export}[args.what](args)


if __name__ == "__main__":
    main()
