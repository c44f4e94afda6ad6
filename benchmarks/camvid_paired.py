"""The paired CamVid study on the CPU: data copy, run (resumable) and report, as recorded in
``benchmarks/results/camvid_paired.md``. Plan: ``benchmarks/plans/camvid_paired_cpu.yaml``.

    python benchmarks/camvid_paired.py copy-data [--camvid ../shared/data/camvid] [--dst /work/study_runs/camvid_half]
    nice -n 19 python benchmarks/camvid_paired.py run        # = apd-edge study run PLAN (resumes after a kill)
    python benchmarks/camvid_paired.py report                # camvid_paired.{md,json,png} + camvid_paired_plan.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "benchmarks" / "plans" / "camvid_paired_cpu.yaml"
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    cp = sub.add_parser("copy-data", help="CamVid at half resolution (images: area, labels: nearest)")
    cp.add_argument("--camvid", default=os.environ.get("APD_CAMVID", str(REPO.parent / "shared" / "data" / "camvid")))
    cp.add_argument("--dst", default="/work/study_runs/camvid_half")
    cp.add_argument("--factor", type=float, default=0.5)
    run = sub.add_parser("run", help="train the teacher, then every run (continues a killed study)")
    run.add_argument("--plan", default=str(PLAN))
    rep = sub.add_parser("report", help="write benchmarks/results/camvid_paired.*")
    rep.add_argument("--plan", default=str(PLAN))
    rep.add_argument("--name", default="camvid_paired")
    args = ap.parse_args()
    os.chdir(REPO)
    if args.cmd == "copy-data":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from camvid_study import scaled_copy

        scaled_copy(Path(args.camvid), Path(args.dst), args.factor)
        return
    from apd_edge.cli.main import cli

    if args.cmd == "run":
        cli(["study", "run", args.plan, "--quiet"], prog_name="apd-edge")
    else:
        cli(["study", "report", args.plan, "--name", args.name, "--out", str(RESULTS),
             "--header", str(RESULTS / "camvid_paired_header.md"),
             "--speedup", str(RESULTS / "study_speedup.json")], prog_name="apd-edge")


if __name__ == "__main__":
    main()
