"""Latency measurement: warm-up excluded, percentiles, host peak-RSS from /proc, CUDA-event timing.

CPU work is timed with ``time.perf_counter``. GPU work must be synchronised before the clock is read:
callers pass ``sync`` (e.g. ``torch.cuda.synchronize``), or use :func:`time_cuda_events` for the torch
backend, which records a CUDA event pair around each call and reads the elapsed GPU time.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) without needing numpy."""
    if not samples:
        return math.nan
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min of latencies in milliseconds."""
    if not samples_ms:
        nan = math.nan
        return {"p50": nan, "p90": nan, "p99": nan, "mean": nan, "min": nan, "n": 0}
    return {
        "p50": percentile(samples_ms, 50),
        "p90": percentile(samples_ms, 90),
        "p99": percentile(samples_ms, 99),
        "mean": sum(samples_ms) / len(samples_ms),
        "min": min(samples_ms),
        "n": len(samples_ms),
    }


def time_calls(
    fn: Callable[[], Any], warmup: int, iters: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` times; return each call's wall time in ms.

    ``sync`` runs after every call inside the timed region, so asynchronous GPU work is counted.
    """
    if iters < 1:
        raise ValueError("iters must be >= 1")
    for _ in range(max(0, warmup)):
        fn()
    if sync is not None:
        sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, iters: int, sync: Callable[[], None] | None = None
) -> dict[str, list[float]]:
    """Time several functions in alternating rounds; return each one's wall times in ms.

    Round ``i`` calls every function once, starting at a rotating position, so a change of machine
    load (other jobs, clocks) hits all of them alike. Timing them one after another in blocks lets
    load drift between the blocks: a pipeline that contains ``infer`` could then read faster than
    ``infer`` alone.
    """
    if iters < 1:
        raise ValueError("iters must be >= 1")
    names = list(fns)
    for _ in range(max(0, warmup)):
        for name in names:
            fns[name]()
    if sync is not None:
        sync()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iters):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            if sync is not None:
                sync()
            out[name].append((time.perf_counter() - t0) * 1000.0)
    return out


def time_cuda_events(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    """GPU time of each call in ms from a ``torch.cuda.Event`` pair (torch backend on CUDA only)."""
    import torch

    for _ in range(max(0, warmup)):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in pairs]


# ---------------------------------------------------------------------------------------------
# Host memory from /proc (no psutil)
# ---------------------------------------------------------------------------------------------


def parse_proc_status(text: str) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) in KiB from ``/proc/<pid>/status`` text."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields = value.split()
            if fields and fields[0].isdigit():
                out[key] = int(fields[0])
    return out


def read_rss_kib() -> dict[str, int]:
    try:
        with open("/proc/self/status") as f:
            return parse_proc_status(f.read())
    except OSError:
        return {}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) for this process; False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class HostMemory:
    """Peak host RSS growth over a block: ``with HostMemory() as m: ...; m.peak_delta_mb``.

    Resets ``VmHWM`` on entry (Linux >= 4.0) so the peak belongs to the block; where that fails the
    process-lifetime peak is used and the delta is an upper bound (``exact`` is False). Memory the
    allocator reuses from earlier frees does not show as growth; ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc)
    makes large buffers come from, and return to, the OS so that consecutive rows measure cleanly.
    """

    def __enter__(self) -> "HostMemory":
        self.exact = reset_peak_rss()
        self.start = read_rss_kib().get("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.end = read_rss_kib()

    @property
    def peak_mb(self) -> float | None:
        """The process's peak RSS during the block (libraries and earlier allocations included)."""
        return self.end["VmHWM"] / 1024.0 if "VmHWM" in self.end else None

    @property
    def peak_delta_mb(self) -> float | None:
        if self.start is None or "VmHWM" not in self.end:
            return None
        return max(0.0, (self.end["VmHWM"] - self.start) / 1024.0)
