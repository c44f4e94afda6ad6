"""``apd-edge qat``: quantization-aware fine-tuning of a trained student, distilled from its own FP32 weights.

The student (a run folder's best.pt / last.pt) gets fake quantization exactly where the INT8 export puts
Q/DQ on convolutions (``engine/fakequant.py``), activation ranges from a calibration pass on whole training
images (EMA of max|x|, then frozen), and a short schedule minimising

    ce_weight * CE(student, labels) + kd_weight * T^2 * KL(FP32 copy || student)
    [+ teacher_weight * T^2 * KL(recipe teacher || student)]

(per-pixel KL summed over classes, mean over pixels). BatchNorm statistics stay frozen and dropout off.
The result is a new run folder (``runs/<name>_qat/``: best.pt, last.pt, recipe.yaml, qat.yaml,
metrics.jsonl, summary.json) whose checkpoints are ordinary FP32 state dicts of the same model plus a
``qat`` section (activation scales per module, classifier, schedule, loss weights) for the export.
Checkpoints are atomic; ``resume`` continues bit-exactly on CPU with ``data.workers: 0``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import IGNORE_INDEX, Recipe, RecipeError, _build, _parse_override, recipe_from_dict, recipe_to_dict
from ..errors import ApdError, suggest
from ..metrics import scored_classes
from ..checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from .fakequant import (QMAX, QMIN, activation_scales, fp32_state_dict, freeze_batchnorm, insert_fake_quant,
                        load_activation_scales, quantizable_convs, set_observing)
from .run import MetricsLog, point_latest, prepare_run_dir, write_recipe, write_summary
from .schedule import WarmupPolyLR
from .trainer import _ForkedRNG, epoch_seed, rng_state, seed_everything, set_rng_state


def _rng(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


@dataclass
class QATConfig:
    """QAT options (``--set KEY=VALUE`` on the command line); validated like a recipe section."""

    iterations: int = field(default=300, metadata=_rng(1, None))
    batch_size: int = field(default=8, metadata=_rng(1, None))
    crop: Optional[list[int]] = None  # H, W; None = the recipe's train.crop
    # AdamW by default: imported/trained models can be badly conditioned under frozen BN (the authors' ESPNet,
    # whose inputs are scaled by 1/70, diverged with SGD even at lr 1e-5; AdamW at 1e-5 stayed stable)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = field(default=1e-5, metadata=_rng(0.0, None, lo_open=True))
    momentum: float = field(default=0.9, metadata=_rng(0.0, 1.0))
    weight_decay: float = field(default=0.0, metadata=_rng(0.0, None))
    schedule: Literal["cosine", "poly"] = "cosine"
    warmup_iters: int = field(default=0, metadata=_rng(0, None))
    ce_weight: float = field(default=1.0, metadata=_rng(0.0, None))  # CE on the labels
    kd_weight: float = field(default=1.0, metadata=_rng(0.0, None))  # KL to the student's own FP32 weights
    temperature: float = field(default=1.0, metadata=_rng(0.0, None, lo_open=True))
    teacher: bool = False  # also distill from the recipe's teacher
    teacher_weight: float = field(default=1.0, metadata=_rng(0.0, None))
    calib_images: int = field(default=32, metadata=_rng(1, None))  # whole training images for the ranges
    observer_momentum: float = field(default=0.9, metadata=_rng(0.0, 1.0))  # EMA of per-image max|x|
    grad_clip: Optional[float] = field(default=None, metadata=_rng(0.0, None, lo_open=True))
    log_interval: int = field(default=10, metadata=_rng(1, None))
    eval_interval: Optional[int] = field(default=None, metadata=_rng(1, None))  # None = at the start and end only
    ckpt_interval: int = field(default=50, metadata=_rng(1, None))
    device: str = "auto"
    seed: Optional[int] = None  # None = the recipe's seed


def qat_config_from_dict(data: dict | None) -> QATConfig:
    """Validate a plain mapping into a QATConfig (errors name the key, ``qat.lr``)."""
    names = [f.name for f in dataclasses.fields(QATConfig)]
    for key in data or {}:
        if key not in names:
            raise RecipeError(f"unknown QAT option 'qat.{key}'{suggest(str(key), names)}")
    cfg = _build(QATConfig, dict(data or {}), "qat")
    if cfg.crop is not None and (len(cfg.crop) != 2 or any(c < 32 or c % 32 for c in cfg.crop)):
        raise RecipeError(f"qat.crop: {cfg.crop} must be two multiples of 32 (>= 32), e.g. [384, 480]")
    if cfg.ce_weight == 0 and cfg.kd_weight == 0 and (not cfg.teacher or cfg.teacher_weight == 0):
        raise RecipeError("qat: every loss weight is 0 (set qat.kd_weight or qat.ce_weight > 0)")
    return cfg


def parse_qat_overrides(items: tuple[str, ...] | list[str], base: dict | None = None) -> QATConfig:
    """``KEY=VALUE`` strings (values parsed as YAML; a leading ``qat.`` is allowed) into a QATConfig."""
    data = dict(base or {})
    names = [f.name for f in dataclasses.fields(QATConfig)]
    for item in items:
        keys, value = _parse_override(item)
        if keys and keys[0] == "qat":
            keys = keys[1:]
        if len(keys) != 1:
            raise RecipeError(f"--set {item!r}: QAT options are single keys, e.g. --set lr=0.0005")
        if keys[0] == "device" and value is not None:
            value = str(value)
        if isinstance(value, str) and keys[0] in names:
            try:  # YAML 1.1 reads "1e-3" as a string
                value = float(value) if keys[0] in ("lr", "weight_decay", "momentum", "temperature") else value
            except ValueError:
                pass
        data[keys[0]] = value
    return qat_config_from_dict(data)


# ---------------------------------------------------------------------------------------------------
# Losses and schedule
# ---------------------------------------------------------------------------------------------------


def pixel_kl(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) summed over classes, mean over pixels, times T^2."""
    if s_logits.shape[-2:] != t_logits.shape[-2:]:
        t_logits = F.interpolate(t_logits, size=s_logits.shape[-2:], mode="bilinear", align_corners=False)
    logp_t = F.log_softmax(t_logits.detach().float() / temperature, dim=1)
    logp_s = F.log_softmax(s_logits.float() / temperature, dim=1)
    return (logp_t.exp() * (logp_t - logp_s)).sum(1).mean() * temperature ** 2


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


class WarmupCosineLR(WarmupPolyLR):
    """Linear warm-up, then cosine decay to 0 over ``total`` steps (same state as WarmupPolyLR)."""

    def factor(self, step: int | None = None) -> float:
        s = min(max(self.last_step if step is None else step, 0), self.total)
        f = 0.5 * (1 + math.cos(math.pi * s / self.total)) if self.total > 0 else 1.0
        if self.warmup_iters > 0 and s < self.warmup_iters:
            f *= self.warmup_ratio + (1.0 - self.warmup_ratio) * s / self.warmup_iters
        return f


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def _log(progress: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    return log


def default_run_dir(ckpt_path: Path, recipe: Recipe) -> tuple[str, Path]:
    """(name, folder) for the QAT run: ``<source run folder>_qat`` next to the source run."""
    name = f"{recipe.name or ckpt_path.parent.name}_qat"
    return name, ckpt_path.parent.parent


class QATRun:
    """One QAT fine-tuning run; ``fit()`` returns the run folder."""

    def __init__(self, source: str | Path, cfg: QATConfig, *, name: str | None = None,
                 output_dir: str | Path | None = None, resume: bool = False, data_root: str | Path | None = None,
                 progress: bool = True, on_step: Callable[[int], None] | None = None) -> None:
        from ..data import build_dataset, build_loader
        from .distributed import resolve_device

        self.cfg, self.resume, self.progress, self.on_step = cfg, resume, progress, on_step
        self.log = _log(progress)
        src = Path(source)
        if src.is_dir():
            src = find_checkpoint(src) or src / "best.pt"
        if not src.is_file():
            raise ApdError(f"checkpoint not found: {src} (pass a run folder or a .pt file from `apd-edge train`)")
        self.source = src.resolve()
        ckpt = load_checkpoint(self.source)
        if not isinstance(ckpt.get("recipe"), dict) or "data" not in ckpt["recipe"]:
            raise ApdError(f"{self.source} records no recipe data section: QAT needs the training data "
                           "(use a checkpoint from `apd-edge train` / `distill`)")
        recipe = recipe_from_dict(ckpt["recipe"])
        dname, ddir = default_run_dir(self.source, recipe)
        self.name = name or dname
        r = dataclasses.replace(recipe, name=self.name, output_dir=str(output_dir if output_dir is not None else ddir),
                                seed=recipe.seed if cfg.seed is None else cfg.seed)
        if data_root is not None:
            r.data = dataclasses.replace(r.data, root=str(data_root))
        r.train = dataclasses.replace(r.train, batch_size=cfg.batch_size, crop=list(cfg.crop or r.train.crop),
                                      iterations=cfg.iterations)
        self.recipe = r
        self.device = resolve_device(cfg.device)
        if cfg.teacher and not (r.teacher.name or r.teacher.factory or r.teacher.checkpoint):
            raise ApdError("qat.teacher: the source recipe names no teacher (teacher.name, .checkpoint or .factory)")
        if Path(r.output_dir).resolve() / self.name == self.source.parent:
            raise ApdError(f"QAT run folder {self.source.parent} is the source run itself; pass another --name")
        if not resume and (Path(r.output_dir) / self.name / "last.pt").exists():
            raise ApdError(f"QAT run folder {Path(r.output_dir) / self.name} already holds last.pt: continue it with "
                           "--resume, or start a new one with --name NAME")
        self.run_dir = prepare_run_dir(r, resume)

        val_ds = build_dataset(r.data, r.data.val_split)
        self.num_classes = int(ckpt["num_classes"])
        # an imported model's trailing outputs the dataset does not label (e.g. void): scored as errors, kept
        self.extra_classes = list(ckpt.get("extra_classes") or [])
        self.scored = scored_classes(self.num_classes, val_ds.num_classes, self.extra_classes, where=str(self.source))
        self.class_names = list(ckpt.get("classes") or val_ds.class_names)
        self.palette = ckpt.get("palette") or [list(map(int, c)) for c in val_ds.palette]
        self.train_loader = build_loader(r, r.data.train_split, train=True, batch_size=cfg.batch_size)
        self.val_loader = build_loader(r, r.data.val_split, train=False, batch_size=r.eval.batch_size)
        self.src_ckpt = ckpt

        model, _ = model_from_checkpoint(ckpt)
        self.reference = model.to(self.device).eval()  # the frozen FP32 model the student distills from
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.student = copy.deepcopy(self.reference)
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.teacher = None
        if cfg.teacher:
            from ..distill.teacher import build_teacher

            self.teacher = build_teacher(r, self.num_classes).to(self.device).eval()

        example = next(iter(self.val_loader))[0][:1].to(self.device)
        from ..models.inference import pad_to_multiple

        self.quantized, self.classifier = quantizable_convs(self.student, pad_to_multiple(example, 32)[0])
        self.wrapped = insert_fake_quant(self.student, self.quantized, cfg.observer_momentum)
        self.student.eval()  # BN frozen, dropout off; gradients still flow
        freeze_batchnorm(self.student)

        params = [p for p in self.student.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = WarmupCosineLR if cfg.schedule == "cosine" else WarmupPolyLR
        self.scheduler = sched(self.optimizer, cfg.iterations, cfg.warmup_iters)
        self.params = params

        self.step = 0
        self.best_miou = -1.0
        self.best_step: int | None = None
        self.start: dict[str, Any] = {}
        self.last_eval: dict[str, Any] | None = None
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self._resume_rng: dict | None = None
        if resume:
            self._load_resume()
        else:
            self.metrics.path.write_text("")
        write_recipe(r, self.run_dir)
        (self.run_dir / "qat.yaml").write_text(_yaml(dataclasses.asdict(cfg)))
        point_latest(self.run_dir)

    # -- state ---------------------------------------------------------------------------------------

    def _load_resume(self) -> None:
        path = self.run_dir / "last.pt"
        ckpt = load_checkpoint(path, map_location=self.device)
        q = ckpt.get("qat") or {}
        if ckpt.get("model_name") != self.src_ckpt.get("model_name") or "qat_reference" not in ckpt:
            raise ApdError(f"--resume: {path} is not a QAT checkpoint of this {self.src_ckpt.get('model_name')} model")
        if q.get("quantized") != self.quantized:
            raise ApdError(f"--resume: {path} quantizes other layers than this model has")
        self.reference.load_state_dict(ckpt["qat_reference"])
        missing, unexpected = self.student.load_state_dict(_wrapped_keys(ckpt["model"], self.wrapped), strict=False)
        missing = [k for k in missing if ".act." not in k]
        if missing or unexpected:
            raise ApdError(f"--resume: weights in {path} do not fit the model (e.g. {(missing or unexpected)[0]})")
        load_activation_scales(self.wrapped, q["act_scales"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as exc:
            raise ApdError(f"--resume: optimizer state in {path} does not fit ({exc})") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.best_miou = float(ckpt.get("best_miou", -1.0))
        self.best_step = ckpt.get("best_step")
        self.start = dict(q.get("start") or {})
        self._resume_rng = ckpt.get("rng")
        self.metrics.truncate_after(self.step)
        if self.step >= self.cfg.iterations:
            self.log(f"resume: {path} is at step {self.step} of {self.cfg.iterations}: nothing left to do")
        else:
            self.log(f"resume: continuing {self.run_dir} from step {self.step}")

    def qat_section(self) -> dict[str, Any]:
        return {
            "scheme": {"weights": "int8 symmetric per output channel (Conv2d axis 0, ConvTranspose2d axis 1), "
                                  "scale = max|w| / 127",
                       "activations": "int8 symmetric per tensor at each quantized conv's input, scale = amax / 127",
                       "qmin": QMIN, "qmax": QMAX, "zero_point": 0, "batchnorm": "frozen (eval statistics)"},
            "act_scales": activation_scales(self.wrapped),
            "quantized": list(self.quantized),
            "classifier": self.classifier,
            "config": dataclasses.asdict(self.cfg),
            "loss": {"ce_weight": self.cfg.ce_weight, "kd_weight": self.cfg.kd_weight,
                     "temperature": self.cfg.temperature,
                     "teacher_weight": self.cfg.teacher_weight if self.teacher is not None else 0.0},
            "source": {"checkpoint": str(self.source), "step": self.src_ckpt.get("step")},
            "start": dict(self.start),
            "step": self.step,
        }

    def _payload(self) -> dict[str, Any]:
        c = self.src_ckpt
        return {
            "model_name": c["model_name"], "model_kwargs": dict(c.get("model_kwargs") or {}),
            "num_classes": self.num_classes, "model": fp32_state_dict(self.student),
            "recipe": recipe_to_dict(self.recipe), "step": self.step, "best_miou": self.best_miou,
            "best_step": self.best_step, "classes": self.class_names, "palette": self.palette,
            "mean": list(c.get("mean") or self.recipe.data.mean), "std": list(c.get("std") or self.recipe.data.std),
            "method": c.get("method", self.recipe.distill.method), "qat": self.qat_section(),
            **({"extra_classes": self.extra_classes} if self.extra_classes else {}),
            **({"imported": c["imported"]} if "imported" in c else {}),
        }

    def _save_last(self) -> None:
        payload = self._payload()
        payload.update({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "rng": rng_state(),
                        "qat_reference": {k: v.detach().clone() for k, v in self.reference.state_dict().items()}})
        save_checkpoint(payload, self.run_dir / "last.pt")

    # -- steps ---------------------------------------------------------------------------------------

    def calibrate(self) -> int:
        """Observe activation ranges on whole training images (as the export calibrates); returns the count."""
        from torch.utils.data import DataLoader, Subset

        from ..data import build_loader
        from ..models.inference import forward_padded

        loader = build_loader(self.recipe, self.recipe.data.train_split, train=False, batch_size=1)
        n = len(loader.dataset)
        idx = sorted(set(np.linspace(0, n - 1, min(n, self.cfg.calib_images)).round().astype(int).tolist()))
        sub = DataLoader(Subset(loader.dataset, idx), batch_size=1, shuffle=False, num_workers=0)
        set_observing(self.student, True)
        try:
            with torch.no_grad(), _ForkedRNG():
                for images, _ in sub:
                    forward_padded(self.student, images.to(self.device))
        finally:
            set_observing(self.student, False)
        return len(idx)

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        from .evaluate import evaluate

        e = self.recipe.eval
        with _ForkedRNG():
            res = evaluate(model, self.val_loader, self.scored, flip=e.flip, scales=e.scales,
                           window=e.sliding_window, stride=e.sliding_stride, progress=False,
                           extra_classes=len(self.extra_classes))
        model.eval()
        return res

    def _epoch_iter(self, epoch: int):
        seed = self.recipe.seed
        seed_everything(epoch_seed(seed, epoch, 0))
        loader = self.train_loader
        if isinstance(getattr(loader, "generator", None), torch.Generator):
            loader.generator.manual_seed(epoch_seed(seed, epoch, 0))
        ds = loader.dataset
        if loader.num_workers == 0 and hasattr(ds, "_rng"):
            ds._rng = np.random.default_rng(epoch_seed(seed, epoch, 0))
        return iter(loader)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        with torch.no_grad():
            ref = self.reference.forward_dict(images, with_aux=False)["out"]
            t = self.teacher.forward_dict(images)["out"] if self.teacher is not None else None
        s = self.student.forward_dict(images, with_aux=False)["out"]
        kd = pixel_kl(ref, s, cfg.temperature)
        ce = _ce(s, labels)
        total = cfg.kd_weight * kd + cfg.ce_weight * ce
        parts = {"kd": float(kd.detach()), "ce": float(ce.detach())}
        if t is not None:
            tk = pixel_kl(t, s, cfg.temperature)
            total = total + cfg.teacher_weight * tk
            parts["teacher_kd"] = float(tk.detach())
        parts["loss"] = float(total.detach())
        return total, parts

    def _eval_record(self, res: dict[str, Any]) -> None:
        miou = float(res["miou"])
        self.last_eval = res
        improved = miou > self.best_miou
        if improved:
            self.best_miou, self.best_step = miou, self.step
        self.metrics.write({"type": "eval", "step": self.step, "miou": miou, "acc": float(res["acc"]),
                            "macc": float(res["macc"]), "iou": [float(x) for x in res["iou"]],
                            "best_miou": self.best_miou, "fake_quant": True})
        self.log(f"step {self.step}: fake-quant val mIoU {100 * miou:.2f} (best {100 * self.best_miou:.2f} "
                 f"at step {self.best_step})")
        if improved:
            save_checkpoint(self._payload(), self.run_dir / "best.pt")

    def fit(self) -> Path:
        cfg = self.cfg
        t0 = time.perf_counter()
        start_step = self.step
        if not self.resume:
            n = self.calibrate()
            self.log(f"calibrated {len(self.wrapped)} activation ranges on {n} '{self.recipe.data.train_split}' "
                     f"images; {self.classifier} (classifier) stays float")
            fp32 = self._evaluate(self.reference)
            self.start = {"calib_images": n, "fp32_miou": float(fp32["miou"])}
            self.metrics.write({"type": "start", "step": 0, "fp32_miou": float(fp32["miou"])})
            self.log(f"FP32 val mIoU {100 * fp32['miou']:.2f}")
            res = self._evaluate(self.student)
            self.start["fake_quant_miou"] = float(res["miou"])
            self._eval_record(res)
            self._save_last()
        total = cfg.iterations
        n_batches = len(self.train_loader)
        epoch, pos = divmod(self.step, n_batches)
        it = self._epoch_iter(epoch)
        if pos and self.step < total:
            for _ in range(pos):  # replay to the data position of the interrupted epoch
                next(it)
        if pos and self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc=self.name, unit="it", dynamic_ncols=True, file=sys.stderr)
        sums: dict[str, float] = {}
        n_sum = 0
        try:
            while self.step < total:
                try:
                    images, labels = next(it)
                except StopIteration:
                    epoch += 1
                    it = self._epoch_iter(epoch)
                    images, labels = next(it)
                images, labels = images.to(self.device), labels.to(self.device)
                loss, parts = self.loss(images, labels)
                if not math.isfinite(parts["loss"]):
                    raise ApdError(f"QAT loss became nan at step {self.step + 1}; lower the lr (--set lr=...)")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                self.step += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_interval == 0 or self.step == total:
                    means = {k: v / n_sum for k, v in sums.items()}
                    self.metrics.write({"type": "train", "step": self.step, **means, "lr": lr,
                                        "time": time.perf_counter() - t0})
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
                    sums, n_sum = {}, 0
                if (cfg.eval_interval and self.step % cfg.eval_interval == 0) or self.step == total:
                    self._eval_record(self._evaluate(self.student))
                if self.step % cfg.ckpt_interval == 0 or self.step == total:
                    self._save_last()
                if self.on_step is not None:
                    self.on_step(self.step)
        finally:
            if bar is not None:
                bar.close()
        if self.step > start_step or not (self.run_dir / "summary.json").exists():
            self._finish(time.perf_counter() - t0)
        return self.run_dir

    def _finish(self, wall: float) -> None:
        best, last = self.run_dir / "best.pt", self.run_dir / "last.pt"
        final = float(self.last_eval["miou"]) if self.last_eval else None
        summary = {
            "name": self.name, "run_dir": str(self.run_dir), "model": self.src_ckpt["model_name"], "method": "qat",
            "source_checkpoint": str(self.source), "dataset": self.recipe.data.dataset,
            "num_classes": self.num_classes, "params": sum(p.numel() for p in self.reference.parameters()),
            "steps": self.step, "iterations": self.cfg.iterations, "wall_time_s": wall,
            "fp32_miou": self.start.get("fp32_miou"), "start_fake_quant_miou": self.start.get("fake_quant_miou"),
            "final_miou": final, "best_miou": self.best_miou if self.best_miou >= 0 else None,
            "best_step": self.best_step, "quantized_convs": len(self.quantized), "classifier": self.classifier,
            "classes": self.class_names,
            "best_checkpoint": str(best) if best.is_file() else None,
            "last_checkpoint": str(last) if last.is_file() else None,
            "device": str(self.device), "qat": dataclasses.asdict(self.cfg),
        }
        write_summary(self.run_dir, summary)


def _wrapped_keys(state: dict[str, torch.Tensor], wrapped: dict) -> dict[str, torch.Tensor]:
    """Plain-model keys -> keys of the model with ``QATConv`` wrappers (``a.weight`` -> ``a.conv.weight``)."""
    out = {}
    for k, v in state.items():
        mod, _, leaf = k.rpartition(".")
        out[f"{mod}.conv.{leaf}" if mod in wrapped else k] = v
    return out


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def run_qat(source: str | Path, cfg: QATConfig | None = None, *, name: str | None = None,
            output_dir: str | Path | None = None, resume: bool = False, data_root: str | Path | None = None,
            progress: bool = True, on_step: Callable[[int], None] | None = None) -> Path:
    """Fine-tune ``source`` (checkpoint or run folder) with fake quantization; returns the new run folder."""
    run = QATRun(source, cfg or QATConfig(), name=name, output_dir=output_dir, resume=resume, data_root=data_root,
                 progress=progress, on_step=on_step)
    return run.fit()


def format_qat_summary(summary: dict[str, Any]) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    return "\n".join([
        f"run        {summary['run_dir']}",
        f"model      {summary['model']}: {summary['quantized_convs']} convs fake-quantized, "
        f"{summary['classifier']} float",
        f"steps      {summary['steps']} in {summary['wall_time_s']:.1f} s",
        f"val mIoU   FP32 {pct(summary['fp32_miou'])} | fake-quant start {pct(summary['start_fake_quant_miou'])}"
        f" -> final {pct(summary['final_miou'])}, best {pct(summary['best_miou'])} (step {summary['best_step']})",
        f"weights    {summary['best_checkpoint'] or summary['last_checkpoint']}",
        f"next       apd-edge export {Path(summary['run_dir'])} --int8",
    ])


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())
