"""The training loop shared by ``apd-edge train`` (method forced to "none") and ``apd-edge distill``.

Iteration-based: the train loader is re-iterated epoch after epoch. Every epoch starts from RNG
seeds derived from (seed, epoch, rank), and checkpoints hold every RNG state, so ``resume`` replays the
data position of the interrupted epoch and continues bit-exactly on CPU with ``data.workers: 0``. With
workers > 0 the data order is still exact but persistent workers restart their augmentation streams.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..config import Recipe, recipe_to_dict
from ..errors import ApdError
from ..checkpoint import check_shapes, load_checkpoint, save_checkpoint
from .distributed import (DistInfo, all_reduce_mean, any_true, average_gradients, barrier, broadcast_parameters,
                          cleanup, convert_sync_bn, init_distributed)
from ..guard import WEIGHT_LIMIT, all_finite, describe_nonfinite, nonfinite_in, nonfinite_names
from .report import exclude_from_eta, finish_run_report
from .run import MetricsLog, open_run_dir, point_latest, write_recipe, write_summary
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


class _LossWindow:
    """Loss parts summed on their device since the last log line (one host sync per log line, not per step)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.t0 = time.perf_counter()

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += 1


class Trainer:
    """One training run. ``fit()`` returns the run folder; construct, fit, close."""

    def __init__(self, recipe: Recipe, resume: bool = False, distill: bool = False, progress: bool = True,
                 on_step: Callable[[int], None] | None = None, *, exist_ok: bool = False, increment: bool = False,
                 allow_changes: Sequence[str] = ()) -> None:
        if not distill and recipe.distill.method != "none":
            recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, method="none"))
        self.recipe = recipe
        self.resume = resume
        self.progress = progress
        self.on_step = on_step
        self.exist_ok, self.increment, self.allow_changes = exist_ok, increment, tuple(allow_changes)
        self.lock = None
        self.info, self.device = init_distributed(recipe.train.device)
        self.log = _log(self.info)
        try:
            self._setup()
        except BaseException:
            self._release()
            cleanup(self.info)
            raise

    # -- set-up ------------------------------------------------------------------------------------

    def _setup(self) -> None:
        from ..data import build_dataset, build_loader
        from ..distill.base import build_distiller
        from ..models import build_model

        info, device = self.info, self.device
        self.run_dir = self._open_run_dir()
        r = self.recipe
        tc = r.train
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

    def _open_run_dir(self) -> Path:
        """Lock (main process) and prepare the run folder; with ``increment`` the recipe takes the folder's name."""
        run_dir = None
        if self.info.is_main:
            run_dir, self.lock = open_run_dir(self.recipe, self.resume, self.exist_ok, self.increment)
        if self.info.enabled:
            import torch.distributed as dist

            box = [str(run_dir) if run_dir is not None else None]
            dist.broadcast_object_list(box, src=0)
            run_dir = Path(box[0])
        if run_dir.name != self.recipe.name:
            self.recipe = dataclasses.replace(self.recipe, name=run_dir.name)
        return run_dir

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _check_resume_recipe(self, ckpt: dict, path: Path) -> None:
        """Refuse a recipe that differs from the checkpoint's unless the change is allowed; log allowed ones."""
        from ..config import RecipeError, recipe_from_dict
        from .recipe_diff import check_resume_recipe

        stored = ckpt.get("recipe")
        if not isinstance(stored, dict):
            return
        try:
            stored = recipe_to_dict(recipe_from_dict(stored))
        except RecipeError:
            pass
        changes = check_resume_recipe(stored, recipe_to_dict(self.recipe), self.allow_changes, where=str(path))
        if changes and self.info.is_main:
            import json

            rec = {"step": int(ckpt.get("step", 0)), "changed": {k: [a, b] for k, a, b in changes}}
            with (self.run_dir / "resumes.jsonl").open("a") as f:
                f.write(json.dumps(rec, default=str) + "\n")
            self.log("resume: recipe changes accepted: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes))

    def _load_resume_state(self) -> None:
        path = self.run_dir / "last.pt"
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt.get("model_name") != self.recipe.model.name:
            raise ApdError(f"--resume: {path} holds a {ckpt.get('model_name')} model, the recipe trains "
                           f"{self.recipe.model.name}")
        self._check_resume_recipe(ckpt, path)
        check_shapes(self.student, ckpt["model"], f"--resume: {path}", self.num_classes)
        self.student.load_state_dict(ckpt["model"])
        if ckpt.get("distiller"):
            self._distiller_extra_modules_load(ckpt["distiller"])
        self.distiller.load_extra_state_dict(ckpt.get("distiller_extra") or {})
        # hyper-parameters come from the recipe (identical unless a change was allowed), moments from the checkpoint
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        fresh_lrs = list(self.scheduler.base_lrs)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as exc:
            raise ApdError(f"--resume: optimizer state in {path} does not fit this recipe ({exc})") from None
        for group, hp in zip(self.optimizer.param_groups, fresh):
            group.update(hp)
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scheduler.base_lrs = fresh_lrs
        self.scheduler._apply()  # lr = base lr x factor(step), with the recipe's base lr
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
                     "nothing left to train (extend it with --set train.iterations=N "
                     "--allow-change train.iterations)")
        else:
            self.log(f"resume: continuing {self.run_dir} from step {self.step}")

    def _distiller_extra_modules_load(self, state: dict) -> None:
        missing, unexpected = self.distiller.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("student.")]
        if missing or unexpected:
            raise ApdError("--resume: distiller state does not fit "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")

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
        self._refuse_nonfinite(payload)
        last = self.run_dir / "last.pt"
        if last.is_file():
            # keep the previous checkpoint as prev.pt (a hard link: no copy, and last.pt exists throughout),
            # so a divergence right after a checkpoint still leaves one whose weights gave a finite loss
            tmp = self.run_dir / f".prev.pt.{os.getpid()}.tmp"
            try:
                tmp.unlink(missing_ok=True)
                os.link(last, tmp)
                os.replace(tmp, self.run_dir / "prev.pt")
            except OSError:
                tmp.unlink(missing_ok=True)
        save_checkpoint(payload, last)

    def _save_best(self) -> None:
        if self.info.is_main:
            payload = self._base_payload()
            self._refuse_nonfinite(payload)
            save_checkpoint(payload, self.run_dir / "best.pt")

    def _refuse_nonfinite(self, payload: dict[str, Any]) -> None:
        """Never write NaN/inf into a checkpoint (BN statistics can diverge while every parameter is finite)."""
        bad = (nonfinite_in({"model": payload["model"]}, WEIGHT_LIMIT)
               + nonfinite_in({k: payload.get(k) for k in ("optimizer", "distiller")}))
        if bad:
            # the weights of self.step are broken: what failed is that step, and they are in no checkpoint
            self.step -= 1
            raise self._diverged("the weights became non-finite or huge", f"nan, inf or |w| > {WEIGHT_LIMIT:g} in "
                                 f"{describe_nonfinite(bad)}", weights_suspect=False)

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
        return self._diverged("loss became nan", shown, weights_suspect=True)

    def _diverged(self, what: str, detail: str, weights_suspect: bool) -> ApdError:
        """The one-line error for a non-finite value met while computing step ``self.step + 1``.

        ``weights_suspect``: the weights of ``self.step`` produced the value (a non-finite loss or gradient),
        so a checkpoint of that step is not good: it is moved to diverged.pt and prev.pt, whose weights gave
        a finite loss, becomes last.pt again (what ``--resume`` reads).
        """
        failed = self.step + 1
        what = f"{what} at step {failed} ({detail})"
        if not self.info.is_main:
            return ApdError(f"{what} (see the main process for the checkpoints)")
        last, prev, bad = (self.run_dir / n for n in ("last.pt", "prev.pt", "diverged.pt"))

        def step_of(p: Path) -> int | None:
            try:
                return int(load_checkpoint(p)["step"]) if p.is_file() else None
            except (ApdError, KeyError, ValueError, TypeError):
                return None

        s_last = step_of(last)
        if s_last is None:
            where = "no checkpoint was written yet"
        elif weights_suspect and s_last >= self.step:
            os.replace(last, bad)
            s_prev = step_of(prev)
            if s_prev is not None and s_prev < self.step:
                os.replace(prev, last)
                where = (f"last good checkpoint: {last} (step {s_prev}); the checkpoint of step {s_last}, whose "
                         f"weights produced it, was moved to {bad}")
            else:
                where = (f"no good checkpoint: the only one (step {s_last}) holds the weights that produced it "
                         f"and was moved to {bad}")
        else:
            where = f"last good checkpoint: {last} (step {s_last})"
        how = ", then continue with --resume --allow-change train.lr" if where.startswith("last good") else ""
        return ApdError(f"{what}; {where} (lower train.lr or set train.grad_clip{how})")

    def fit(self) -> Path:
        """Train from ``self.step`` (0, or the resumed checkpoint's) to ``train.iterations``; returns the run folder."""
        total = self.recipe.train.iterations
        t_start = time.perf_counter()
        start_step = self.step
        batches = self._batches(*self._data_position())
        bar = self._progress_bar()
        autocast = (torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        self.distiller.train()
        window = _LossWindow()
        try:
            while self.step < total:
                images, labels = next(batches)
                parts, lr = self._train_step(images, labels, autocast)
                window.add(parts)
                if bar is not None:
                    bar.update(1)
                if self.step % self.recipe.train.log_interval == 0 or self.step == total:
                    self._log_train(window, lr, bar, t_start)
                if self.step % self.recipe.train.eval_interval == 0 or self.step == total:
                    self._evaluate_step(bar)
                    window.t0 = time.perf_counter()  # evaluation time is not training throughput
                if self.step % self.recipe.train.ckpt_interval == 0 or self.step == total:
                    self._save_last()
                if self.on_step is not None:
                    self.on_step(self.step)
        finally:
            if bar is not None:
                bar.close()

        if self.step > start_step or not (self.run_dir / "summary.json").exists():
            self._finish(time.perf_counter() - t_start)
        barrier(self.info)
        return self.run_dir

    def _data_position(self) -> tuple[int, Iterator]:
        """(epoch, its batch iterator) at ``self.step``: a resumed run replays the batches of the interrupted
        epoch, then restores the checkpoint's RNG state, so it draws exactly what the original run drew."""
        epoch, pos = divmod(self.step, len(self.train_loader))
        it = self._epoch_iter(epoch)
        if pos and self.step < self.recipe.train.iterations:
            self.log(f"resume: replaying {pos} batches of epoch {epoch} to reach the data position")
            for _ in range(pos):
                next(it)
        if pos and self._resume_rng is not None:
            # at an epoch boundary the epoch seed already fixes every stream (as in an uninterrupted run)
            set_rng_state(self._resume_rng)
        return epoch, it

    def _batches(self, epoch: int, it: Iterator) -> Iterator:
        """Batches from ``it`` on, then epoch after epoch (each next epoch is seeded when its first batch is due)."""
        while True:
            yield from it
            epoch += 1
            it = self._epoch_iter(epoch)

    def _progress_bar(self):
        if not (self.progress and self.info.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.recipe.train.iterations, initial=self.step, desc=self.recipe.name, unit="it",
                    dynamic_ncols=True, file=sys.stderr)

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor,
                    autocast) -> tuple[dict[str, torch.Tensor], float]:
        """One optimisation step with its divergence checks; returns the loss parts and the lr it used."""
        info, device = self.info, self.device
        images = images.to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast:
            out = self.distiller(images, labels)
        loss = out.total
        if any_true(not bool(torch.isfinite(loss.detach()).item()), info, device):
            raise self._nan_error(out.parts)
        # BN statistics are updated by the forward pass: broken ones indict the weights of self.step
        if any_true(not all_finite(self._buffers(), WEIGHT_LIMIT), info, device):
            names = nonfinite_names(((self._pname(b), b) for b in self._buffers()), WEIGHT_LIMIT)
            raise self._diverged("the forward pass made the BN statistics non-finite or huge",
                                 f"nan, inf or > {WEIGHT_LIMIT:g} in {describe_nonfinite(names)}",
                                 weights_suspect=True)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        average_gradients(self.extra_params, info)
        # fp16 AMP: inf gradients are expected now and then; the GradScaler skips those steps itself
        if self.scaler is None and any_true(not all_finite(p.grad for p in self.train_params), info, device):
            names = nonfinite_names((self._pname(p), p.grad) for p in self.train_params if p.grad is not None)
            raise self._diverged("gradients became non-finite", f"in {describe_nonfinite(names)}",
                                 weights_suspect=True)
        self._optimizer_step()
        if any_true(not all_finite(self.train_params, WEIGHT_LIMIT), info, device):
            names = nonfinite_names(((self._pname(p), p) for p in self.train_params), WEIGHT_LIMIT)
            raise self._diverged("the weights became non-finite or huge", f"nan, inf or |w| > "
                                 f"{WEIGHT_LIMIT:g} in {describe_nonfinite(names)}", weights_suspect=False)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        return out.parts, lr

    def _log_train(self, window: "_LossWindow", lr: float, bar, t_start: float) -> None:
        """Write the mean loss parts since the last log line (averaged over processes) and the throughput."""
        info = self.info
        means = all_reduce_mean({k: float(v) / window.n for k, v in window.sums.items()}, info, self.device)
        img_s = window.n * self.recipe.train.batch_size / max(time.perf_counter() - window.t0, 1e-9)
        rec = {"type": "train", "step": self.step, **means, "lr": lr, "img_s": img_s,
               "time": time.perf_counter() - t_start}
        if info.is_main:
            self.metrics.write(rec)
        if bar is not None:
            post = {k: _fmt(v) for k, v in means.items()}
            post.update(lr=_fmt(lr), img_s=f"{img_s:.1f}")
            bar.set_postfix(post, refresh=False)
        window.reset()

    def _optimizer_step(self) -> None:
        """Clip (if the recipe says so) and step, through the GradScaler under fp16 AMP."""
        clip = self.recipe.train.grad_clip
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.train_params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.train_params, clip)
            self.optimizer.step()

    def _evaluate_step(self, bar) -> None:
        """Validate, log the result and keep ``best.pt`` when the mIoU improved."""
        t_eval = time.perf_counter()
        res = self._validate()
        exclude_from_eta(bar, time.perf_counter() - t_eval)  # the ETA is of training steps only
        if self._record_eval(res):
            self._save_best()

    def _record_eval(self, res: dict, log: bool = True) -> bool:
        """Remember ``res``, update the best mIoU, write the eval record (main rank); True when it improved."""
        miou = float(res["miou"])
        self.last_eval = res
        improved = miou > self.best_miou
        if improved:
            self.best_miou, self.best_step = miou, self.step
        if self.info.is_main:
            self.metrics.write({"type": "eval", "step": self.step, "miou": miou,
                                "acc": float(res["acc"]), "macc": float(res["macc"]),
                                "iou": [float(x) for x in res["iou"]], "best_miou": self.best_miou})
            if log:
                self.log(f"step {self.step}: val mIoU {100 * miou:.2f} (best {100 * self.best_miou:.2f} "
                         f"at step {self.best_step})")
        return improved

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
        (self.run_dir / "prev.pt").unlink(missing_ok=True)  # only needed while training goes on

    def _pname(self, p: torch.Tensor) -> str:
        if not hasattr(self, "_param_names"):
            self._param_names = {id(q): n for n, q in self.distiller.named_parameters()}
            self._param_names.update({id(b): n for n, b in self.student.named_buffers()})
        return self._param_names.get(id(p), "?")

    def _buffers(self) -> list[torch.Tensor]:
        if not hasattr(self, "_float_buffers"):
            self._float_buffers = [b for b in self.student.buffers() if b.is_floating_point()]
        return self._float_buffers

    def close(self) -> None:
        self._release()
        cleanup(self.info)


def train(recipe: Recipe, resume: bool = False, distill: bool = False, progress: bool = True, *,
          on_step: Callable[[int], None] | None = None, exist_ok: bool = False, increment: bool = False,
          allow_changes: Sequence[str] = ()) -> Path:
    """Train (``distill=False``: method forced to "none") or distill per ``recipe``; returns the run folder.

    ``on_step(step)`` is called after every completed step (tests use it to simulate interruptions).
    ``exist_ok`` restarts a finished run in its folder, ``increment`` numbers the name (run, run2, ...),
    ``allow_changes`` lists recipe keys (or sections) that ``resume`` may find changed.
    """
    trainer = Trainer(recipe, resume=resume, distill=distill, progress=progress, on_step=on_step,
                      exist_ok=exist_ok, increment=increment, allow_changes=allow_changes)
    try:
        return trainer.fit()
    finally:
        trainer.close()
