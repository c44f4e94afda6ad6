"""Is the data loader the bottleneck? Loader images/s vs the training rate of the smallest student.

Three measurements in one run, at the recipe's CamVid crop (352x480), batch 8, data.workers workers:
  1. loader alone: the train DataLoader (decode + scale/rotate/crop/flip/jitter + normalise) drained,
     and the same pipeline on one core (workers=0) to estimate how it scales with cores;
  2. training alone: ESPNet (build_model('espnet', 11)) forward + CE + backward + SGD on a fixed batch;
  3. both together: training fed by the loader (what a real run does), with the share of time spent
     waiting for data.
Target: loader >= 2x the training consumption rate. On a small CPU machine the workers and the training
threads share the same cores, so (3) is the honest number; (1)/(2) is the ratio the target refers to.

    OMP_NUM_THREADS=2 python benchmarks/loader_throughput.py [--root ../shared/data/camvid] [--batches 12]
        [--train-batch 2 --steps 2]   # on a busy 2-core CPU
Writes benchmarks/results/loader_throughput.json; prints a short table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from apd_edge.config import load_recipe
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
TARGET = 2.0


def loader_rate(loader, batches: int, warmup: int = 2, cpu: bool = False) -> float:
    """Images/s draining ``loader`` (re-iterating as the engine does), after ``warmup`` batches.

    ``cpu``: divide by this process's CPU time instead of wall time (meaningful with workers=0 only:
    the rate one uncontended core would give, whatever else the machine is running).
    """
    clock = time.process_time if cpu else time.perf_counter
    it, seen, t0 = iter(loader), 0, None
    for k in range(warmup + batches):
        try:
            images, _ = next(it)
        except StopIteration:
            it = iter(loader)
            images, _ = next(it)
        if k == warmup - 1:
            t0 = clock()
        elif k >= warmup:
            seen += images.shape[0]
    return seen / (clock() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(model, opt, batch, device: torch.device, steps: int, warmup: int = 1) -> tuple[float, float]:
    """Training images/s by wall time, and per CPU-second of this process (all its threads)."""
    images, labels = (t.to(device) for t in batch)
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
        out = model(images)
        logits = out["out"] if isinstance(out, dict) else out
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    n = steps * images.shape[0]
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def fed_rate(model, opt, loader, device: torch.device, steps: int, warmup: int = 1) -> tuple[float, float]:
    """Images/s of training fed by the loader, and the fraction of wall time spent waiting for batches."""
    it, wait, seen, t0 = iter(loader), 0.0, 0, None
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            t0, wait = time.perf_counter(), 0.0
        tw = time.perf_counter()
        try:
            images, labels = next(it)
        except StopIteration:
            it = iter(loader)
            images, labels = next(it)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        wait += time.perf_counter() - tw
        out = model(images)
        logits = out["out"] if isinstance(out, dict) else out
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k >= warmup:
            seen += images.shape[0]
    sync(device)
    total = time.perf_counter() - t0
    return seen / total, wait / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "espnet_camvid.yaml"))
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--dataset", default="camvid", help="camvid, or synthetic where CamVid is absent")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="default: the recipe's data.workers")
    ap.add_argument("--batches", type=int, default=12, help="measured loader batches")
    ap.add_argument("--steps", type=int, default=3, help="measured training steps")
    ap.add_argument("--train-batch", type=int, default=None,
                    help="batch of the training measurements (default --batch); on a slow CPU a smaller batch "
                         "keeps the run short (CPU images/s barely depends on the batch)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "loader_throughput.json"))
    args = ap.parse_args()
    prov = provenance()

    from apd_edge.data import build_loader
    from apd_edge.models import build_model

    sets = [f"train.batch_size={args.batch}", f"data.dataset={args.dataset}"]
    if args.dataset == "camvid":
        sets.append(f"data.root={args.root}")
    else:
        sets += ["data.root=null", "data.options={size: [360, 480], num_train: 64, num_val: 8}"]
    if args.workers is not None:
        sets.append(f"data.workers={args.workers}")
    recipe = load_recipe(args.recipe, sets)
    device = torch.device(args.device)
    crop = tuple(recipe.train.crop)

    loader = build_loader(recipe, recipe.data.train_split, train=True)
    load_ips = loader_rate(loader, args.batches)
    # one core's worth: the same pipeline in the main process (cv2 single-threaded), for scaling estimates
    import cv2

    cv2.setNumThreads(1)
    serial = load_recipe(args.recipe, sets + ["data.workers=0"])
    core_ips = loader_rate(build_loader(serial, serial.data.train_split, train=True), max(2, args.batches // 4), 1,
                           cpu=True)
    cv2.setNumThreads(-1)

    torch.manual_seed(0)
    model = build_model("espnet", 11).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    train_batch = args.train_batch or args.batch
    fed_loader = loader if train_batch == args.batch else build_loader(recipe, recipe.data.train_split, True,
                                                                       batch_size=train_batch)
    batch = next(iter(fed_loader))
    train_ips, train_cpu_ips = train_rate(model, opt, batch, device, args.steps)
    fed_ips, wait = fed_rate(model, opt, fed_loader, device, args.steps)

    ratio = load_ips / train_ips
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    result = {
        **prov, "settings": vars(args), "dataset": args.dataset, "crop": list(crop), "batch": args.batch,
        "train_batch": train_batch, "workers": recipe.data.workers,
        "device": str(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loader_images_per_s": load_ips, "loader_images_per_s_one_core": core_ips, "train_images_per_s": train_ips,
        "train_images_per_cpu_s": train_cpu_ips, "ratio": ratio, "target": TARGET,
        "verdict": verdict, "fed_train_images_per_s": fed_ips, "fed_wait_fraction": wait,
        "load_avg": os.getloadavg(),  # at the end (``loadavg``: at the start)
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"loader vs training, {args.dataset} crop {crop[0]}x{crop[1]}, batch {args.batch}, "
          f"{recipe.data.workers} workers, train on {device} ({torch.get_num_threads()} threads)")
    print(f"{'loader alone':<26} {load_ips:8.1f} img/s")
    print(f"{'loader, per CPU-second':<26} {core_ips:8.1f} img/s  ({1000 / core_ips:.1f} ms of CPU per image)")
    print(f"{'espnet training alone':<26} {train_ips:8.1f} img/s  (batch {train_batch})")
    if device.type == "cpu":
        print(f"{'espnet, per CPU-second':<26} {train_cpu_ips:8.2f} img/s  ({1000 / train_cpu_ips:.0f} ms of CPU per "
              f"image; the loader needs {100 * train_cpu_ips / core_ips:.1f}% of that)")
    print(f"{'training fed by loader':<26} {fed_ips:8.1f} img/s  (waiting for data {100 * wait:.0f}% of the time)")
    print(f"{'ratio loader/training':<26} {ratio:8.2f}x  target >= {TARGET}x: {verdict}")


if __name__ == "__main__":
    main()
