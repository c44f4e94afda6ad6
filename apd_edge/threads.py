"""CPU threads for every compute command (torch, ONNX Runtime, OpenCV); torch-free.

PyTorch and ONNX Runtime size their pools to all cores. On a machine that is already busy that
oversubscribes the CPU and makes training 5-18x slower, so the default here is the cores that are
free (cores minus the 1-minute load average, at least 1), with a warning when the load average
exceeds the core count. ``setup_threads`` resolves the number once per command and applies it to torch
and OpenCV; ``OrtBackend`` sessions created afterwards use ``current()`` unless given their own.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

_current: int | None = None


def cpu_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS has it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores minus the running load (rounded), at least 1."""
    cores = cpu_cores() if cores is None else cores
    load = load_average() if load is None else load
    return max(1, cores - int(round(load or 0.0)))


def resolve_threads(requested: int | None = None, recipe_value: int | None = None, *,
                    cores: int | None = None, load: float | None = None) -> tuple[int, str | None]:
    """The thread count (``--threads``, else the recipe's ``threads``, else the free cores) and a warning
    line when the load average exceeds the core count (None otherwise)."""
    cores = cpu_cores() if cores is None else cores
    load = load_average() if load is None else load
    if requested is not None and requested < 1 or recipe_value is not None and recipe_value < 1:
        from .errors import ApdError

        raise ApdError("--threads: expected a positive number, "
                       f"got {requested if requested is not None else recipe_value}")
    # under torchrun the free cores are shared by the processes of this machine
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    n = requested or recipe_value or max(1, free_cores(cores, load) // local)
    warning = None
    if load is not None and load > cores:
        chosen = "as asked" if requested or recipe_value else "the free cores"
        warning = (f"load average {load:.1f} exceeds the {cores} CPU cores (other work is running): expect slower "
                   f"runs; using {n} thread{'s' if n != 1 else ''} ({chosen}; --threads N to choose)")
    return n, warning


def apply_threads(n: int, torch: bool = True) -> int:
    """Use ``n`` threads from now on: torch's intra-op pool (imported only when ``torch``, or when already
    imported), OpenCV, and ONNX Runtime sessions built afterwards (through ``current()``)."""
    global _current
    _current = int(n)
    try:
        import cv2

        cv2.setNumThreads(_current)
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        pass
    if torch or "torch" in sys.modules:
        import torch as _torch

        _torch.set_num_threads(_current)
    return _current


def current() -> int | None:
    """The count chosen by ``setup_threads`` in this process (None: libraries' own defaults)."""
    return _current


def setup_threads(requested: int | None = None, recipe_value: int | None = None, *, torch: bool = True,
                  warn: Callable[[str], None] | None = None) -> int:
    """Resolve, warn (stderr by default) and apply; returns the thread count."""
    n, warning = resolve_threads(requested, recipe_value)
    if warning and os.environ.get("APD_EDGE_NO_LOAD_WARNING", "") in ("", "0"):
        (warn or (lambda m: print(f"warning: {m}", file=sys.stderr)))(warning)
    return apply_threads(n, torch=torch)
