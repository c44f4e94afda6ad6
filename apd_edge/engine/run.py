"""The run folder: ``<output_dir>/<name>/`` with recipe.yaml, metrics.jsonl, last.pt, best.pt,
summary.json, and a relative ``<output_dir>/latest`` symlink to the newest run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..config import Recipe, save_recipe
from ..errors import ApdError


def run_dir_of(recipe: Recipe) -> Path:
    return Path(recipe.output_dir) / recipe.name


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    """Create (or check, for ``resume``) the run folder. Never silently overwrites a run."""
    run_dir = run_dir_of(recipe)
    last = run_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise ApdError(f"--resume: no checkpoint to resume from at {last} (start without --resume)")
    elif last.exists():
        raise ApdError(
            f"run folder {run_dir} already holds last.pt: continue it with --resume, start it again with "
            f"--exist-ok, or start a new run with --increment or --set name=<new name>"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# what a run writes into its folder (``--exist-ok`` removes these before starting again)
RUN_FILES = ("last.pt", "prev.pt", "best.pt", "diverged.pt", "summary.json", "metrics.jsonl", "recipe.yaml",
             "resumes.jsonl")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete ``.<file>.*.tmp`` left by a process killed while writing (call with the run lock held)."""
    removed = []
    for p in run_dir.glob(".*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def open_run_dir(recipe: Recipe, resume: bool, exist_ok: bool = False, increment: bool = False):
    """Lock and prepare the run folder; returns ``(run_dir, lock)`` (release the lock when the run ends).

    ``exist_ok``: start afresh in a folder holding a finished or stopped run (its run files are removed).
    ``increment``: use the first free name of ``name``, ``name2``, ``name3``, ... (as ultralytics numbers runs).
    The lock is taken before the folder is inspected, so two processes never both pass the checks.
    """
    from ..runlock import RunLock

    base = Path(recipe.output_dir)
    hint = "; or start another run with --increment or --set name=<new name>"
    if increment and not resume:
        for n in range(1, 10_000):
            run_dir = base / (recipe.name if n == 1 else f"{recipe.name}{n}")
            if (run_dir / "last.pt").exists():
                continue
            lock = RunLock(run_dir, hint=hint)
            if not lock.try_acquire():
                continue
            if (run_dir / "last.pt").exists():  # written between the check and the lock
                lock.release()
                continue
            break
        else:  # pragma: no cover
            raise ApdError(f"no free run name {recipe.name}N in {base}")
    else:
        run_dir = base / recipe.name
        lock = RunLock(run_dir, hint=hint).acquire()
        try:
            if exist_ok and not resume:
                for f in RUN_FILES:
                    (run_dir / f).unlink(missing_ok=True)
            prepare_run_dir(recipe, resume)
        except BaseException:
            lock.release()
            raise
    remove_stale_temp_files(run_dir)
    return run_dir, lock


def write_recipe(recipe: Recipe, run_dir: Path) -> None:
    save_recipe(recipe, run_dir / "recipe.yaml")


def point_latest(run_dir: Path) -> None:
    """Make ``<output_dir>/latest`` a relative symlink to ``run_dir`` (best effort)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)  # atomic swap of the link
    except OSError:
        if tmp.is_symlink():
            tmp.unlink()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # keep the line valid JSON
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per logged step or evaluation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records newer than the checkpoint so the curve continues without duplicates."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line from a crash
            if int(rec.get("step", 0)) <= step:
                kept.append(json.dumps(rec))
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(record)) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    (run_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    best = summary.get("best_miou")
    final = summary.get("final_miou")
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"run       {summary['run_dir']}",
        f"model     {summary['model']} ({summary['params'] / 1e6:.2f} M params), method {summary['method']}",
        f"steps     {summary['steps']} in {summary['wall_time_s']:.1f} s",
        f"mIoU      final {pct(final)}  best {pct(best)} (step {summary.get('best_step')})",
        f"weights   {summary['best_checkpoint'] or summary['last_checkpoint']}",
    ]
    if summary.get("curves"):
        lines.append(f"curves    {summary['curves']}")
    from .report import per_class_table

    table = per_class_table(summary)
    return "\n".join(lines + (["", "per-class IoU (%)", table] if table else []))
