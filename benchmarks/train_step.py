"""Must-show: median training-step time of the ``none``, ``kd``, ``cwd``, ``apd``, ``skd`` and ``ifvd`` distillers.

For each student, one step = distiller forward (teacher forward under no_grad, APD's inner g_t step
included) + backward + SGD step, at the CamVid crop. Methods run round-robin (rotating the start) so
machine noise hits all alike; the first ``--warmup`` rounds are dropped. Also times APD's loss terms
alone (projectors, prototypes, KL, alignment, g_t step; forward + backward) as a vectorisation check.
Target: ``apd`` within 1.10x of ``kd``. ``skd`` and ``ifvd`` run with their holistic term (critic step
included) and without it (``skd-nohol``, ``ifvd-nohol``); every method's step time is also given as a
ratio to ``kd``, all measured in one run: ``apd_over_kd`` is the ratio of the medians and
``apd_over_kd_rounds`` the median of the per-round ratios (both methods' steps of a round ran in
the same round). One run writes the whole file (every student's row also holds the command, machine and
settings it was measured with); there is no merging of runs. The committed result:
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --threads 1 --clock process --size 192x256 --iters 4 --flops
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from apd_edge.bench.machine import describe, machine_info
from apd_edge.config import recipe_from_dict
from apd_edge.distill import build_distiller
from apd_edge.distill.base import Distiller
from apd_edge.distill.kd import pixel_kd_loss
from apd_edge.models import build_model

REPO = Path(__file__).resolve().parents[1]
ALL_METHODS = ("none", "kd", "cwd", "apd", "skd", "skd-nohol", "ifvd", "ifvd-nohol")
METHODS = ALL_METHODS  # the ones timed in this run (--methods)


def method_recipe(method: str, student: str) -> dict:
    """``skd-nohol`` = skd with ``distill.skd.holistic.enabled: false`` (likewise ifvd)."""
    base, _, variant = method.partition("-")
    distill: dict = {"method": base}
    if variant == "nohol":
        distill[base] = {"holistic": {"enabled": False}}
    return {"distill": distill, "model": {"name": student}}


TARGET = 1.10


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fake_batch(batch: int, size: tuple[int, int], classes: int, device: torch.device):
    """Normalised-looking images and blocky labels (regions of 32 x 32 px) with a few ignore pixels."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=g)
    coarse = torch.randint(0, classes, (batch, 1, size[0] // 32, size[1] // 32), generator=g).float()
    labels = F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()
    labels[:, :4] = 255
    return images.to(device), labels.to(device)


CLOCK = time.perf_counter  # --clock process: CPU time of this process (robust on a shared machine)


def step(d: Distiller, opt: torch.optim.Optimizer, images, labels, device) -> float:
    sync(device)
    t0 = CLOCK()
    loss = d(images, labels)
    opt.zero_grad(set_to_none=True)
    loss.total.backward()
    opt.step()
    sync(device)
    return CLOCK() - t0


def count_flops(d: Distiller, opt, images, labels) -> float | None:
    """Matmul/conv FLOPs of one training step (forward + backward), by torch's FlopCounterMode.

    None where FlopCounterMode cannot follow the step: the critic's gradient penalty (``skd``/``ifvd`` with
    the holistic term) calls ``autograd.grad``, which its hooks do not support (torch 2.14).
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            loss = d(images, labels)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
    except RuntimeError:
        return None
    return float(counter.get_total_flops())


def time_terms(d, images, labels, device, rounds: int, warmup: int) -> dict[str, float]:
    """APD terms alone vs the KD term alone, on fixed features / logits (forward + backward)."""
    with torch.no_grad():
        s = d.student.forward_dict(images, with_aux=False)
        t = d.teacher.forward_dict(images, with_aux=False)
    classes = s["out"].shape[1]
    feat = s["feat"].detach().requires_grad_(True)
    logits = s["out"].detach().requires_grad_(True)
    times = {"apd_terms": [], "kd_term": []}
    for r in range(warmup + rounds):
        sync(device)
        t0 = CLOCK()
        terms = d.apd_losses(feat, t["feat"], labels, classes)
        (terms["apd_pk"] + terms["apd_pa"]).backward()
        sync(device)
        t1 = CLOCK()
        pixel_kd_loss(logits, t["out"], labels.shape[-2:], 1.0).backward()
        sync(device)
        t2 = CLOCK()
        if r >= warmup:
            times["apd_terms"].append(t1 - t0)
            times["kd_term"].append(t2 - t1)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_student(name: str, teacher, args, device, size) -> dict:
    torch.manual_seed(0)
    student = build_model(name, args.classes).to(device)
    images, labels = fake_batch(args.batch, size, args.classes, device)
    runs = {}
    for m in METHODS:
        recipe = recipe_from_dict(method_recipe(m, name))
        d = build_distiller(student, teacher if m != "none" else None, recipe).to(device).train()
        opt = torch.optim.SGD(d.param_groups(1e-4, 10.0), lr=1e-4, momentum=0.9)
        runs[m] = (d, opt)
    times = {m: [] for m in METHODS}
    for r in range(args.warmup + args.iters):
        order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
        for m in order:
            dt = step(*runs[m], images, labels, device)
            if r >= args.warmup:
                times[m].append(dt)
        if args.verbose:
            print(f"  round {r}: " + ", ".join(f"{m} {times[m][-1] * 1e3:.0f} ms" for m in METHODS if times[m]),
                  flush=True)
    med = {m: statistics.median(v) for m, v in times.items()} if args.iters else {}
    res: dict = {}
    if med:
        res.update({"median_s": med, "all_s": times,
                    "terms_s": time_terms(runs["apd"][0], images, labels, device, args.iters, 1),
                    "ratio_to_none": {m: med[m] / med["none"] for m in METHODS},
                    "ratio_to_kd": {m: med[m] / med["kd"] for m in METHODS},
                    "apd_over_kd": med["apd"] / med["kd"],
                    "apd_over_kd_rounds": statistics.median(a / k for a, k in zip(times["apd"], times["kd"]))})
        res["verdict"] = "ok" if res["apd_over_kd"] <= TARGET else f"over {TARGET}x"
    if args.flops:
        flops = {m: count_flops(*runs[m], images, labels) for m in METHODS}
        res.update({"gflops": {m: None if v is None else v / 1e9 for m, v in flops.items()},
                    "flops_apd_over_kd": flops["apd"] / flops["kd"],
                    "flops_ratio_to_kd": {m: None if v is None else v / flops["kd"] for m, v in flops.items()}})
    return res


def render(doc: dict) -> str:
    """The .md next to the JSON: command, machine, settings, and per student every method's step and ratio."""
    methods = doc["methods"]
    lines = [
        "# Training-step time of every distiller, as a ratio to `kd`",
        "",
        f"Command (from the repo root): `{doc['command']}`; {doc['date']}.",
        f"Machine: {doc['machine']}; torch {doc['torch']}, {doc['threads']} thread(s), clock `{doc['clock']}` "
        f"(process: this process's CPU time, robust to other jobs), load average {doc['loadavg_end'][0]:.1f} "
        "at the end.",
        f"Settings: teacher `{doc['teacher']}` (output stride {doc['teacher_stride']}, random weights), input "
        f"{doc['batch']}x3x{doc['size'][0]}x{doc['size'][1]}, {doc['classes']} classes, {doc['warmup']} warm-up "
        f"round(s) dropped, median of {doc['iters']} rounds; each round runs every method once, the start "
        "rotating. `-nohol` = the method without its holistic (critic) term. `apd/kd` = ratio of the medians; "
        f"`per round` = median of the rounds' apd/kd ratios. Target: apd/kd <= {doc['target_apd_over_kd']}.",
        "",
        "| student | " + " | ".join(f"{m} ms (/kd)" for m in methods)
        + " | apd/kd | per round | FLOPs apd/kd | verdict |",
        "|---|" + "---|" * (len(methods) + 4),
    ]
    for name, r in doc["students"].items():
        med, ratio = r["median_s"], r["ratio_to_kd"]
        flops = f"{r['flops_apd_over_kd']:.3f}" if "flops_apd_over_kd" in r else "n/a"
        lines.append(f"| {name} | " + " | ".join(f"{med[m] * 1e3:.0f} ({ratio[m]:.2f})" for m in methods)
                     + f" | {r['apd_over_kd']:.3f} | {r['apd_over_kd_rounds']:.3f} | {flops} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", default="bisenetv2,espnet,mobilenetv2")
    ap.add_argument("--teacher", default="pspnet_r18")
    ap.add_argument("--teacher-stride", type=int, default=8, choices=(8, 16), help="the teacher's output_stride")
    ap.add_argument("--size", default="352x480", help="H x W, multiples of 32 (CamVid 360x480 -> 352x480)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--iters", type=int, default=5, help="timed rounds (each runs every method once)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall: perf_counter; process: this process's CPU time "
                         "(use with --threads 1 on a busy machine)")
    ap.add_argument("--flops", action="store_true", help="also count matmul/conv FLOPs of one step per method")
    ap.add_argument("--methods", default=",".join(ALL_METHODS),
                    help="comma-separated subset of " + ",".join(ALL_METHODS) + " (none, kd and apd are always timed)")
    ap.add_argument("--verbose", action="store_true", help="print every timed round")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_step.json"))
    ap.add_argument("--render", action="store_true", help="only write the .md next to --out from the JSON")
    args = ap.parse_args()
    if args.render:
        out = Path(args.out)
        out.with_suffix(".md").write_text(render(json.loads(out.read_text())))
        return
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if len(size) != 2 or any(v % 32 for v in size):
        raise SystemExit(f"error: --size {args.size}: expected HxW, multiples of 32")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    global CLOCK, METHODS
    chosen = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(chosen) - set(ALL_METHODS))
    if unknown:
        raise SystemExit(f"error: --methods: unknown {', '.join(unknown)} (choose from {', '.join(ALL_METHODS)})")
    METHODS = tuple(m for m in ALL_METHODS if m in chosen or m in ("none", "kd", "apd"))
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter

    teacher = build_model(args.teacher, args.classes, output_stride=args.teacher_stride).to(device)
    out = Path(args.out).resolve()
    shown = {**vars(args), "out": os.path.relpath(out, REPO) if out.is_relative_to(REPO) else str(out)}
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python benchmarks/train_step.py "
               + " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in shown.items()
                          if k != "verbose" and v is not False))
    info = machine_info()
    settings = {"teacher": args.teacher, "teacher_stride": args.teacher_stride, "size": list(size),
                "batch": args.batch, "classes": args.classes, "iters": args.iters, "warmup": args.warmup,
                "device": str(device), "clock": args.clock, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "machine": describe(info),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": sys.version.split()[0]}
    results = {}
    for name in [s for s in args.students.split(",") if s]:
        print(f"timing {name} ...", flush=True)
        row = bench_student(name, teacher, args, device, size)
        results[name] = {"command": command, "settings": {**settings, "loadavg": list(os.getloadavg())}, **row}

    report = {"command": command, **settings, "machine_info": info, "loadavg_end": list(os.getloadavg()),
              "methods": list(METHODS), "target_apd_over_kd": TARGET, "students": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(report))
    results = report["students"]

    if args.flops:
        print(f"\nGFLOPs per train step (matmul/conv, forward + backward), {args.batch}x3x{size[0]}x{size[1]}")
        print(f"{'student':<12}" + "".join(f"{m:>10}" for m in METHODS) + f"{'apd/kd':>8}")
        for name, r in results.items():
            if "gflops" in r:
                print(f"{name:<12}" + "".join("n/a".rjust(10) if r["gflops"][m] is None else f"{r['gflops'][m]:>10.1f}"
                                              for m in METHODS) + f"{r['flops_apd_over_kd']:>8.3f}")
    if not args.iters:
        print(f"wrote {out}")
        return
    core = [m for m in ("none", "kd", "cwd", "apd") if m in METHODS]
    print(f"\nmedian train step, {args.batch}x3x{size[0]}x{size[1]}, teacher {args.teacher}, {device}, "
          f"{torch.get_num_threads()} threads, {args.iters} rounds")
    head = f"{'student':<12}" + "".join(f"{m + ' ms':>10}" for m in core) + "".join(
        f"{m + '/none':>10}" for m in core[1:]) + f"{'apd/kd':>8}{'rounds':>8}{'terms ms':>10}{'kd ms':>8}  verdict"
    print(head)
    for name, r in results.items():
        if "median_s" not in r:
            continue
        med, ratio = r["median_s"], r["ratio_to_none"]
        verdict = r["verdict"]
        print(f"{name:<12}" + "".join(f"{med[m] * 1e3:>10.0f}" for m in core)
              + "".join(f"{ratio[m]:>10.2f}" for m in core[1:])
              + f"{r['apd_over_kd']:>8.3f}{r['apd_over_kd_rounds']:>8.3f}"
                f"{r['terms_s']['apd_terms'] * 1e3:>10.1f}{r['terms_s']['kd_term'] * 1e3:>8.1f}  {verdict}")
    print("\nevery method: median step and its ratio to kd's (same run; -nohol = holistic term off)")
    print(f"{'student':<12}{'method':<12}{'ms':>8}{'/kd':>8}")
    for name, r in results.items():
        for m in r.get("ratio_to_kd", {}):
            print(f"{name:<12}{m:<12}{r['median_s'][m] * 1e3:>8.0f}{r['ratio_to_kd'][m]:>8.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
