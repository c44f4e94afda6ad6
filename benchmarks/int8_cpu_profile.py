"""Where ONNX Runtime's CPU time goes, FP32 vs the bundle's INT8 CPU twin, by op type: why INT8 is (not) faster.

    python benchmarks/int8_cpu_profile.py BUNDLE [BUNDLE ...] [--threads 2] [--runs 20]
        [--out benchmarks/results/int8_cpu_profile]

For each bundle, the FP32 graph the runtime runs on CPU (``model_cpu.onnx`` when the bundle has one, else
``model.onnx``) and ``model_int8_cpu.onnx`` run with ONNX Runtime's profiler on one real sample
image (the bundle's ``samples.npz``; a fixed random input without it); kernel times are summed per op type and
averaged over ``--runs``. Wall time comes from separate, interleaved runs without the profiler (median).
Every session runs with intra-op spinning off: interleaved in one process, a thread pool still spinning
after its run takes the cores from the next session.

The *bound* is the twin's speed-up if its Q/DQ and layout (Transpose/Reorder) work cost nothing and every
other float op cost what it costs in FP32: ``fp32 / (fp32 - fp32 convs + int8 convs + twin's float convs)``.
A bound under 1.3 means no Q/DQ placement can reach the 1.3x target with ONNX Runtime's kernels on this model.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import REPO, provenance  # noqa: E402

OVERHEAD = ("QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput")
CONV = ("Conv", "ConvTranspose", "FusedConv")
INT8_CONV = ("QLinearConv", "QLinearConvTranspose")


def _input(bundle: Path) -> np.ndarray:
    from apd_edge.runtime.preprocess import preprocess_from_manifest

    m = json.loads((bundle / "manifest.json").read_text())
    if (bundle / "samples.npz").is_file():
        with np.load(bundle / "samples.npz") as z:
            return preprocess_from_manifest(z["images"][0], m)[0]
    h, w = m["preprocess"]["size"]
    return np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)


def _session(path: Path, threads: int, profile_dir: str | None = None):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    # interleaved sessions in one process: a pool left spinning after its run slows the next session
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_dir:
        o.enable_profiling = True
        o.profile_file_prefix = str(Path(profile_dir) / path.stem)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int) -> dict:
    """Mean kernel milliseconds per op type (and node counts) over the last ``runs`` of ``runs + 3`` profiled runs."""
    with tempfile.TemporaryDirectory() as tmp:
        s = _session(path, threads, tmp)
        for _ in range(runs + 3):
            s.run(None, {"input": x})
        events = json.loads(Path(s.end_profiling()).read_text())
    per_node: dict[str, list] = collections.defaultdict(list)  # each node's events, in run order
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"]].append((e["args"]["op_name"], e["dur"]))
    ms: dict[str, float] = collections.Counter()
    nodes: dict[str, int] = collections.Counter()
    for evs in per_node.values():
        op = evs[0][0]
        ms[op] += sum(d for _, d in evs[-runs:]) / 1000.0 / min(runs, len(evs))
        nodes[op] += 1
    return {"ms": {k: round(v, 3) for k, v in sorted(ms.items(), key=lambda kv: -kv[1])},
            "nodes": dict(nodes), "total_ms": round(sum(ms.values()), 3)}


def wall(paths: list[Path], x: np.ndarray, threads: int, rounds: int = 7, iters: int = 5) -> list[float]:
    """Median wall ms per model, interleaved rounds."""
    sess = [_session(p, threads) for p in paths]
    for s in sess:
        for _ in range(3):
            s.run(None, {"input": x})
    per: list[list[float]] = [[] for _ in sess]
    for _ in range(rounds):
        for k, s in enumerate(sess):
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, {"input": x})
                ts.append(1000 * (time.perf_counter() - t0))
            per[k].append(statistics.median(ts))
    return [round(statistics.median(v), 2) for v in per]


def analyse(fp32: dict, twin: dict) -> dict:
    f, t = fp32["ms"], twin["ms"]
    conv32 = sum(f.get(k, 0.0) for k in CONV)
    qconv = sum(t.get(k, 0.0) for k in INT8_CONV)
    float_conv_twin = sum(t.get(k, 0.0) for k in CONV)
    overhead = sum(t.get(k, 0.0) for k in OVERHEAD)
    other32 = fp32["total_ms"] - conv32
    bound_ms = other32 + qconv + float_conv_twin
    return {"fp32_conv_ms": round(conv32, 2), "fp32_other_ms": round(other32, 2),
            "fp32_conv_share": round(conv32 / max(fp32["total_ms"], 1e-9), 3),
            "twin_int8_conv_ms": round(qconv, 2), "twin_float_conv_ms": round(float_conv_twin, 2),
            "twin_qdq_layout_ms": round(overhead, 2),
            "conv_speedup": round(conv32 / max(qconv + float_conv_twin, 1e-9), 3),
            "bound_speedup": round(fp32["total_ms"] / max(bound_ms, 1e-9), 3),
            "kernel_speedup": round(fp32["total_ms"] / max(twin["total_ms"], 1e-9), 3)}


def _md(doc: dict) -> str:
    from apd_edge.tables import markdown_table

    L = ["# INT8 on ONNX Runtime's CPU: where the time goes", "",
         f"Command: `{doc['command']}`  ", f"Date: {doc['date']}  ", f"Machine: {doc['machine']}  ",
         f"Settings: {json.dumps(doc['settings'])}", "",
         "Kernel times from ONNX Runtime's profiler (mean over the profiled runs, summed per op type); wall times "
         "from separate interleaved runs without the profiler (median), every session with intra-op spinning off "
         "(a pool still spinning after its run would slow the next session). *bound*: the twin's speed-up if its "
         "Q/DQ and layout ops cost nothing and its float ops cost what FP32's do "
         "(`fp32 / (fp32 - fp32 convs + int8 convs + twin float convs)`).", ""]
    rows = []
    for name, r in doc["bundles"].items():
        a = r["analysis"]
        w = r["wall_ms"]
        bounds = [x["analysis"]["bound_speedup"] for x in r["repeats"]]
        walls = [x["wall_ms"]["fp32"] / x["wall_ms"]["int8_cpu"] for x in r["repeats"]]
        rows.append((name, f"{r['size'][0]}x{r['size'][1]}", f"{w['fp32']:.1f}", f"{w['int8_cpu']:.1f}",
                     f"{w['fp32'] / w['int8_cpu']:.2f}x", f"{a['fp32_conv_share'] * 100:.0f} %",
                     f"{a['conv_speedup']:.2f}x", f"{a['twin_qdq_layout_ms']:.1f}", f"{a['bound_speedup']:.2f}x",
                     f"{min(walls):.2f}-{max(walls):.2f}x", f"{min(bounds):.2f}-{max(bounds):.2f}x"))
    L += [f"Each bundle was profiled {doc['settings']['repeats']} time(s); the row shows the run with the median "
          "bound, the last two columns the range over all runs.", "",
          markdown_table(("bundle", "size", "FP32 wall ms", "INT8 twin wall ms", "wall speed-up",
                          "convs' share of FP32 kernel time", "conv speed-up (int8 vs fp32 kernels)",
                          "twin Q/DQ + layout ms", "bound", "wall speed-up, all runs", "bound, all runs"), rows,
                         align="llrrrrrrrrr"), ""]
    for name, r in doc["bundles"].items():
        ops = sorted(set(r["fp32"]["ms"]) | set(r["int8_cpu"]["ms"]),
                     key=lambda k: -(r["fp32"]["ms"].get(k, 0) + r["int8_cpu"]["ms"].get(k, 0)))
        body = [(k, f"{r['fp32']['ms'].get(k, 0):.2f}", r["fp32"]["nodes"].get(k, 0),
                 f"{r['int8_cpu']['ms'].get(k, 0):.2f}", r["int8_cpu"]["nodes"].get(k, 0)) for k in ops]
        body.append(("total", f"{r['fp32']['total_ms']:.2f}", "", f"{r['int8_cpu']['total_ms']:.2f}", ""))
        table = markdown_table(("op type", "FP32 ms", "nodes", "INT8 twin ms", "nodes"), body, align="lrrrr")
        L += [f"## {name}", "", f"FP32 graph: `{r.get('fp32_file', 'model.onnx')}`", "", table, ""]
    L += ["## Verdicts (computed from the numbers above)", ""]
    for name, r in doc["bundles"].items():
        a = r["analysis"]
        sp = r["wall_ms"]["fp32"] / r["wall_ms"]["int8_cpu"]
        top = max(x["analysis"]["bound_speedup"] for x in r["repeats"])
        L.append(f"- {name}: INT8 twin >= 1.3x FP32 (wall, median-bound run): {'yes' if sp >= 1.3 else 'no'} "
                 f"({sp:.2f}x); reachable with zero Q/DQ and layout cost (median bound >= 1.3): "
                 f"{'yes' if a['bound_speedup'] >= 1.3 else 'no'} ({a['bound_speedup']:.2f}x; "
                 f"highest of the runs {top:.2f}x)")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3,
                    help="profile each bundle this many times; the tables show the run with the median bound")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "int8_cpu_profile"))
    args = ap.parse_args()
    args.repeats = max(1, args.repeats)
    doc = {**provenance(), "settings": {"threads": args.threads, "runs": args.runs, "repeats": args.repeats,
                                        "ort_spinning": False}, "bundles": {}}
    for b in map(Path, args.bundles):
        if not (b / "model_int8_cpu.onnx").is_file():
            sys.exit(f"error: {b} has no model_int8_cpu.onnx (export it with --int8)")
        x = _input(b)
        f32 = b / "model_cpu.onnx" if (b / "model_cpu.onnx").is_file() else b / "model.onnx"  # what the runtime runs
        reps = []
        for _ in range(args.repeats):  # the machine drifts: repeat, keep every run, show the median one
            fp32 = op_profile(f32, x, args.threads, args.runs)
            twin = op_profile(b / "model_int8_cpu.onnx", x, args.threads, args.runs)
            w32, w8 = wall([f32, b / "model_int8_cpu.onnx"], x, args.threads)
            reps.append({"fp32": fp32, "int8_cpu": twin, "wall_ms": {"fp32": w32, "int8_cpu": w8},
                         "analysis": analyse(fp32, twin)})
            print(f"{b.name}: FP32 {w32} ms, twin {w8} ms, bound {reps[-1]['analysis']['bound_speedup']}x", flush=True)
        mid = sorted(reps, key=lambda r: r["analysis"]["bound_speedup"])[len(reps) // 2]
        doc["bundles"][b.name] = {"path": str(b), "fp32_file": f32.name, "size": list(x.shape[-2:]), **mid,
                                  "repeats": [{"wall_ms": r["wall_ms"], "analysis": r["analysis"]} for r in reps]}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(_md(doc))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
