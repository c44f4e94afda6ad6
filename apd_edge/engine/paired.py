"""Statistics and report of a paired study (``apd-edge study report``): every number is computed.

For each student and each baseline method m, the per-seed paired difference d_s = mIoU(ref, s) -
mIoU(m, s) (same seed: same initial weights, batches and augmentations) gives the mean difference, its
standard deviation over seeds and a 95 % confidence interval mean +- t(0.975, n-1) * sd / sqrt(n). The
verdict is read off the interval: above 0, below 0, or containing 0. mIoU is the val mIoU at the final
step (no checkpoint is picked on val).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..tables import markdown_table
from .report import read_metrics

# ------------------------------------------------------------------------------------------------
# Student t
# ------------------------------------------------------------------------------------------------


def _t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom, via the regularized incomplete beta."""
    if x == 0:
        return 0.5
    z = df / (df + x * x)
    tail = 0.5 * _betainc(df / 2.0, 0.5, z)
    return 1.0 - tail if x > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Numerical Recipes' betacf scheme)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1.0 - x)
    front = math.exp(ln)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (bisection on the CDF; 1e-12 accurate)."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def paired_stats(diffs: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, sample sd, n and the two-sided t interval of paired differences (None where n < 2)."""
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "half_width": None, "low": None, "high": None}
    mean = sum(diffs) / n
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "half_width": None, "low": None, "high": None}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "low": mean - half, "high": mean + half}


def verdict_of(stats: dict[str, Any], ref: str, other: str) -> str:
    """One sentence read off the interval (points of mIoU)."""
    n = stats["n"]
    if n < 2:
        return f"{ref} vs {other}: not enough seeds ({n}) for an interval"
    m, h = stats["mean"], stats["half_width"]
    if stats["low"] > 0:
        return f"{ref} beats {other} by {m:+.2f} ± {h:.2f} mIoU (95 % t-interval over {n} seeds, above 0)"
    if stats["high"] < 0:
        return f"{ref} is below {other} by {m:+.2f} ± {h:.2f} mIoU (95 % t-interval over {n} seeds, below 0)"
    return (f"{ref} vs {other}: {m:+.2f} ± {h:.2f} mIoU, no difference shown "
            f"(the 95 % interval over {n} seeds contains 0)")


# ------------------------------------------------------------------------------------------------
# Collecting a study's runs
# ------------------------------------------------------------------------------------------------


def collect(plan) -> dict[str, Any]:
    """Final mIoU (x100; None while unfinished) and eval curves of every run of the plan."""
    from .study import plan_runs

    runs = {}
    for r in plan_runs(plan):
        d = Path(r.recipe.output_dir) / r.recipe.name
        summ = d / "summary.json"
        s = json.loads(summ.read_text()) if summ.is_file() else None
        done = s is not None and int(s.get("steps", 0)) >= r.recipe.train.iterations
        curve = [(int(e["step"]), 100 * float(e["miou"])) for e in read_metrics(d)
                 if e.get("type") == "eval"]
        runs[r.name] = {"student": r.student, "method": r.method, "seed": r.seed,
                        "iterations": r.recipe.train.iterations,
                        "final_miou": 100 * s["final_miou"] if done and s.get("final_miou") is not None else None,
                        "curve": curve, "wall_time_s": s.get("wall_time_s") if done else None}
    return runs


def analyse(runs: dict[str, Any], students: list[str], methods: list[str], seeds: list[int],
            reference: str = "apd") -> dict[str, Any]:
    """Per student: per-method finals, per-seed paired differences against ``reference``, stats, verdicts."""
    out: dict[str, Any] = {}
    for st in students:
        def final(m, s):
            return runs.get(f"{st}_{m}_s{s}", {}).get("final_miou")

        table = {m: {s: final(m, s) for s in seeds} for m in methods}
        means = {}
        for m in methods:
            vals = [v for v in table[m].values() if v is not None]
            means[m] = {"n": len(vals), "mean": sum(vals) / len(vals) if vals else None,
                        "sd": (math.sqrt(sum((v - sum(vals) / len(vals)) ** 2 for v in vals) / (len(vals) - 1))
                               if len(vals) > 1 else None)}
        comps = {}
        if reference in methods:
            for m in methods:
                if m == reference:
                    continue
                pairs = {s: table[reference][s] - table[m][s] for s in seeds
                         if table[reference][s] is not None and table[m][s] is not None}
                stats = paired_stats(list(pairs.values()))
                comps[m] = {"per_seed": pairs, **stats, "verdict": verdict_of(stats, reference, m)}
        out[st] = {"final": table, "methods": means, "paired": comps}
    return out


def mean_curve(runs: dict[str, Any], student: str, method: str, seeds: list[int]) -> list[tuple[int, float, int]]:
    """(step, mean val mIoU over the seeds that reached it, how many seeds) for every evaluated step."""
    by_step: dict[int, list[float]] = {}
    for s in seeds:
        for step, v in runs.get(f"{student}_{method}_s{s}", {}).get("curve", []):
            by_step.setdefault(step, []).append(v)
    return [(k, sum(v) / len(v), len(v)) for k, v in sorted(by_step.items())]


def curve_shape(curve: list[tuple[int, float, int]]) -> dict[str, Any] | None:
    """How flat the end of a learning curve is: gain per 100 steps over the first and the last interval."""
    if len(curve) < 3:
        return None
    (s0, v0, _), (s1, v1, _) = curve[0], curve[1]
    (sa, va, _), (sb, vb, _) = curve[-2], curve[-1]
    first = 100 * (v1 - v0) / (s1 - s0)
    last = 100 * (vb - va) / (sb - sa)
    return {"first_gain_per_100": first, "last_gain_per_100": last,
            "last_over_first": last / first if first > 0 else None,
            "past_steep_part": first > 0 and last <= 0.25 * first}


# ------------------------------------------------------------------------------------------------
# Report files
# ------------------------------------------------------------------------------------------------


def conditions(res: dict, gaps: dict, shapes: dict, methods: list[str], min_seeds: int = 4,
               min_gap: float = 15.0) -> dict[str, Any]:
    """The study's preconditions, each computed: enough finished seeds, teacher gap, students past the steep part."""
    checks = []
    for st, r in res.items():
        n = min((r["methods"][m]["n"] for m in methods), default=0)
        checks.append({"ok": n >= min_seeds, "what": f"{st}: {n} finished seeds for every method (need {min_seeds})"})
        g = gaps.get(st, {}).get("gap")
        checks.append({"ok": g is not None and g >= min_gap,
                       "what": f"{st}: teacher - none = {_fmt(g)} mIoU (need >= {min_gap:g})"})
        sh = shapes.get(st, {}).get("none")
        checks.append({"ok": bool(sh and sh["past_steep_part"]),
                       "what": f"{st}: `none` learning curve past its steep part (last eval interval gains <= 1/4 of "
                               f"the first: " + (f"{sh['last_gain_per_100']:+.2f} vs {sh['first_gain_per_100']:+.2f} "
                                                 f"per 100 steps)" if sh else "not enough evaluations yet)")})
    return {"ok": bool(checks) and all(c["ok"] for c in checks), "checks": checks}


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _teacher(plan) -> dict[str, Any] | None:
    from .study import teacher_recipe

    r = teacher_recipe(plan)
    if r is None:
        return None
    d = Path(r.output_dir) / r.name
    evals = [e for e in read_metrics(d) if e.get("type") == "eval"]
    summ = d / "summary.json"
    s = json.loads(summ.read_text()) if summ.is_file() else {}
    final = evals[-1] if evals else None
    return {"run_dir": str(d), "model": r.model.name, "kwargs": dict(r.model.kwargs), "iterations": r.train.iterations,
            "steps": final["step"] if final else 0, "final_miou": 100 * final["miou"] if final else None,
            "finished": bool(s) and int(s.get("steps", 0)) >= r.train.iterations, "wall_time_s": s.get("wall_time_s"),
            "curve": [(int(e["step"]), 100 * float(e["miou"])) for e in evals]}


def _speedup(plan) -> dict[str, Any]:
    """From the study record: wall time per stream, teacher time, and the cost of the same runs trained apart."""
    from .study import read_record

    rec = read_record(plan.output_dir)
    out = {}
    for label, s in rec.get("streams", {}).items():
        n_teach = len(s.get("teacher_runs", []))
        apart = sum(s["run_s"].values()) + s["teacher_s"] * n_teach
        shared = sum(s["run_s"].values()) + s["teacher_s"]
        out[label] = {"wall_s": s["wall_s"], "teacher_s": s["teacher_s"], "runs_s": sum(s["run_s"].values()),
                      "runs": len(s["run_s"]), "distilling_runs": n_teach, "steps": s["steps"],
                      "estimated_apart_s": apart, "compute_shared_s": shared,
                      "estimated_speedup": apart / shared if shared else None}
    return out


def write_report(plan, out_dir: str | Path, name: str | None = None, reference: str = "apd",
                 header: str | None = None, speedup_json: str | Path | None = None) -> list[Path]:
    """Write NAME.md, NAME.json, NAME.png (learning curves) and NAME_plan.yaml; returns their paths."""
    import dataclasses

    import yaml

    from .study import plan_runs, teacher_command, user_command

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or plan.name
    runs = collect(plan)
    students = list(dict.fromkeys(r["student"] for r in runs.values()))
    res = analyse(runs, students, plan.methods, plan.seeds, reference)
    teacher = _teacher(plan)
    curves = {st: {m: mean_curve(runs, st, m, plan.seeds) for m in plan.methods} for st in students}
    shapes = {st: {m: curve_shape(c) for m, c in cs.items()} for st, cs in curves.items()}
    speed = _speedup(plan)
    measured = None
    if speedup_json and Path(speedup_json).is_file():
        measured = json.loads(Path(speedup_json).read_text())
    gaps = {}
    for st in students:
        none = res[st]["methods"].get("none", {}).get("mean")
        t = teacher["final_miou"] if teacher else None
        gaps[st] = {"teacher": t, "none": none, "gap": (t - none) if t is not None and none is not None else None}

    lines = [f"# Paired, teacher-shared study: {name}", ""]
    if header:
        lines += [header.rstrip(), ""]
    n_done = sum(r["final_miou"] is not None for r in runs.values())
    lines += [f"**Runs finished: {n_done} of {len(runs)}.** Every number below is computed by "
              f"`apd-edge study report` from the run folders; unfinished runs are left out (–).", ""]
    conds = conditions(res, gaps, shapes, plan.methods, min_seeds=4, min_gap=15.0)
    if teacher is not None:
        conds["checks"].insert(0, {"ok": bool(teacher["finished"]),
                                   "what": "teacher trained to the end "
                                           f"({teacher['steps']} of {teacher['iterations']} steps)"})
        conds["ok"] = conds["ok"] and bool(teacher["finished"])
    lines += ["## Can this study conclude?", ""]
    for c in conds["checks"]:
        lines.append(f"- {'yes' if c['ok'] else 'NO'}: {c['what']}")
    lines += ["", "**The verdict below is " + ("conclusive at this scale.**" if conds["ok"] else
                                               "not conclusive yet (a condition above fails).**"), ""]
    lines += ["## Verdict", ""]
    for st in students:
        for m, c in res[st]["paired"].items():
            lines.append(f"- **{st}**: {c['verdict']}")
    lines += [""]
    if teacher:
        lines += ["## Teacher gap", "",
                  f"Teacher `{teacher['model']}` {teacher['kwargs']}: val mIoU {_fmt(teacher['final_miou'])} at step "
                  f"{teacher['steps']} of {teacher['iterations']}"
                  + (f" ({teacher['wall_time_s'] / 60:.1f} min)" if teacher.get("wall_time_s") else "") + ".", ""]
        ok = lambda gap: "–" if gap is None else ("yes" if gap >= 15 else "no")  # noqa: E731
        lines += [markdown_table(("student", "teacher", "none (mean over seeds)", "gap", ">= 15"),
                                 [(st, _fmt(g["teacher"]), _fmt(g["none"]), _fmt(g["gap"]), ok(g["gap"]))
                                  for st, g in gaps.items()]), ""]
    for st in students:
        seeds = [f"seed {s}" for s in plan.seeds]
        final, methods = res[st]["final"], res[st]["methods"]
        lines += [f"## {st}", "", "Final val mIoU per seed:", "",
                  markdown_table(["method", *seeds, "mean", "sd"],
                                 [[m, *(_fmt(final[m][s]) for s in plan.seeds), f"**{_fmt(methods[m]['mean'])}**",
                                   _fmt(methods[m]["sd"])] for m in plan.methods])]
        if res[st]["paired"]:
            iv = lambda c: f"[{_fmt(c['low'], True)}, {_fmt(c['high'], True)}]" if c["low"] is not None else "–"  # noqa: E731
            lines += ["", f"Paired differences {reference} − method, per seed, and their 95 % t-interval:", "",
                      markdown_table(["method", *seeds, "mean", "sd", "95 % interval"],
                                     [[m, *(_fmt(c["per_seed"].get(s), True) for s in plan.seeds),
                                       f"**{_fmt(c['mean'], True)}**", _fmt(c["sd"]), iv(c)]
                                      for m, c in res[st]["paired"].items()])]
        lines += ["", "Learning curve (mean val mIoU over the seeds that reached each step; gain per 100 steps "
                      "over the first and last eval interval):", ""]
        for m in plan.methods:
            c, sh = curves[st][m], shapes[st][m]
            pts = ", ".join(f"{s}: {v:.2f}" + (f" (n={k})" if k != len(plan.seeds) else "") for s, v, k in c) or "–"
            tail = (f"; first {sh['first_gain_per_100']:+.2f}, last {sh['last_gain_per_100']:+.2f} per 100 steps"
                    f" ({'past the steep part' if sh['past_steep_part'] else 'still rising steeply'})") if sh else ""
            lines.append(f"- `{m}`: {pts}{tail}")
        lines.append("")
    if speed:
        lines += ["## Wall time and teacher sharing", "",
                  markdown_table(("stream", "runs (distilling)", "steps", "wall", "teacher", "runs' own compute",
                                  "same runs apart (estimate)", "speed-up"),
                                 [(label, f"{s['runs']} ({s['distilling_runs']})", s["steps"],
                                   f"{s['wall_s'] / 60:.1f} min", f"{s['teacher_s'] / 60:.1f} min",
                                   f"{s['runs_s'] / 60:.1f} min", f"{s['estimated_apart_s'] / 60:.1f} min",
                                   f"{s['estimated_speedup']:.2f}x") for label, s in speed.items()])]
        lines += ["", "\"Apart\" adds one teacher forward per batch for every distilling run (what separate "
                      "`apd-edge distill` runs compute); wall times include whatever else ran on the machine.", ""]
    if measured:
        lines += ["Measured speed-up (`benchmarks/study_speedup.py`, same runs trained apart vs. in one study): "
                  f"**{measured.get('speedup', float('nan')):.2f}x**; command `{measured.get('command')}`.", ""]
    lines += ["## Commands", ""]
    if teacher_command(plan):
        lines += ["The teacher:", "", "```", teacher_command(plan), "```", ""]
    lines += ["Each study run equals this single run (tests/test_study.py checks it bit for bit on CPU):", "",
              "```"]
    lines += [user_command(r) for r in plan_runs(plan)]
    lines += ["```", ""]
    png = out_dir / f"{name}.png"
    if _plot(curves, teacher, png):
        lines += [f"![learning curves]({png.name})", ""]
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines))
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps({"name": name, "reference": reference, "teacher": teacher, "gaps": gaps,
                              "conditions": conds,
                              "results": res, "curves": curves, "curve_shape": shapes, "speedup": speed,
                              "measured_speedup": measured, "runs": runs,
                              "teacher_command": teacher_command(plan),
                              "commands": {r.name: user_command(r) for r in plan_runs(plan)}}, indent=1) + "\n")
    py = out_dir / f"{name}_plan.yaml"
    py.write_text(yaml.safe_dump(dataclasses.asdict(plan), sort_keys=False))
    return [p for p in (md, js, png, py) if p.is_file()]


def _plot(curves: dict, teacher: dict | None, path: Path) -> bool:
    if not any(c for cs in curves.values() for c in cs.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (st, cs) in zip(axes[0], curves.items()):
        for m, c in cs.items():
            if c:
                ax.plot([p[0] for p in c], [p[1] for p in c], marker="o", ms=3, label=m)
        if teacher and teacher.get("final_miou") is not None:
            ax.axhline(teacher["final_miou"], color="gray", ls="--", lw=1,
                       label="teacher" + ("" if teacher.get("finished") else f" (step {teacher['steps']}, unfinished)"))
        ax.set_title(f"{st}: val mIoU, mean over seeds")
        ax.set_xlabel("step")
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
