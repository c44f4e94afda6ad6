"""Must-show (issue 13): kill a training with SIGKILL at random moments, resume it each time, and check that
its final weights equal an uninterrupted run's bit for bit.

Tiny synthetic data and a tiny ESPNet on the CPU (``data.workers: 0``, one thread: the bit-exact resume
setting). The reference and the killed run are real ``apd-edge train`` processes. A quarter of the kills
land at a random time in start-up, the others after a random number of further steps plus a random
fraction of a step, so some fall into a step, some into logging or a checkpoint write (counted from the
``.last.pt.*.tmp`` files the next start cleans up). Steps lost per kill = the last
step logged (``log_interval: 1``) minus the step of the checkpoint the resume continues from.
Results: ``benchmarks/results/fault_injection.{md,json}`` (command, machine, settings, every kill, verdict).

    python benchmarks/fault_injection.py [--kills 20] [--iterations 120] [--seed 0] [--time-limit 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def recipe(out: Path, iterations: int, ckpt_interval: int) -> dict:
    return {
        "name": "ref", "seed": 7, "output_dir": str(out / "runs"),
        "model": {"name": "espnet", "kwargs": {"alpha2": 1, "alpha3": 1}},
        "data": {"dataset": "synthetic", "workers": 0, "options": {"num_train": 24, "num_val": 4, "size": [64, 96]},
                 "augment": {"scale": [0.75, 1.25]}},
        "train": {"iterations": iterations, "batch_size": 4, "crop": [64, 64], "lr": 0.02, "warmup_iters": 5,
                  "log_interval": 1, "eval_interval": max(iterations // 4, 1), "ckpt_interval": ckpt_interval,
                  "device": "cpu", "sync_bn": False},
        "eval": {"batch_size": 2},
    }


def command(recipe_file: Path, name: str, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "apd_edge.cli.main", "train", str(recipe_file), "-q", "--set", f"name={name}"]
    return cmd + (["--resume"] if resume else [])


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ckpt_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def last_logged_step(run: Path) -> int:
    steps = [0]
    p = run / "metrics.jsonl"
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError):
                pass  # a half-written last line
    return max(steps)


def compare(a: Path, b: Path) -> dict:
    """Bitwise comparison of model weights, optimizer state and step of two checkpoints."""
    ca = torch.load(a, map_location="cpu", weights_only=True)
    cb = torch.load(b, map_location="cpu", weights_only=True)
    model_equal = ca["model"].keys() == cb["model"].keys() and all(
        torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    max_diff = max(float((ca["model"][k].double() - cb["model"][k].double()).abs().max())
                   for k in ca["model"] if ca["model"][k].is_floating_point())
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    opt_equal = sa.keys() == sb.keys() and all(
        all(torch.equal(sa[i][k], sb[i][k]) if torch.is_tensor(sa[i][k]) else sa[i][k] == sb[i][k] for k in sa[i])
        for i in sa)
    return {"model_equal": model_equal, "optimizer_equal": opt_equal, "max_abs_weight_diff": max_diff,
            "steps": [ca["step"], cb["step"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (>= 20 for the must-show)")
    ap.add_argument("--iterations", type=int, default=120)
    ap.add_argument("--ckpt-interval", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--time-limit", type=float, default=1200.0, help="seconds for the whole experiment")
    ap.add_argument("--work", type=Path, default=Path("/tmp/apd_fault_injection"))
    ap.add_argument("--out", type=Path, default=RESULTS / "fault_injection")
    args = ap.parse_args()
    t_begin = time.monotonic()
    rng = random.Random(args.seed)

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    rfile = args.work / "recipe.yaml"
    rfile.write_text(yaml.safe_dump(recipe(args.work, args.iterations, args.ckpt_interval)))

    # 1. the uninterrupted reference
    t0 = time.monotonic()
    subprocess.run(command(rfile, "ref", False), env=env(), check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    ref_wall = time.monotonic() - t0
    run = args.work / "runs" / "faulty"

    # 2. the same run, killed at random moments and resumed each time. A quarter of the kills land at a random
    # time in start-up (imports, data, model, resume); the others once the process has trained a random 1..8
    # more steps, plus a random fraction of a step, so they fall inside steps, logging and checkpoint writes.
    kills: list[dict] = []
    lives = 0
    done = False
    while not done:
        if time.monotonic() - t_begin > args.time_limit:
            print("time limit reached", file=sys.stderr)
            break
        resume = (run / "last.pt").is_file()
        before = ckpt_step(run / "last.pt") or 0
        # metrics.jsonl may still hold steps past the checkpoint (the new process truncates them at start-up)
        stale_logged = last_logged_step(run)
        tmp_before = set(run.glob(".*.tmp")) if run.is_dir() else set()
        lives += 1
        t_life = time.monotonic()
        proc = subprocess.Popen(command(rfile, "faulty", resume), env=env(), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if len(kills) < args.kills:
            if rng.random() < 0.25:
                phase, target = "start-up", None
                deadline = t_life + rng.uniform(0.2, 4.0)
            else:
                phase, target = "training", max(before, stale_logged) + rng.randint(1, 8)
                deadline = None
            step_s = 0.0
            while proc.poll() is None:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if target is not None and last_logged_step(run) >= target:
                    step_s = rng.uniform(0.0, 0.3)
                    time.sleep(step_s)
                    break
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                logged = last_logged_step(run)
                at = ckpt_step(run / "last.pt") or 0
                in_write = sorted(p.name for p in set(run.glob(".*.tmp")) - tmp_before) if run.is_dir() else []
                kills.append({"life": lives, "phase": phase, "after_s": round(time.monotonic() - t_life, 2),
                              "resumed_from": before, "last_logged_step": logged, "checkpoint_step": at,
                              "steps_lost": max(logged - at, 0), "temp_files_left": in_write})
                print(f"kill {len(kills)} ({phase}): after {kills[-1]['after_s']} s, logged step {logged}, "
                      f"checkpoint at {at}", file=sys.stderr)
                continue
        else:
            proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"life {lives} failed (exit {proc.returncode}): {err.strip()[-2000:]}")
        done = ckpt_step(run / "last.pt") == args.iterations

    ok_kills = len(kills) >= args.kills
    cmp = compare(args.work / "runs" / "ref" / "last.pt", run / "last.pt") if done else None
    metrics_equal = None
    if done:
        def losses(r: Path) -> list:
            return [(x["step"], x["loss"]) for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
                    if x["type"] == "train"]
        metrics_equal = losses(args.work / "runs" / "ref") == losses(run)
    lost = [k["steps_lost"] for k in kills]
    verdict = bool(done and ok_kills and cmp["model_equal"] and cmp["optimizer_equal"] and metrics_equal
                   and max(lost, default=0) <= args.ckpt_interval)

    from apd_edge.bench.machine import describe, machine_info

    machine = machine_info()
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "machine": machine, "settings": {**vars(args), "work": str(args.work), "out": str(args.out),
                                          "recipe": recipe(args.work, args.iterations, args.ckpt_interval)},
        "reference_wall_s": round(ref_wall, 2), "lives": lives, "kills": kills,
        "kills_during_checkpoint_write": sum(bool(k["temp_files_left"]) for k in kills),
        "steps_lost": {"total": sum(lost), "max": max(lost, default=0),
                       "mean": round(sum(lost) / len(lost), 2) if lost else 0},
        "finished": done, "comparison": cmp, "train_losses_equal": metrics_equal,
        "wall_s": round(time.monotonic() - t_begin, 1), "verdict": "PASS" if verdict else "FAIL",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [
        "# Fault injection: SIGKILL at random moments, resume, compare with an uninterrupted run",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {describe(machine)}  ",
        f"Settings: ESPNet (alpha2=1, alpha3=1), synthetic 64x96 data, crop 64x64, batch 4, {args.iterations} "
        f"iterations, checkpoint every {args.ckpt_interval} steps, CPU, 1 thread, data.workers 0; a quarter of the "
        f"kills at a random time (0.2-4 s) in start-up, the others after 1-8 steps beyond the last step logged "
        f"before the restart, plus 0-0.3 s "
        f"(seed {args.seed}).",
        "",
        f"- kills: {len(kills)} in {lives} process lives ({result['kills_during_checkpoint_write']} left a "
        "checkpoint temp file, i.e. fell inside a checkpoint write)",
        f"- steps lost per kill: total {sum(lost)}, max {max(lost, default=0)}, mean {result['steps_lost']['mean']} "
        f"(bound: the checkpoint interval, {args.ckpt_interval})",
        f"- finished: {done}; final weights bit-identical to the uninterrupted run: "
        f"{cmp['model_equal'] if cmp else None}; optimizer state identical: {cmp['optimizer_equal'] if cmp else None}; "
        f"max |weight difference| {cmp['max_abs_weight_diff'] if cmp else None}; per-step training losses "
        f"identical: {metrics_equal}",
        f"- wall time {result['wall_s']} s (reference run {result['reference_wall_s']} s)",
        "",
        f"**Verdict: {result['verdict']}** (>= {args.kills} kills, finished, weights and optimizer state equal, "
        "losses equal, no kill lost more than one checkpoint interval)",
        "",
        "| kill | phase | after (s) | resumed from | last logged step | checkpoint step | steps lost "
        "| temp files left |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for i, k in enumerate(kills, 1):
        lines.append(f"| {i} | {k['phase']} | {k['after_s']} | {k['resumed_from']} | {k['last_logged_step']} | "
                     f"{k['checkpoint_step']} | {k['steps_lost']} | {', '.join(k['temp_files_left']) or '-'} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:14]))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
