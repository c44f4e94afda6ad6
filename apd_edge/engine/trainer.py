"""The training loop shared by ``apd-edge train`` (method forced to "none") and ``apd-edge distill``.

Iteration-based: the train loader is re-iterated epoch after epoch. Every epoch starts from RNG
seeds derived from (seed, epoch, rank), and checkpoints hold every RNG state, so ``resume`` replays the
data position of the interrupted epoch and continues bit-exactly on CPU with ``data.workers: 0``. With
workers > 0 the data order is still exact but persistent workers restart their augmentation streams.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..config import Recipe, recipe_to_dict
from ..errors import ApdError
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import (DistInfo, all_reduce_mean, any_true, average_gradients, barrier, broadcast_parameters,
                          cleanup, convert_sync_bn, init_distributed)
from .report import exclude_from_eta, finish_run_report
from .run import MetricsLog, point_latest, prepare_run_dir, write_recipe, write_summary
from .schedule import WarmupPolyLR

# ------------------------------------------------------------------------------------------------
# RNG: seeding and plain-data state (numpy's state holds an ndarray, so it is converted)
# ------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 9_973 + rank * 7_919 + 17) % (2**31 - 1)


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])


class _ForkedRNG:
    """Run a block (validation) without disturbing any training RNG stream."""

    def __enter__(self):
        self.state = rng_state()

    def __exit__(self, *exc):
        set_rng_state(self.state)
        return False


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def _log(info: DistInfo) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if info.is_main:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    return log


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """None = float32. CPU always trains in float32."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise ApdError("train.amp: bf16 is not supported on this GPU (use fp16 or auto)")
        return torch.bfloat16
    return torch.float16


def _count_params(model: nn.Module) -> int:
    if hasattr(model, "num_params"):
        return int(model.num_params(inference=True))
    return sum(p.numel() for p in model.parameters())


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------


class Trainer:
    """One training run. ``fit()`` returns the run folder; construct, fit, close."""

    def __init__(self, recipe: Recipe, resume: bool = False, distill: bool = False, progress: bool = True,
                 on_step: Callable[[int], None] | None = None) -> None:
        if not distill and recipe.distill.method != "none":
            recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, method="none"))
        self.recipe = recipe
        self.resume = resume
        self.progress = progress
        self.on_step = on_step
        self.info, self.device = init_distributed(recipe.train.device)
        self.log = _log(self.info)
        try:
            self._setup()
        except BaseException:
            cleanup(self.info)
            raise

    # -- set-up ------------------------------------------------------------------------------------

    def _setup(self) -> None:
        from ..data import build_dataset, build_loader
        from ..distill.base import build_distiller
        from ..models import build_model

        r, info, device = self.recipe, self.info, self.device
        tc = r.train
        self.run_dir = prepare_run_dir(r, self.resume)
        barrier(info)
        seed_everything(r.seed)

        val_ds = build_dataset(r.data, r.data.val_split)
        self.num_classes = int(r.data.num_classes or val_ds.num_classes)
        self.class_names = list(val_ds.class_names)
        self.palette = [list(map(int, c)) for c in val_ds.palette]
        if tc.batch_size % info.world_size:
            raise ApdError(f"train.batch_size: {tc.batch_size} does not split evenly over {info.world_size} processes")
        self.batch_per_rank = tc.batch_size // info.world_size  # train.batch_size is the total batch
        self.train_loader = build_loader(r, r.data.train_split, train=True, batch_size=self.batch_per_rank,
                                         distributed=info.enabled)
        self.val_loader = build_loader(r, r.data.val_split, train=False, batch_size=r.eval.batch_size,
                                       distributed=info.enabled)
        if len(self.train_loader) == 0:
            raise ApdError(f"data: split '{r.data.train_split}' yields no batch of {self.batch_per_rank} "
                           f"(fewer images than the batch size?)")

        student = build_model(r.model.name, self.num_classes, pretrained=r.model.pretrained, **r.model.kwargs)
        if info.enabled and tc.sync_bn:
            student = convert_sync_bn(student, device, info, self.log)
        self.student = student.to(device)
        teacher = None
        if r.distill.method != "none":
            from ..distill.teacher import build_teacher

            teacher = build_teacher(r, self.num_classes).to(device)
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
        if tc.channels_last:
            self.student.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        self.distiller = build_distiller(self.student, teacher, r).to(device)

        groups = self.distiller.param_groups(tc.lr, tc.head_lr_mult)
        if tc.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay,
                                             nesterov=False)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = WarmupPolyLR(self.optimizer, tc.iterations, tc.warmup_iters, tc.warmup_ratio,
                                      tc.poly_power)
        self.amp_dtype = _amp_dtype(tc.amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.train_params = [p for g in self.optimizer.param_groups for p in g["params"]]

        # Parameters trained by the student's optimizer but outside the student (projectors): DDP does not
        # see them, so their gradients are averaged by hand after backward.
        student_ids = {id(p) for p in self.student.parameters()}
        self.extra_params = [p for p in self.train_params if id(p) not in student_ids]
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            for m in self.distiller.extra_modules():
                broadcast_parameters(m, info)
            ddp = DDP(self.student, device_ids=[device.index] if device.type == "cuda" else None)
            self.distiller.student = ddp  # the distiller calls self.student(images): now through DDP
            if hasattr(self.distiller, "set_distributed"):
                self.distiller.set_distributed(info)  # lets a distiller sync its own internal optimizers

        self.step = 0
        self.best_miou = -1.0
        self.best_step: int | None = None
        self.last_eval: dict[str, Any] | None = None
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self._resume_rng: dict[str, Any] | None = None
        if self.resume:
            self._load_resume_state()
        elif info.is_main:
            self.metrics.path.write_text("")
        if info.is_main:
            write_recipe(r, self.run_dir)
            point_latest(self.run_dir)
        barrier(info)

    def _load_resume_state(self) -> None:
        path = self.run_dir / "last.pt"
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt.get("model_name") != self.recipe.model.name:
            raise ApdError(f"--resume: {path} holds a {ckpt.get('model_name')} model, the recipe trains "
                           f"{self.recipe.model.name}")
        self.student.load_state_dict(ckpt["model"])
        if ckpt.get("distiller"):
            self._distiller_extra_modules_load(ckpt["distiller"])
        self.distiller.load_extra_state_dict(ckpt.get("distiller_extra") or {})
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as exc:
            raise ApdError(f"--resume: optimizer state in {path} does not fit this recipe ({exc})") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.best_miou = float(ckpt.get("best_miou", -1.0))
        self.best_step = ckpt.get("best_step")
        rng = ckpt.get("rng") or []
        self._resume_rng = rng[self.info.rank] if len(rng) == self.info.world_size else None
        if self.info.is_main:
            self.metrics.truncate_after(self.step)
        if self.step >= self.recipe.train.iterations:
            self.log(f"resume: {path} is at step {self.step}, train.iterations is {self.recipe.train.iterations}: "
                     f"nothing left to train (raise it with --set train.iterations=N)")
        else:
            self.log(f"resume: continuing {self.run_dir} from step {self.step}")

    def _distiller_extra_modules_load(self, state: dict) -> None:
        missing, unexpected = self.distiller.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("student.")]
        if missing or unexpected:
            raise ApdError(f"--resume: distiller state does not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")

    # -- checkpoints -------------------------------------------------------------------------------

    def _base_payload(self) -> dict[str, Any]:
        r = self.recipe
        return {
            "model_name": r.model.name,
            "model_kwargs": dict(r.model.kwargs),
            "num_classes": self.num_classes,
            "model": {k: v.detach().clone() for k, v in self.student.state_dict().items()},
            "recipe": recipe_to_dict(r),
            "step": self.step,
            "best_miou": self.best_miou,
            "best_step": self.best_step,
            "classes": self.class_names,
            "palette": self.palette,
            "mean": list(r.data.mean),
            "std": list(r.data.std),
            "method": r.distill.method,
        }

    def _gather_rng(self) -> list[dict[str, Any]]:
        local = rng_state()
        if not self.info.enabled:
            return [local]
        import torch.distributed as dist

        out: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(out, local)
        return out

    def _save_last(self) -> None:
        rng = self._gather_rng()  # collective: every rank calls it
        if not self.info.is_main:
            return
        payload = self._base_payload()
        payload.update({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "distiller": {k: v for k, v in self.distiller.state_dict().items() if not k.startswith("student.")},
            "distiller_extra": self.distiller.extra_state_dict(),
        })
        save_checkpoint(payload, self.run_dir / "last.pt")

    def _save_best(self) -> None:
        if self.info.is_main:
            save_checkpoint(self._base_payload(), self.run_dir / "best.pt")

    # -- the loop ------------------------------------------------------------------------------------

    def _epoch_iter(self, epoch: int):
        seed_everything(epoch_seed(self.recipe.seed, epoch, self.info.rank))
        loader = self.train_loader
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batch_sampler = getattr(loader, "batch_sampler", None)
        if hasattr(getattr(batch_sampler, "sampler", None), "set_epoch"):
            batch_sampler.sampler.set_epoch(epoch)
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):  # shuffle order (and worker seeds) of this epoch
            gen.manual_seed(epoch_seed(self.recipe.seed, epoch, 0))
        ds = getattr(loader, "dataset", None)
        if loader.num_workers == 0 and hasattr(ds, "_rng"):
            # in-process augmentation draws from a numpy Generator kept on the dataset wrapper: restart it
            # per epoch too, so a resumed run (a fresh wrapper) draws exactly what the original drew
            ds._rng = np.random.default_rng(epoch_seed(self.recipe.seed, epoch, self.info.rank))
        return iter(loader)

    def _validate(self) -> dict[str, Any]:
        from .evaluate import evaluate

        e = self.recipe.eval
        with _ForkedRNG():
            res = evaluate(self.student, self.val_loader, self.num_classes, flip=e.flip, scales=e.scales,
                           window=e.sliding_window, stride=e.sliding_stride,
                           progress=self.progress and self.info.is_main)
        self.student.train()
        return res

    def _nan_error(self, parts: dict[str, torch.Tensor]) -> ApdError:
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items() if k != "loss")
        last = self.run_dir / "last.pt"
        where = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was written yet"
        return ApdError(f"loss became nan at step {self.step + 1} ({shown}); {where} "
                        f"(lower train.lr or set train.grad_clip)")

    def fit(self) -> Path:
        r, tc, info, device = self.recipe, self.recipe.train, self.info, self.device
        total = tc.iterations
        t_start = time.perf_counter()
        start_step = self.step
        n_batches = len(self.train_loader)
        epoch, pos = divmod(self.step, n_batches)
        it = self._epoch_iter(epoch)
        if pos and self.step < total:
            self.log(f"resume: replaying {pos} batches of epoch {epoch} to reach the data position")
            for _ in range(pos):
                next(it)
        if pos and self._resume_rng is not None:
            # at an epoch boundary the epoch seed already fixes every stream (as in an uninterrupted run)
            set_rng_state(self._resume_rng)

        bar = None
        if self.progress and info.is_main:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc=r.name, unit="it", dynamic_ncols=True, file=sys.stderr)
        autocast = (torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        self.distiller.train()
        sums: dict[str, torch.Tensor] = {}
        n_sum = 0
        t_log = time.perf_counter()
        try:
            while self.step < total:
                try:
                    images, labels = next(it)
                except StopIteration:
                    epoch += 1
                    it = self._epoch_iter(epoch)
                    images, labels = next(it)
                images = images.to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
                labels = labels.to(device, non_blocking=True)
                with autocast:
                    out = self.distiller(images, labels)
                loss = out.total
                if any_true(not bool(torch.isfinite(loss.detach()).item()), info, device):
                    raise self._nan_error(out.parts)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                average_gradients(self.extra_params, info)
                if self.scaler is not None:
                    if tc.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.train_params, tc.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    if tc.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.train_params, tc.grad_clip)
                    self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                self.step += 1
                for k, v in out.parts.items():
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v
                n_sum += 1
                if bar is not None:
                    bar.update(1)

                if self.step % tc.log_interval == 0 or self.step == total:
                    means = all_reduce_mean({k: float(v) / n_sum for k, v in sums.items()}, info, device)
                    dt = time.perf_counter() - t_log
                    img_s = n_sum * tc.batch_size / max(dt, 1e-9)
                    rec = {"type": "train", "step": self.step, **means, "lr": lr, "img_s": img_s,
                           "time": time.perf_counter() - t_start}
                    if info.is_main:
                        self.metrics.write(rec)
                    if bar is not None:
                        post = {k: _fmt(v) for k, v in means.items()}
                        post.update(lr=_fmt(lr), img_s=f"{img_s:.1f}")
                        bar.set_postfix(post, refresh=False)
                    sums, n_sum, t_log = {}, 0, time.perf_counter()

                if self.step % tc.eval_interval == 0 or self.step == total:
                    t_eval = time.perf_counter()
                    res = self._validate()
                    exclude_from_eta(bar, time.perf_counter() - t_eval)  # the ETA is of training steps only
                    miou = float(res["miou"])
                    self.last_eval = res
                    improved = miou > self.best_miou
                    if improved:
                        self.best_miou, self.best_step = miou, self.step
                    if info.is_main:
                        self.metrics.write({"type": "eval", "step": self.step, "miou": miou,
                                            "acc": float(res["acc"]), "macc": float(res["macc"]),
                                            "iou": [float(x) for x in res["iou"]], "best_miou": self.best_miou})
                        self.log(f"step {self.step}: val mIoU {100 * miou:.2f} (best {100 * self.best_miou:.2f} "
                                 f"at step {self.best_step})")
                    if improved:
                        self._save_best()
                    t_log = time.perf_counter()  # evaluation time is not training throughput

                if self.step % tc.ckpt_interval == 0 or self.step == total:
                    self._save_last()
                if self.on_step is not None:
                    self.on_step(self.step)
        finally:
            if bar is not None:
                bar.close()

        if self.step > start_step or not (self.run_dir / "summary.json").exists():
            self._finish(time.perf_counter() - t_start)
        barrier(info)
        return self.run_dir

    def _finish(self, wall: float) -> None:
        if not self.info.is_main:
            return
        r = self.recipe
        best = self.run_dir / "best.pt"
        last = self.run_dir / "last.pt"
        final = float(self.last_eval["miou"]) if self.last_eval else None
        summary = {
            "name": r.name, "run_dir": str(self.run_dir), "model": r.model.name, "method": r.distill.method,
            "teacher": (r.teacher.name or r.teacher.factory) if r.distill.method != "none" else None,
            "dataset": r.data.dataset, "num_classes": self.num_classes, "params": _count_params(self.student),
            "steps": self.step, "iterations": r.train.iterations, "wall_time_s": wall,
            "final_miou": final, "best_miou": self.best_miou if self.best_miou >= 0 else None,
            "best_step": self.best_step,
            "final_iou": [float(x) for x in self.last_eval["iou"]] if self.last_eval else None,
            "classes": self.class_names,
            "best_checkpoint": str(best) if best.is_file() else None,
            "last_checkpoint": str(last) if last.is_file() else None,
            "world_size": self.info.world_size, "device": str(self.device),
        }
        write_summary(self.run_dir, finish_run_report(self.run_dir, summary))  # + per-class IoU, curves.png

    def close(self) -> None:
        cleanup(self.info)


def train(recipe: Recipe, resume: bool = False, distill: bool = False, progress: bool = True, *,
          on_step: Callable[[int], None] | None = None) -> Path:
    """Train (``distill=False``: method forced to "none") or distill per ``recipe``; returns the run folder.

    ``on_step(step)`` is called after every completed step (tests use it to simulate interruptions).
    """
    trainer = Trainer(recipe, resume=resume, distill=distill, progress=progress, on_step=on_step)
    try:
        return trainer.fit()
    finally:
        trainer.close()
