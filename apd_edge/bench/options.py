"""What one ``apd-edge bench`` run measures (``BenchOptions``) and the checks on its arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import ApdError, unknown_name


@dataclass
class BenchOptions:
    backends: Sequence[str] = ("ort",)
    precisions: Sequence[str] = ("fp32",)
    device: str = "cpu"
    batch: int = 1
    warmup: int = 10
    iters: int = 50
    data: str | None = None
    max_images: int | None = None
    threads: int | None = None
    channels_last: bool = False
    cuda_graph: bool = False
    input_size: tuple[int, int] | None = None
    verify: bool = True
    split: str | None = None  # split scored for mIoU; None = the bundle's val split


def check_names(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """Lower-cased, de-duplicated ``values``; an unknown one is an error with a suggestion."""
    out = []
    for v in values:
        v = v.strip().lower()
        if v and v not in allowed:
            raise unknown_name(what, v, allowed)
        if v and v not in out:
            out.append(v)
    if not out:
        raise ApdError(f"no {what} given")
    return out


def check_counts(batch: int, warmup: int, iters: int, device: str) -> None:
    if batch < 1 or iters < 1 or warmup < 0:
        raise ApdError(f"need --batch >= 1, --iters >= 1, --warmup >= 0 (got {batch}, {iters}, {warmup})")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ApdError(f"--device {device!r}: expected cpu, cuda or cuda:N")


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 300 characters): what a row's reason shows."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
