"""Tables as text, the one formatter of the house: Markdown (results files, reports) and aligned plain text
(the terminal). Cells are strings or anything ``str()`` turns into one; formatting numbers is the caller's."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """``| a | b |`` lines under a ``|---|---|`` rule; ``align`` gives 'l' or 'r' per column (default left).

    A ``|`` inside a cell would end it early, so it is written as ``/``."""
    header = [str(h) for h in header]
    rule = ["---:" if align[i:i + 1] == "r" else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[Any] | None, rows: Iterable[Sequence[Any]], align: str = "", sep: str = "  ",
               rule: bool = True) -> str:
    """Columns as wide as their widest cell, left-aligned unless ``align`` has 'r' for that column; a dashed
    rule under the header (``rule``); no trailing spaces; ``header`` None for a table without one.

    A row shorter than the others ends in a cell that runs on to the end of the line: it is not padded and
    does not widen its column (a long skip reason next to rows of numbers)."""
    table = ([[str(h) for h in header]] if header is not None else []) + [[str(c) for c in r] for r in rows]
    if not table:
        return ""
    ncols = max(len(r) for r in table)
    widths = [0] * ncols
    for r in table:
        for i, c in enumerate(r):
            if i < len(r) - 1 or len(r) == ncols:
                widths[i] = max(widths[i], len(c))

    def line(r: list[str]) -> str:
        cells = []
        for i, c in enumerate(r):
            if i == len(r) - 1 and len(r) < ncols:
                cells.append(c)  # runs on
            else:
                cells.append(c.rjust(widths[i]) if align[i:i + 1] == "r" else c.ljust(widths[i]))
        return sep.join(cells).rstrip()

    lines = [line(r) for r in table]
    if header is not None and rule:
        lines.insert(1, sep.join("-" * w for w in widths))
    return "\n".join(lines)
