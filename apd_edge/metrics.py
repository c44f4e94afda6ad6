"""Confusion-matrix segmentation metrics: per-class IoU, mIoU, pixel accuracy, mean class accuracy.

Numpy only (the torch-free runtime scores ONNX bundles with it); torch tensors are accepted and
counted on their own device, and ``reduce_`` imports torch lazily. Classes absent from both the labels
and the predictions have IoU NaN and are left out of the means, as the community's tools do.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


class ConfusionMatrix:
    """Accumulates ``mat[label, pred]`` pixel counts over a dataset (ignored pixels are not counted)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((self.num_classes, self.num_classes), np.int64)

    def reset(self) -> None:
        self.mat[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch. ``pred``: label map (or logits with a class axis at dim 1 / 0); ``target``: labels."""
        n = self.num_classes
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
            counts = torch.bincount(target * n + pred, minlength=n * n)
            self.mat += counts.cpu().numpy().reshape(n, n)
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
        self.mat += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def _check_pred(self, hi: int, lo: int) -> None:
        if hi >= self.num_classes or lo < 0:
            raise ValueError(f"prediction value {hi if hi >= self.num_classes else lo} outside 0..{self.num_classes - 1}")

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
        """iou (list, NaN for absent classes), miou, acc (pixel), macc (mean class), present (list of bool)."""
        m = self.mat.astype(np.float64)
        tp = np.diag(m)
        gt, pr = m.sum(1), m.sum(0)
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
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A per-class text table (IoU, accuracy, label share) with the means on the last line."""
        r = self.compute()
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        gt = self.mat.sum(1)
        total = max(int(gt.sum()), 1)
        width = max([len(n) for n in names] + [5])
        fmt = lambda v: "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"  # noqa: E731
        lines = [f"{'class':<{width}}  {'IoU':>5}  {'Acc':>5}  {'share':>6}"]
        for k, name in enumerate(names):
            lines.append(f"{name:<{width}}  {fmt(r['iou'][k])}  {fmt(r['class_acc'][k])}  {100 * gt[k] / total:5.2f}%")
        lines.append(f"{'mean':<{width}}  {fmt(r['miou'])}  {fmt(r['macc'])}  pixel acc {fmt(r['acc'])}")
        return "\n".join(lines)


def miou(pred: Any, target: Any, num_classes: int, ignore_index: int = 255) -> float:
    """One-shot mIoU of a single prediction/label pair (or batch)."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.update(pred, target)
    return cm.compute()["miou"]
