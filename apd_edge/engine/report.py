"""What a run shows at its end and afterwards: ``curves.png`` (loss terms and val mIoU against step), the
per-class IoU table (final evaluation and best checkpoint), and the list of runs for ``apd-edge runs``.

Everything is read back from ``metrics.jsonl`` and ``summary.json``, so it works on old runs too.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

from ..tables import text_table

#: keys of a train record in metrics.jsonl that are not loss terms
_NOT_LOSS = {"type", "step", "lr", "img_s", "time"}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a half-written last line from an interrupted run
    return out


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def write_curves(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path | None:
    """Plot every loss term (top) and val mIoU (bottom) against step; None when nothing was logged."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig, (ax_loss, ax_miou) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    terms = [k for k in train[0] if k not in _NOT_LOSS] if train else []
    steps = [r["step"] for r in train]
    for k in terms:
        ax_loss.plot(steps, [_num(r.get(k)) for r in train], label=k, lw=1.4 if k == "loss" else 1.0)
    ax_loss.set_ylabel("training loss")
    if terms:
        ax_loss.legend(fontsize=8, ncol=min(4, len(terms)))
    ax_loss.grid(alpha=0.3)
    if evals:
        es = [r["step"] for r in evals]
        miou = [100 * _num(r.get("miou")) for r in evals]
        ax_miou.plot(es, miou, "o-", color="tab:green", label="val mIoU")
        best = max(range(len(miou)), key=lambda i: -math.inf if math.isnan(miou[i]) else miou[i])
        ax_miou.annotate(f"best {miou[best]:.2f} @ {es[best]}", (es[best], miou[best]), textcoords="offset points",
                         xytext=(0, 8), ha="center", fontsize=8)
        top = max([m for m in miou if not math.isnan(m)] or [1.0])
        ax_miou.set_ylim(0, min(100.0, top * 1.15 + 1))  # from zero: small gains are not exaggerated
    else:
        ax_miou.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax_miou.transAxes)
    ax_miou.set_ylabel("val mIoU (%)")
    ax_miou.set_xlabel("step")
    ax_miou.grid(alpha=0.3)
    fig.suptitle(title or Path(run_dir).name)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def per_class(names: Sequence[str], iou: Sequence[float] | None) -> dict[str, float | None] | None:
    """``{class: IoU}`` (None where the class was absent from labels and predictions)."""
    if iou is None:
        return None
    return {str(n): (None if v is None or math.isnan(_num(v)) else float(v)) for n, v in zip(names, iou)}


def add_per_class(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Add ``per_class_iou`` (final evaluation) and ``best_per_class_iou`` (evaluation at best_step)."""
    names = summary.get("classes") or []
    summary["per_class_iou"] = per_class(names, summary.get("final_iou"))
    best_step = summary.get("best_step")
    best = next((r for r in reversed(read_metrics(run_dir)) if r.get("type") == "eval" and r.get("step") == best_step),
                None)
    summary["best_per_class_iou"] = per_class(names, best.get("iou")) if best else None
    return summary


def per_class_table(summary: dict[str, Any]) -> str:
    """Class | final IoU | best IoU, in percent; empty when the run has no evaluation."""
    final, best = summary.get("per_class_iou"), summary.get("best_per_class_iou")
    if not final and not best:
        return ""
    names = list((final or best).keys())
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    head = ["class", "final"] + (["best"] if best else [])
    body = [[n, pct((final or {}).get(n))] + ([pct(best.get(n))] if best else []) for n in names]
    text = text_table(head, body, align="lrr", rule=False)
    return text.replace("\n", f"  (best = step {summary.get('best_step')})\n", 1) if best else text


def finish_run_report(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """At the end of every run: per-class IoU into the summary and ``curves.png`` next to it."""
    add_per_class(run_dir, summary)
    try:
        path = write_curves(run_dir, title=f"{summary.get('name')} ({summary.get('model')}, {summary.get('method')})")
    except Exception as exc:  # a plotting failure must not lose a finished run's summary
        summary["curves_error"] = f"{type(exc).__name__}: {exc}"
        path = None
    summary["curves"] = str(path) if path else None
    return summary


def exclude_from_eta(bar, seconds: float) -> None:
    """Shift a tqdm bar's clock so ``seconds`` spent outside training (evaluation) do not count in its rate/ETA."""
    if bar is not None and seconds > 0:
        bar.start_t += seconds
        bar.last_print_t += seconds


# ------------------------------------------------------------------------------------------------
# apd-edge runs
# ------------------------------------------------------------------------------------------------


def list_runs(output_dir: str | Path = "runs") -> list[dict[str, Any]]:
    """One row per run folder under ``output_dir`` (finished: summary.json; unfinished: metrics.jsonl)."""
    root = Path(output_dir)
    rows = []
    if not root.is_dir():
        return rows
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        summary_path = d / "summary.json"
        if not summary_path.is_file() and not (d / "metrics.jsonl").is_file():
            continue
        row: dict[str, Any] = {"name": d.name, "run_dir": str(d)}
        records = read_metrics(d)
        evals = [r for r in records if r.get("type") == "eval"]
        steps = [r.get("step", 0) for r in records]
        if summary_path.is_file():
            try:
                s = json.loads(summary_path.read_text())
            except json.JSONDecodeError:
                s = {}
            row.update(model=s.get("model"), method=s.get("method"), dataset=s.get("dataset"), steps=s.get("steps"),
                       iterations=s.get("iterations"), best_miou=s.get("best_miou"), best_step=s.get("best_step"),
                       final_miou=s.get("final_miou"), wall_time_s=s.get("wall_time_s"), status="done")
        else:
            recipe = {}
            if (d / "recipe.yaml").is_file():
                import yaml

                recipe = yaml.safe_load((d / "recipe.yaml").read_text()) or {}
            best = max(evals, key=lambda r: _num(r.get("miou")), default=None)
            row.update(model=(recipe.get("model") or {}).get("name"),
                       method=(recipe.get("distill") or {}).get("method"),
                       dataset=(recipe.get("data") or {}).get("dataset"), steps=max(steps, default=0),
                       iterations=(recipe.get("train") or {}).get("iterations"),
                       best_miou=_num(best["miou"]) if best else None, best_step=best["step"] if best else None,
                       final_miou=_num(evals[-1]["miou"]) if evals else None, wall_time_s=None,
                       status="unfinished")
        row["modified"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.stat().st_mtime))
        rows.append(row)
    return rows


def runs_table(rows: list[dict[str, Any]]) -> str:
    pct = lambda v: "-" if v is None or math.isnan(_num(v)) else f"{100 * _num(v):.2f}"  # noqa: E731
    head = ("run", "model", "method", "dataset", "steps", "best mIoU", "at step", "final mIoU", "status", "modified")
    table = [head] + [
        (r["name"], str(r.get("model") or "-"), str(r.get("method") or "-"), str(r.get("dataset") or "-"),
         f"{r.get('steps') or 0}/{r.get('iterations') or '?'}", pct(r.get("best_miou")), str(r.get("best_step") or "-"),
         pct(r.get("final_miou")), r["status"], r["modified"])
        for r in rows
    ]
    return text_table(table[0], table[1:])
