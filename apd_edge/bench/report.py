"""Benchmark rows and their outputs: terminal table, ``bench.json``, ``bench.csv``, ``bench.png``."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from .. import tables
from ..tables import text_table


@dataclass
class Row:
    """One artifact x backend x precision measurement (or the reason it could not be measured).

    Latencies are milliseconds per image at batch 1; ``compute_*`` times ``infer`` alone, ``e2e_*``
    preprocess + infer + postprocess on a real image. FPS is images per second of ``infer`` (compute).
    ``miou`` is a fraction in [0, 1]. ``None`` means not measured ("n/a" in the table).
    """

    model: str
    artifact: str
    backend: str
    precision: str
    device: str = "cpu"
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    input_size: str = ""
    size_mb: float | None = None
    params: int | None = None
    gmacs: float | None = None
    profile_source: str = ""  # manifest | onnx | torch
    miou: float | None = None
    pixel_acc: float | None = None
    eval_images: int | None = None
    eval_data: str = ""
    compute_p50: float | None = None
    compute_p90: float | None = None
    compute_p99: float | None = None
    e2e_p50: float | None = None
    e2e_p90: float | None = None
    e2e_p99: float | None = None
    fps_b1: float | None = None
    batch: int = 1
    fps_batch: float | None = None
    batch_note: str = ""
    host_mem_mb: float | None = None  # peak RSS growth during the row
    host_peak_mb: float | None = None  # the process's peak RSS during the row
    gpu_mem_mb: float | None = None
    threads: str = ""
    options: str = ""
    timing: str = ""  # how the clock was read (perf_counter, cuda events, ...)
    # TensorRT rows, as trtexec splits them (CUDA events on the stream, ms at batch 1): p50 of each part
    h2d_p50: float | None = None
    gpu_compute_p50: float | None = None
    gpu_compute_p99: float | None = None
    d2h_p50: float | None = None
    warmup: int = 0
    iters: int = 0
    warning: str = ""  # e.g. the bundle's INT8 model missed its accuracy target at export

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def row_from_dict(d: dict[str, Any]) -> Row:
    names = {f.name for f in fields(Row)}
    return Row(**{k: v for k, v in d.items() if k in names})


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _params(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 1e6:.2f}M"


def table_rows(rows: Iterable[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the terminal table (short columns; the files hold everything)."""
    header = [
        "model", "backend", "prec", "status", "size MB", "params", "GMACs", "mIoU %",
        "ms p50/p90/p99", "e2e p50/p90/p99", "FPS b1", "FPS bN", "RSS MB +grow/peak", "threads",
    ]
    body = []
    for r in rows:
        if not r.ok:
            body.append([r.model, r.backend, r.precision + (" (!)" if r.warning else ""), r.status,
                         _fmt(r.size_mb), _params(r.params),
                         _fmt(r.gmacs), "", r.reason, "", "", "", "", ""])
            continue
        miou = "n/a" if r.miou is None else f"{100 * r.miou:.2f}"
        lat = f"{_fmt(r.compute_p50)}/{_fmt(r.compute_p90)}/{_fmt(r.compute_p99)}"
        e2e = f"{_fmt(r.e2e_p50)}/{_fmt(r.e2e_p90)}/{_fmt(r.e2e_p99)}"
        fps_n = r.batch_note if r.fps_batch is None and r.batch_note else _fmt(r.fps_batch, 1)
        if r.fps_batch is not None:
            fps_n = f"{fps_n} (b{r.batch})"
        mem = f"+{_fmt(r.host_mem_mb, 0)}/{_fmt(r.host_peak_mb, 0)}"
        if r.gpu_mem_mb is not None:
            mem += f" gpu {_fmt(r.gpu_mem_mb, 0)}"
        threads = r.threads
        if r.gpu_compute_p50 is not None:  # TensorRT rows: the trtexec split in the last column
            threads = (f"H2D {_fmt(r.h2d_p50, 3)} / GPU {_fmt(r.gpu_compute_p50, 3)} / D2H {_fmt(r.d2h_p50, 3)} ms"
                       + (f"; {threads}" if threads else ""))
        body.append([r.model, r.backend, r.precision + (" (!)" if r.warning else ""), r.status, _fmt(r.size_mb),
                     _params(r.params), _fmt(r.gmacs),
                     miou, lat, e2e, _fmt(r.fps_b1, 1), fps_n, mem, threads])
    return header, body


REASON_COL = 8  # where a skipped/failed row's reason starts (the latency column)


def format_table(rows: Iterable[Row]) -> str:
    """A plain-text table (monospace, aligned), used when rich is absent and in saved reports.

    A row without measurements prints its reason from the latency column to the end of the line, so a
    long reason does not widen the measured columns."""
    rows = list(rows)
    header, body = table_rows(rows)
    return text_table(header, [b if r.ok else b[:REASON_COL + 1] for r, b in zip(rows, body)])


def markdown_table(rows: Iterable[Row]) -> str:
    return tables.markdown_table(*table_rows(rows))


def print_table(rows: list[Row], title: str | None = None, echo=print) -> None:
    """Print with rich when installed (falls back to the plain table)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        if title:
            echo(title)
        echo(format_table(rows))
    else:
        header, body = table_rows(rows)
        t = Table(title=title, show_lines=False)
        for h in header:
            t.add_column(h, overflow="fold")
        for b in body:
            t.add_row(*b)
        Console(width=220).print(t)
    for w in dict.fromkeys(f"(!) {r.model} {r.precision}: {r.warning}" for r in rows if r.warning):
        echo(w)


def write_json(rows: list[Row], path: Path, machine: dict[str, Any], settings: dict[str, Any]) -> Path:
    payload = {"machine": machine, "settings": settings, "rows": [asdict(r) for r in rows],
               "notes": precision_notes(rows)}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def write_csv(rows: list[Row], path: Path) -> Path:
    names = [f.name for f in fields(Row)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    return path


def plot(rows: list[Row], path: Path, title: str = "latency vs mIoU") -> Path:
    """Scatter of end-to-end p50 latency (x) against mIoU (y): one labelled marker per measured row.

    Rows measured without accuracy sit on the x axis at mIoU 0 with a hollow marker, so every
    measured row stays visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    measured = [r for r in rows if r.ok and (r.e2e_p50 is not None or r.compute_p50 is not None)]
    markers = {"ort": "o", "trt": "s", "torch": "^"}
    models = list(dict.fromkeys(r.model for r in measured))
    for k, r in enumerate(measured):
        x = r.e2e_p50 if r.e2e_p50 is not None else r.compute_p50
        has_acc = r.miou is not None
        y = 100 * r.miou if has_acc else 0.0
        color = f"C{models.index(r.model) % 10}"
        ax.scatter([x], [y], marker=markers.get(r.backend, "D"), s=55, color=color,
                   facecolors=color if has_acc else "none")
        # staggered offsets keep labels of nearby points apart
        ax.annotate(f"{r.model} {r.backend}/{r.precision}", (x, y), textcoords="offset points",
                    xytext=(5, 4 + 9 * (k % 3)), fontsize=7, color=color)
    ax.margins(x=0.3, y=0.15)
    # both axes from zero: a 0.1-point mIoU difference must not fill the plot's height
    xs = [r.e2e_p50 if r.e2e_p50 is not None else r.compute_p50 for r in measured]
    ys = [100 * r.miou for r in measured if r.miou is not None]
    ax.set_xlim(0, max(xs) * 1.3 if xs else 1)
    ax.set_ylim(0, min(100.0, max(ys) * 1.15 + 1) if ys else 1)
    if len(ys) > 1:
        title += f"  (mIoU {min(ys):.2f} to {max(ys):.2f} %)"
    if not measured:
        ax.text(0.5, 0.5, "no measured rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("end-to-end latency p50 (ms, batch 1)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


PLOT_SKIPPED = "bench.png skipped: matplotlib is not installed (pip install matplotlib, or \"apd-edge[deploy]\")"


def can_plot() -> bool:
    """Whether matplotlib is importable (a torch-free deployment install may lack it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _why_slower(precision: str, device: str, backend: str, flags: set[str]) -> str:
    if device != "cpu":
        if backend == "ort":
            return ("ONNX Runtime's CUDA provider runs many Q/DQ and FP16 graphs with conversions around float "
                    "kernels; TensorRT engines (--backends trt) are where lower precisions pay off on a GPU")
        return "this GPU's kernels for it were not faster at this size (small models are often launch-bound)"
    if precision == "fp16":
        native = flags & {"avx512_fp16", "amx_fp16"}
        return ("this CPU has native FP16 math, but the graph's casts around FP32-kept ops cost more than it saves"
                if native else "this CPU has no native FP16 arithmetic (no AVX512-FP16/AMX-FP16), so FP16 runs as "
                "conversions around FP32 work")
    if precision == "int8":
        vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
        if not vnni:
            return ("this CPU lacks int8 dot-product instructions (VNNI/AMX/dotprod), so INT8 pays for "
                    "quantize/dequantize without faster math")
        return (f"this CPU has {', '.join(vnni)}, but quantize/dequantize around ops kept in float and memory-bound "
                f"layers outweighed the int8 speed-up for this model and size")
    return ""


def precision_notes(rows: Iterable[Row], flags: set[str] | None = None) -> list[str]:
    """One line per lower-precision row slower (compute p50) than FP32 of the same model, backend and device."""
    rows = [r for r in rows if r.ok and r.compute_p50 is not None]
    flags = cpu_flags() if flags is None else flags
    notes = []
    for r in rows:
        if r.precision == "fp32":
            continue
        ref = next((f for f in rows if f.precision == "fp32" and (f.model, f.backend, f.device, f.artifact) ==
                    (r.model, r.backend, r.device, r.artifact)), None)
        if ref is None or r.compute_p50 <= ref.compute_p50:
            continue
        notes.append(f"{r.model} {r.backend}/{r.precision} is slower than fp32 on {r.device} "
                     f"({r.compute_p50:.2f} vs {ref.compute_p50:.2f} ms): "
                     f"{_why_slower(r.precision, r.device, r.backend, flags)}")
    return notes


def write_all(rows: list[Row], out_dir: Path, machine: dict[str, Any], settings: dict[str, Any]) -> dict[str, Path]:
    """bench.json, bench.csv and (when matplotlib is installed) bench.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": write_json(rows, out_dir / "bench.json", machine, settings),
        "csv": write_csv(rows, out_dir / "bench.csv"),
    }
    if can_plot():
        files["png"] = plot(rows, out_dir / "bench.png")
    return files
