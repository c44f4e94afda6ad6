"""The whole product on the embedded data: teacher -> APD student -> evaluation -> export -> benchmark.

``run_pipeline`` is what ``apd-edge quickstart`` runs: ``engine.quickstart`` trains and evaluates the two
models, then the student is exported (FP32, FP16 and INT8 Q/DQ ONNX, calibrated on synthetic train images,
parity measured) and benchmarked with ONNX Runtime on the synthetic val split. It sits above engine,
export and bench so that none of them has to import the others.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .targets import ONNX_PRECISIONS

QUICK_PRECISIONS = ONNX_PRECISIONS  # every ONNX precision an export writes


def run_pipeline(out: str | Path = "runs", export_dir: str | Path = "export", fast: bool = False,
                 progress: bool = True, bench_iters: int = 20, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, distill, evaluate, export and benchmark; returns the quick start's numbers and the bench rows."""
    import time

    from .bench.run import run_bench
    from .engine.quickstart import run_quickstart
    from .export import export_bundle

    t0 = time.perf_counter()
    res = run_quickstart(out=out, fast=fast, progress=progress)
    student_run = Path(res["student"]["run"])
    bundle_dir = Path(export_dir) / student_run.name
    echo(f"exporting {student_run} -> {bundle_dir} ({', '.join(QUICK_PRECISIONS)})")
    t1 = time.perf_counter()
    # sensitivity ranking only if plain INT8 misses its target (the full ranking is `apd-edge export --int8`'s)
    bundle = export_bundle(student_run, bundle_dir, precisions=QUICK_PRECISIONS, calib_images=32, parity_images=8,
                           progress=progress, int8_sensitivity="auto")
    res["export_seconds"] = time.perf_counter() - t1
    res["bundle"] = str(bundle)
    rows = run_bench([bundle], backends=["ort"], precisions=list(QUICK_PRECISIONS), warmup=3, iters=bench_iters,
                     echo=echo if progress else (lambda s: None), show_table=False)
    res["bench"] = [asdict(r) for r in rows]
    res["wall_time_s"] = time.perf_counter() - t0
    return res


def format_pipeline(res: dict[str, Any]) -> str:
    """The quick start's closing table: teacher and student, then one line per exported precision."""
    from .engine.quickstart import format_table
    from .tables import text_table

    lines = [format_table(res), "",
             f"bundle {res['bundle']} (export {res['export_seconds']:.0f} s); ONNX Runtime, CPU:"]
    head = ("precision", "size MB", "mIoU %", "ms p50", "ms p90", "status")
    body = []
    for r in res["bench"]:
        pct = "n/a" if r.get("miou") is None else f"{100 * r['miou']:.2f}"
        ms = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        size = "n/a" if r.get("size_mb") is None else f"{r['size_mb']:.2f}"
        body.append((r["precision"], size, pct, ms(r.get("compute_p50")), ms(r.get("compute_p90")),
                     r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"))
    lines.append(text_table(head, body, align="lrrrrl", rule=False))
    return "\n".join(lines)
