"""Confusion-matrix segmentation metrics: per-class IoU, mIoU, pixel accuracy, mean class accuracy.

Numpy only (the torch-free runtime scores ONNX bundles with it); torch tensors are accepted and
counted on their own device, and ``reduce_`` imports torch lazily. Classes absent from both the labels
and the predictions have IoU NaN and are left out of the means, as the community's tools do.

Extra classes: a model may predict more classes than the dataset labels (e.g. an imported model trained
with void as a class). Those trailing outputs are declared (``extra_classes`` in the checkpoint/manifest);
a prediction of one on a labelled pixel counts as an error, and they are not averaged into the means.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import ApdError


def scored_classes(model_classes: int, dataset_classes: int, extra_classes: Sequence[str] = (),
                   where: str = "the model") -> int:
    """Check a model's output count against a dataset's classes; returns how many classes are scored.

    A model may have more outputs than the dataset has classes only when exactly the surplus is declared
    as trailing ``extra_classes`` (scored as errors, left out of the means).
    """
    extra = list(extra_classes or [])
    if not all(isinstance(e, str) for e in extra) or len(extra) >= model_classes:
        raise ApdError(f"{where}: extra_classes {extra!r} must be a list of fewer than {model_classes} class names")
    scored = model_classes - len(extra)
    if scored == dataset_classes:
        return scored
    if not extra and model_classes > dataset_classes:
        raise ApdError(f"the dataset has {dataset_classes} classes but {where} predicts {model_classes}; if its last "
                       f"{model_classes - dataset_classes} outputs are classes the dataset does not label (e.g. void), "
                       "declare them as extra_classes (docs/checkpoint-format.md)")
    decl = f" ({model_classes} outputs less {len(extra)} extra: {', '.join(extra)})" if extra else ""
    raise ApdError(f"the dataset has {dataset_classes} classes but {where} predicts {scored}{decl}")


class ConfusionMatrix:
    """Accumulates ``mat[label, pred]`` pixel counts over a dataset (ignored pixels are not counted).

    ``num_classes`` labelled classes; ``extra_classes`` more predicted-only classes (trailing model
    outputs the dataset does not label) add columns: errors on the row's class, never a class of their own.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, extra_classes: int = 0) -> None:
        self.num_classes = int(num_classes)
        self.extra_classes = int(extra_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((self.num_classes, self.num_classes + self.extra_classes), np.int64)

    def reset(self) -> None:
        self.mat[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch. ``pred``: label map (or logits with a class axis at dim 1 / 0); ``target``: labels."""
        n, npred = self.num_classes, self.num_classes + self.extra_classes
        if hasattr(pred, "detach"):  # torch: count on the tensor's device, move n*n numbers
            import torch

            if pred.dim() == target.dim() + 1:
                pred = pred.argmax(dim=-3 if pred.dim() >= 3 else 0)
            pred, target = pred.reshape(-1).long(), torch.as_tensor(target, device=pred.device).reshape(-1).long()
            keep = (target != self.ignore_index) & (target >= 0) & (target < n)
            target, pred = target[keep], pred[keep]
            if pred.numel():
                lo, hi = torch.aminmax(pred)
                self._check_pred(*[int(v) for v in torch.stack([hi, lo]).tolist()])  # one device sync
            counts = torch.bincount(target * npred + pred, minlength=n * npred)
            self.mat += counts.cpu().numpy().reshape(n, npred)
            return
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(axis=-3 if pred.ndim >= 3 else 0)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} != label shape {target.shape}")
        t = target.reshape(-1).astype(np.int64)
        p = pred.reshape(-1).astype(np.int64)
        keep = (t != self.ignore_index) & (t >= 0) & (t < n)
        t, p = t[keep], p[keep]
        if p.size:
            self._check_pred(int(p.max()), int(p.min()))
        self.mat += np.bincount(t * npred + p, minlength=n * npred).reshape(n, npred)

    def _check_pred(self, hi: int, lo: int) -> None:
        top = self.num_classes + self.extra_classes
        if hi >= top or lo < 0:
            raise ValueError(f"prediction value {hi if hi >= top else lo} outside 0..{top - 1}")

    def reduce_(self) -> "ConfusionMatrix":
        """Sum the matrix over processes when torch.distributed is initialised (no-op otherwise)."""
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            return self
        if dist.is_available() and dist.is_initialized():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            t = torch.from_numpy(self.mat).to(device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            self.mat = t.cpu().numpy()
        return self

    def compute(self) -> dict:
        """iou (list, NaN for absent classes), miou, acc (pixel), macc (mean class), present (list of bool),
        and ``extra_share``: the fraction of labelled pixels predicted as an extra class (0 without any)."""
        n = self.num_classes
        m = self.mat.astype(np.float64)
        tp = np.diag(m[:, :n])
        gt, pr = m.sum(1), m[:, :n].sum(0)  # extra-class predictions are misses of the row's class
        union = gt + pr - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            cls_acc = np.where(gt > 0, tp / gt, np.nan)
        present = union > 0
        total = m.sum()
        return {
            "iou": iou.tolist(),
            "miou": float(np.nanmean(iou)) if present.any() else math.nan,
            "acc": float(tp.sum() / total) if total else math.nan,
            "macc": float(np.nanmean(cls_acc)) if (gt > 0).any() else math.nan,
            "class_acc": cls_acc.tolist(),
            "present": present.tolist(),
            "pixels": int(total),
            "extra_share": float(m[:, n:].sum() / total) if total else 0.0,
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A per-class text table (IoU, accuracy, label share) with the means on the last line."""
        r = self.compute()
        names = list(class_names)[: self.num_classes] if class_names else [str(i) for i in range(self.num_classes)]
        extra = list(class_names)[self.num_classes:] if class_names else []
        gt = self.mat.sum(1)
        total = max(int(gt.sum()), 1)
        from .tables import text_table

        fmt = lambda v: "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"  # noqa: E731
        rows = [[name, fmt(r["iou"][k]), fmt(r["class_acc"][k]), f"{100 * gt[k] / total:5.2f}%"]
                for k, name in enumerate(names)]
        # the means: three cells, the last running on past the share column
        rows.append(["mean", fmt(r["miou"]), f"{fmt(r['macc'])}  pixel acc {fmt(r['acc'])}"])
        lines = [text_table(["class", "IoU", "Acc", "share"], rows, align="lrrr", rule=False)]
        if self.extra_classes:
            what = ", ".join(extra) if extra else f"{self.extra_classes} extra class(es)"
            lines.append(f"predicted as {what} (not scored, counted as errors): {100 * r['extra_share']:.2f}% "
                         "of labelled pixels")
        return "\n".join(lines)


def miou(pred: Any, target: Any, num_classes: int, ignore_index: int = 255) -> float:
    """One-shot mIoU of a single prediction/label pair (or batch)."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.update(pred, target)
    return cm.compute()["miou"]
