"""The quick start: train a tiny teacher on synthetic data, distill a student with APD, evaluate both.

Uses the packaged recipes ``quickstart_teacher`` and ``quickstart`` (``recipes/`` in the source tree); each run
gets a fresh folder (``name``, ``name-2``, ...) under ``out`` so the command can be repeated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..checkpoint import checkpoint_file
from ..config import Recipe, load_recipe
from ..recipebook import packaged_recipe
from ..tables import text_table


def _recipe(name: str, overrides: list[str]) -> Recipe:
    # the packaged copy, whatever the working folder holds: a wheel install runs the quick start anywhere
    return load_recipe(packaged_recipe(name), overrides)


def _free_name(out: Path, name: str) -> str:
    cand, i = name, 1
    while (out / cand / "last.pt").exists():
        i += 1
        cand = f"{name}-{i}"
    return cand


def _fast_overrides(recipe: Recipe) -> list[str]:
    it = max(20, recipe.train.iterations // 4)
    return [f"train.iterations={it}", f"train.eval_interval={it}", f"train.ckpt_interval={it}",
            f"train.warmup_iters={min(recipe.train.warmup_iters, it // 4)}"]


def run_quickstart(out: str | Path = "runs", fast: bool = False, progress: bool = True) -> dict[str, Any]:
    """Teacher training, APD distillation and evaluation. Returns the numbers of the final table."""
    from .trainer import train

    out = Path(out)
    t0 = time.perf_counter()
    base = [f"output_dir={out}"]
    t_rec = _recipe("quickstart_teacher", base)
    extra = _fast_overrides(t_rec) if fast else []
    t_rec = _recipe("quickstart_teacher", base + extra + [f"name={_free_name(out, t_rec.name)}"])
    t_dir = train(t_rec, progress=progress)
    t_ckpt = checkpoint_file(t_dir)
    t_time = time.perf_counter() - t0

    s_rec = _recipe("quickstart", base + [f"teacher.checkpoint={t_ckpt}"])
    extra = _fast_overrides(s_rec) if fast else []
    s_rec = _recipe("quickstart", base + extra + [f"teacher.checkpoint={t_ckpt}",
                                                       f"name={_free_name(out, s_rec.name)}"])
    s_dir = train(s_rec, distill=True, progress=progress)
    s_time = time.perf_counter() - t0 - t_time

    # each run ends with a validation pass on the full val split: reuse it instead of evaluating again
    t_sum = json.loads((t_dir / "summary.json").read_text())
    s_sum = json.loads((s_dir / "summary.json").read_text())
    return {
        "teacher": {"run": str(t_dir), "model": t_rec.model.name, "miou": float(t_sum["final_miou"]),
                    "params": int(t_sum["params"]), "seconds": t_time},
        "student": {"run": str(s_dir), "model": s_rec.model.name, "miou": float(s_sum["final_miou"]),
                    "params": int(s_sum["params"]), "seconds": s_time, "method": s_rec.distill.method},
        "wall_time_s": time.perf_counter() - t0,
    }


def format_table(res: dict[str, Any]) -> str:
    t, s = res["teacher"], res["student"]
    rows = [("", "model", "mIoU %", "params", "train s"),
            ("teacher", t["model"], f"{100 * t['miou']:.2f}", f"{t['params'] / 1e6:.3f} M", f"{t['seconds']:.0f}"),
            (f"student ({s['method']})", s["model"], f"{100 * s['miou']:.2f}", f"{s['params'] / 1e6:.3f} M",
             f"{s['seconds']:.0f}")]
    return (text_table(rows[0], rows[1:], align="llrrr")
            + f"\ntotal {res['wall_time_s']:.0f} s; runs: {t['run']}, {s['run']}")
