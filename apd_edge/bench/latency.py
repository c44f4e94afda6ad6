"""The timing of one row: compute (``infer`` alone) and end to end on a real image, FPS at batch 1 and N,
and TensorRT's host-to-device / compute / device-to-host split."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .artifacts import Artifact
from .options import BenchOptions, first_line
from .report import Row
from .timing import summarize, time_calls, time_interleaved


def sample_image(art: Artifact) -> np.ndarray:
    """A real val image when there is one (so preprocessing does its real resize), else noise."""
    ds = art.eval.dataset if art.eval else None
    if ds is not None and len(ds):
        return ds[0][0]
    h, w = art.manifest["preprocess"]["size"]
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def time_row(row: Row, runner, art: Artifact, opts: BenchOptions) -> None:
    """Fill ``row``'s latency percentiles, FPS and timing method from ``runner`` (a ``BenchRunner``)."""
    img = sample_image(art)
    x, meta = runner.preprocess(img)
    xin = runner.prepare(x)

    def e2e() -> None:
        xx, mm = runner.preprocess(img)
        runner.postprocess(runner.infer(runner.prepare(xx)), mm)

    if runner.on_cuda:  # GPU time of infer alone is below e2e's wall time anyway: two separate blocks
        from .timing import time_cuda_events

        compute = time_cuda_events(lambda: runner.infer(xin), opts.warmup, opts.iters)
        full = time_calls(e2e, max(1, opts.warmup // 2), opts.iters, sync=runner.sync)
        row.timing = "compute: CUDA events; e2e: perf_counter + synchronize"
    else:  # one wall clock for both: interleaved, or load drift between two blocks can put e2e below infer
        got = time_interleaved({"compute": lambda: runner.infer(xin), "e2e": e2e}, opts.warmup, opts.iters,
                               sync=runner.sync)
        compute, full = got["compute"], got["e2e"]
        row.timing = "perf_counter, infer and e2e calls interleaved (host arrays returned: synchronous)"
    impl = runner.impl
    if hasattr(impl, "record_split"):  # TensorRT: host-to-device / compute / device-to-host, as trtexec reports
        impl.splits.clear()
        impl.record_split = True
        try:
            time_calls(lambda: runner.infer(xin), 0, opts.iters)
        finally:
            impl.record_split = False
        split = split_summary(impl.splits)
        row.h2d_p50, row.gpu_compute_p50, row.gpu_compute_p99, row.d2h_p50 = (
            split["h2d_p50"], split["compute_p50"], split["compute_p99"], split["d2h_p50"])
        row.timing += f"; H2D/compute/D2H: CUDA events ({len(impl.splits)} calls)"
    c, e = summarize(compute), summarize(full)
    row.compute_p50, row.compute_p90, row.compute_p99 = (round(c[k], 3) for k in ("p50", "p90", "p99"))
    row.e2e_p50, row.e2e_p90, row.e2e_p99 = (round(e[k], 3) for k in ("p50", "p90", "p99"))
    row.fps_b1 = round(1000.0 / c["mean"], 2)
    if opts.batch > 1:
        static = runner.static_batch()
        if static is not None and static != opts.batch:
            row.batch_note = f"static batch {static}"
            return
        xb = runner.prepare(np.repeat(x, opts.batch, axis=0))
        try:
            tb = time_calls(lambda: runner.infer(xb), max(1, opts.warmup // 2), max(3, opts.iters // 2),
                            sync=runner.sync)
            row.fps_batch = round(opts.batch * 1000.0 / summarize(tb)["mean"], 2)
        except Exception as exc:
            row.batch_note = f"batch {opts.batch} failed: {first_line(exc)[:80]}"


def split_summary(splits: Sequence[tuple[float, float, float]]) -> dict[str, float | None]:
    """p50 of host-to-device and device-to-host copies and p50/p99 of GPU compute, in ms (3 decimals)."""
    if not splits:
        return {"h2d_p50": None, "compute_p50": None, "compute_p99": None, "d2h_p50": None}
    h2d, comp, d2h = ([s[i] for s in splits] for i in range(3))
    s = {"h2d_p50": summarize(h2d)["p50"], "compute_p50": summarize(comp)["p50"],
         "compute_p99": summarize(comp)["p99"], "d2h_p50": summarize(d2h)["p50"]}
    return {k: round(v, 3) for k, v in s.items()}
