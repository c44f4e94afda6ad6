"""The quick start's numbers, as the README quotes them: ``apd-edge quickstart`` run end to end.

Runs the library call behind ``apd-edge quickstart`` (``apd_edge.pipeline.run_pipeline``: teacher training,
APD distillation, evaluation on the synthetic val split, FP32/FP16/INT8 export with parity, ONNX Runtime
benchmark) in a scratch folder, and writes ``quickstart.json`` and ``quickstart.md`` under ``--out`` with
the command, machine, settings, load average and every number of the closing table. The committed result:

    python benchmarks/quickstart.py

``--fast`` runs the CLI's ``--fast`` smoke mode (fewer iterations: not the README's numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def summarize(res: dict) -> dict:
    """The closing table's numbers: mIoU in %, seconds, and per exported precision size, mIoU and latency."""
    t, s = res["teacher"], res["student"]
    return {
        "teacher": {"model": t["model"], "miou": round(100 * t["miou"], 2), "params": t["params"],
                    "train_s": round(t["seconds"], 1)},
        "student": {"model": s["model"], "method": s["method"], "miou": round(100 * s["miou"], 2),
                    "params": s["params"], "train_s": round(s["seconds"], 1)},
        "export_s": round(res["export_seconds"], 1),
        "wall_time_s": round(res["wall_time_s"], 1),
        "bundle": [{"precision": r["precision"], "status": r["status"], "reason": r["reason"],
                    "size_mb": r["size_mb"], "miou": None if r["miou"] is None else round(100 * r["miou"], 2),
                    "ms_p50": r["compute_p50"], "ms_p90": r["compute_p90"], "e2e_p50": r["e2e_p50"],
                    "threads": r["threads"]} for r in res["bench"]],
    }


def render(doc: dict) -> str:
    """quickstart.md from quickstart.json."""
    n = doc["numbers"]
    t, s = n["teacher"], n["student"]
    lines = [
        "# Quick start (`apd-edge quickstart`) on this machine",
        "",
        f"Command (from the repo root): `{doc['command']}`; started {doc['date']}.",
        f"Machine: {doc['machine']}; load average (1 min) {doc['loadavg_start'][0]:.1f} at the start, "
        f"{doc['loadavg_end'][0]:.1f} at the end, 15 min {doc['loadavg_end'][2]:.1f} at the end (a shared machine: "
        "times include other jobs; `threads` is the library's choice for that load unless --threads was given).",
        f"Settings: {json.dumps(doc['settings'])}. The synthetic dataset is generated from a seed, the recipes are "
        "the packaged `quickstart_teacher` and `quickstart`; training is seeded (recipe `seed`).",
        "",
        f"Total {n['wall_time_s']:.0f} s: teacher training {t['train_s']:.0f} s, APD distillation "
        f"{s['train_s']:.0f} s, export (FP32 / FP16 / INT8, parity) {n['export_s']:.0f} s, then the benchmark.",
        "",
        "| | model | mIoU % (synthetic val) | params |",
        "|---|---|---|---|",
        f"| teacher | {t['model']} | {t['miou']:.2f} | {t['params'] / 1e6:.3f} M |",
        f"| student ({s['method']}) | {s['model']} | {s['miou']:.2f} | {s['params'] / 1e6:.3f} M |",
        "",
        "The student's bundle with ONNX Runtime on the CPU (`ms` = infer alone, `e2e` = pre + infer + post, "
        "batch 1):",
        "",
        "| precision | status | size MB | mIoU % | ms p50 | ms p90 | e2e p50 | threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in n["bundle"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        lines.append(f"| {r['precision']} | {status} | {f(r['size_mb'], 2)} | {f(r['miou'], 2)} | {f(r['ms_p50'])} "
                     f"| {f(r['ms_p90'])} | {f(r['e2e_p50'])} | {r['threads']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="the CLI's --fast smoke mode (not the README's numbers)")
    ap.add_argument("--threads", type=int, default=None, help="as `apd-edge quickstart --threads` (default: library's)")
    ap.add_argument("--bench-iters", type=int, default=20, help="timed calls per precision (the CLI's default: 20)")
    ap.add_argument("--work", default=None, help="folder for the runs and the bundle (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--render", action="store_true", help="only rewrite quickstart.md from quickstart.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        (out / "quickstart.md").write_text(render(json.loads((out / "quickstart.json").read_text())))
        return

    from apd_edge.bench.machine import describe, machine_info
    from apd_edge.pipeline import format_pipeline, run_pipeline
    from apd_edge.threads import setup_threads

    threads = setup_threads(args.threads)
    argv = [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]
    cmd = "python " + " ".join(shlex.quote(a) for a in argv)
    load0, date = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="apd_quickstart_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        res = run_pipeline(out=work / "runs", export_dir=work / "export", fast=args.fast, progress=False,
                           bench_iters=args.bench_iters)
        print(format_pipeline(res))
    doc = {"command": cmd, "date": date, "machine": describe(machine_info()), "machine_info": machine_info(),
           "settings": {"fast": args.fast, "threads": threads, "bench_iters": args.bench_iters,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
           "loadavg_start": list(load0), "loadavg_end": list(os.getloadavg()), "numbers": summarize(res)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "quickstart.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "quickstart.md").write_text(render(doc))
    print(f"wrote {out / 'quickstart.json'} and quickstart.md")


if __name__ == "__main__":
    main()
