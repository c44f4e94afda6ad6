"""Must-show: a briefly trained ESPNet on CamVid, exported to FP32/FP16/INT8, and the INT8 mIoU drop on val.

Trains with the library pieces (recipe, build_loader, build_model, save_checkpoint) in a plain CPU loop,
then runs ``export_bundle`` (parity on all 101 val images). Usage:
    OMP_NUM_THREADS=2 python benchmarks/camvid_int8_drop.py --iters 200 [--camvid ../shared/data/camvid]
On a shared 2-core CPU this trains at reduced resolution (crops 128x160 of images scaled 0.4-0.7) and
exports at 192x256 (CamVid scaled by 0.53, same aspect), where train and eval scales match.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from apd_edge.config import recipe_from_dict, recipe_to_dict
from apd_edge.data import build_loader
from apd_edge.engine.checkpoint import save_checkpoint
from apd_edge.export.bundle import export_bundle
from apd_edge.models import build_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", default="128x160")
    ap.add_argument("--size", default="192x256", help="export input HxW (CamVid 360x480 is scaled to fit)")
    ap.add_argument("--out", default=str(REPO / "runs" / "camvid_int8_drop"))
    ap.add_argument("--calib-method", default="percentile")
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--init", help="start from this checkpoint's weights (continue a short run)")
    ap.add_argument("--minutes", type=float, default=1e9, help="stop training after this wall time")
    args = ap.parse_args()
    torch.manual_seed(0)
    crop = [int(v) for v in args.crop.split("x")]
    recipe = recipe_from_dict({
        "name": "espnet_camvid_short", "model": {"name": "espnet"},
        "data": {"dataset": "camvid", "root": args.camvid, "workers": 0, "augment": {"scale": [0.4, 0.7]}},
        "train": {"iterations": args.iters, "batch_size": args.batch, "crop": crop, "optimizer": "adamw",
                  "lr": 2e-3, "weight_decay": 5e-4},
    })
    run = Path(args.out)
    ckpt_path = run / "best.pt"
    model = build_model("espnet", 11)
    prev_step = 0
    if args.init:
        init = torch.load(args.init, map_location="cpu", weights_only=True)
        model.load_state_dict(init["model"])
        prev_step = int(init.get("step", 0))
    if args.skip_train:
        print(f"reusing {ckpt_path}")
    else:
        loader = build_loader(recipe, "train", train=True)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)
        model.train()
        it, t0 = 0, time.time()
        while it < args.iters:
            for x, y in loader:
                lr = recipe.train.lr * (1 - it / args.iters) ** 0.9
                for g in opt.param_groups:
                    g["lr"] = lr
                out = model(x)
                logits = out["out"] if isinstance(out, dict) else out
                loss = F.cross_entropy(logits, y, ignore_index=255)
                for a in (out.get("aux") or []) if isinstance(out, dict) else []:
                    loss = loss + 0.4 * F.cross_entropy(a, y, ignore_index=255)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                it += 1
                if it % 5 == 0:
                    print(f"iter {it}/{args.iters} loss {loss.item():.3f} ({(time.time() - t0) / it:.2f} s/it)", flush=True)
                if it >= args.iters or time.time() - t0 > args.minutes * 60:
                    args.iters = it
                    break
        save_checkpoint({"model_name": "espnet", "model_kwargs": {}, "num_classes": 11, "model": model.state_dict(),
                         "recipe": recipe_to_dict(recipe), "step": prev_step + it, "best_miou": 0.0}, ckpt_path)
    t0 = time.time()
    bundle = export_bundle(ckpt_path, run / "bundle", precisions=("fp32", "fp16", "int8"),
                           input_size=[int(v) for v in args.size.split("x")],
                           calib_images=args.calib_images, calib_method=args.calib_method, parity_images=101)
    m = json.loads((bundle / "manifest.json").read_text())
    res = m["parity"]["results"]
    print(f"export + parity took {time.time() - t0:.0f} s; calibration {args.calib_method}, "
          f"excluded {m['quantization']['excluded_nodes']}")
    out = REPO / "benchmarks" / "results" / f"camvid_int8_drop_{args.calib_method}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "espnet", "train_steps": m["model"]["step"], "input_size": m["preprocess"]["size"],
                               "calib_method": args.calib_method, "calib_images": args.calib_images,
                               "excluded_nodes": m["quantization"]["excluded_nodes"], "parity": res}, indent=2) + "\n")
    print(f"INT8 mIoU drop on CamVid val: {res['int8']['miou_torch'] - res['int8']['miou']:.2f} points "
          f"({res['int8']['miou_torch']:.2f} -> {res['int8']['miou']:.2f})")


if __name__ == "__main__":
    main()
