"""``run_bench``: every artifact x backend x precision measured the same way, one ``Row`` each.

Per row: file size, params/GMACs (manifest, else counted from the ONNX graph, else the torch model),
mIoU on a val split, latency percentiles of ``infer`` alone (compute) and of preprocess + infer +
postprocess (end to end) on a real image, FPS at batch 1 and batch N, peak host RSS growth, GPU
memory, threads. A backend that is unavailable, or a step that fails, becomes a row with its reason.

Clocks: ``time.perf_counter`` around each call; on CUDA the torch backend is timed with CUDA events
(compute) and synchronised wall time (end to end). ONNX Runtime's ``run`` and the TensorRT backend
return host arrays, so their wall time already includes device synchronisation and copies.
Torch is imported only for torch rows or when a checkpoint must be exported.

The steps, one module each: ``options`` (what is measured), ``artifacts`` (bundles and checkpoints),
``runners`` (one face over the runtime's backends), ``measure`` (one row), ``latency`` (its timing),
``accuracy`` (its mIoU), ``report`` (table, json, csv, plot).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ApdError
from ..targets import BACKENDS, PRECISIONS
from .accuracy import resolve_eval_data
from .artifacts import Artifact, artifact_kind, load_artifact, newest_bundle
from .latency import split_summary
from .machine import describe, machine_info
from .measure import FILE_FORMAT, measure_row, parse_mem_get_info
from .options import BenchOptions, check_counts, check_names, first_line
from .report import Row, precision_notes, print_table, write_all

__all__ = ["BACKENDS", "PRECISIONS", "FILE_FORMAT", "Artifact", "BenchOptions", "Row",
           "artifact_kind", "load_rows", "measure_row", "newest_bundle", "parse_mem_get_info", "run_bench",
           "split_summary"]


def run_bench(artifacts: Sequence[str | Path] | None = None, backends: Sequence[str] = ("ort",),
              precisions: Sequence[str] = ("fp32",), device: str = "cpu", batch: int = 1, warmup: int = 10,
              iters: int = 50, data: str | None = None, out: str | Path | None = None,
              max_images: int | None = None, threads: int | None = None, channels_last: bool = False,
              cuda_graph: bool = False, input_size: tuple[int, int] | None = None, export_dir: str | Path = "export",
              verify: bool = True, echo: Callable[[str], None] = print, write: bool = True,
              show_table: bool = True, split: str | None = None) -> list[Row]:
    """Benchmark artifacts (bundle folders or checkpoints; default the newest bundle in ``export_dir``).

    Writes bench.json / bench.csv / bench.png to ``out`` (default: the first bundle's folder) and
    prints the table. Checkpoints benchmarked on ort/trt are exported first, into ``<out>/bundles/``.
    Returns the rows, including skipped/failed ones with their reasons.
    """
    backends = check_names(backends, BACKENDS, "backend")
    precisions = check_names(precisions, PRECISIONS, "precision")
    check_counts(batch, warmup, iters, device)
    paths = [Path(a) for a in artifacts] if artifacts else [newest_bundle(export_dir)]
    for p in paths:
        if not p.exists():
            raise ApdError(f"artifact not found: {p}")
    opts = BenchOptions(backends, precisions, device, batch, warmup, iters, data, max_images, threads,
                        channels_last, cuda_graph, tuple(input_size) if input_size else None, verify, split)
    out_dir = Path(out) if out else None
    rows: list[Row] = []
    machine = machine_info()
    echo(describe(machine))
    for path in paths:
        scratch = out_dir or (path if artifact_kind(path) == "bundle" and path.is_dir() else path.parent)
        try:
            art = load_artifact(path, opts, scratch, echo)
        except Exception as exc:
            rows.append(Row(model=path.name, artifact=str(path), backend="-", precision="-", device=device,
                            status="failed", reason=first_line(exc)))
            continue
        out_dir = out_dir or (art.bundle or art.path.parent)
        art.eval = resolve_eval_data(art.manifest, data, split)
        for backend in backends:
            for precision in precisions:
                t0 = time.perf_counter()
                row = measure_row(art, backend, precision, opts, echo)
                rows.append(row)
                status = row.status if row.ok else f"{row.status}: {row.reason}"
                echo(f"  {row.model} {backend}/{precision}: {status} ({time.perf_counter() - t0:.1f} s)")
    if show_table:
        print_table(rows, title="apd-edge bench")
        for scored in dict.fromkeys(r.eval_data for r in rows if r.ok and r.eval_images):
            echo(f"mIoU on {scored}")
        for note in precision_notes(rows):
            echo(f"note: {note}")
    if write:
        out_dir = out_dir or Path(".")
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()}
        settings["artifacts"] = [str(p) for p in paths]
        files = write_all(rows, out_dir, machine, settings)
        echo("wrote " + ", ".join(str(p) for p in files.values()))
        if "png" not in files:
            from .report import PLOT_SKIPPED

            echo(PLOT_SKIPPED)
    return rows


def load_rows(path: str | Path) -> list[Row]:
    """Rows back from a bench.json."""
    from .report import row_from_dict

    return [row_from_dict(r) for r in json.loads(Path(path).read_text())["rows"]]
