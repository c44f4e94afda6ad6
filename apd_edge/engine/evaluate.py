"""Evaluation: mIoU over a loader (whole image, sliding window, flip, multi-scale), and the
checkpoint-level entry used by ``apd-edge eval`` (recipe from the checkpoint, optional visualisations)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..config import IGNORE_INDEX, Recipe, apply_overrides, drop_stale_options, recipe_from_dict, recipe_to_dict
from ..data.scoring import describe_selection, scored_indices
from ..errors import ApdError
from .inference import predict_scores
from .vis import VisWriter  # one PNG per image, named after its source frame


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, flip: bool = False, scales: Sequence[float] = (1.0,),
             window: Sequence[int] | None = None, stride: Sequence[int] | None = None, progress: bool = True,
             *, ignore_index: int = IGNORE_INDEX, max_images: int | None = None,
             on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
             reduce: bool = True, extra_classes: int = 0) -> dict[str, Any]:
    """mIoU of ``model`` on ``loader`` (images normalised Bx3xHxW, labels BxHxW with void 255).

    Returns ``ConfusionMatrix.compute()`` (iou, miou, acc, macc, present) plus ``images`` and
    ``seconds``. Under torch.distributed the confusion matrix is summed over ranks (``reduce``).
    ``on_batch(images, labels, preds)`` sees every batch (used for visualisations). ``extra_classes``:
    trailing model outputs the dataset does not label (scored as errors, see ``metrics.scored_classes``).
    """
    from ..metrics import ConfusionMatrix

    was_training = model.training
    model.eval()
    device = _device_of(model)
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, extra_classes=extra_classes)
    seen = 0
    t0 = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_images is not None and total is not None:
        total = min(total, math.ceil(max_images / max(1, getattr(loader, "batch_size", 1) or 1)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="eval", unit="batch", leave=False, dynamic_ncols=True)
    try:
        for images, labels in loader:
            if max_images is not None and seen >= max_images:
                break
            if max_images is not None and seen + images.shape[0] > max_images:
                images, labels = images[: max_images - seen], labels[: max_images - seen]
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            preds = predict_scores(model, images, flip=flip, scales=scales, window=window, stride=stride).argmax(1)
            cm.update(preds, labels)
            if on_batch is not None:
                on_batch(images, labels, preds)
            seen += images.shape[0]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if reduce:
        cm.reduce_()
    result = dict(cm.compute())
    result["images"] = seen
    result["seconds"] = time.perf_counter() - t0
    result["confusion"] = cm
    return result


# ------------------------------------------------------------------------------------------------
# Visualisations
# ------------------------------------------------------------------------------------------------


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """3xHxW normalised tensor -> HxWx3 uint8 RGB."""
    m = torch.tensor(mean, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, device=image.device).view(3, 1, 1)
    img = ((image.float() * s + m).clamp(0, 1) * 255).round().byte()
    return img.permute(1, 2, 0).cpu().numpy()


# ------------------------------------------------------------------------------------------------
# Checkpoint evaluation (what `apd-edge eval` calls)
# ------------------------------------------------------------------------------------------------


def recipe_for_eval(ckpt: dict, data: str | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """The checkpoint's recipe, with ``--data DATASET:ROOT`` and ``--set`` overrides applied."""
    raw = ckpt.get("recipe")
    if not isinstance(raw, dict):
        raise ApdError("checkpoint holds no recipe: pass one through --data DATASET:ROOT and --set")
    raw = recipe_to_dict(recipe_from_dict(raw))  # normalise older/partial recipes
    if data:
        name, _, root = data.partition(":")
        if not name:
            raise ApdError(f"--data {data!r}: expected DATASET or DATASET:ROOT, e.g. camvid:data/camvid")
        drop_stale_options(raw, name, f"--data {data}")  # the checkpoint's options belong to its dataset
        raw["data"]["dataset"] = name
        raw["data"]["root"] = root or None
    return recipe_from_dict(apply_overrides(raw, list(overrides)))


def evaluate_checkpoint(source: str | Path, *, data: str | None = None, overrides: Sequence[str] = (),
                        split: str | None = None, flip: bool | None = None, scales: Sequence[float] | None = None,
                        window: Sequence[int] | None = None, save_vis: str | Path | None = None,
                        max_images: int | None = None, device: str = "auto", progress: bool = True,
                        ) -> dict[str, Any]:
    """Evaluate a checkpoint (file or run folder). Returns the metrics plus ``class_names`` and ``table``."""
    from ..data import build_dataset, build_loader
    from ..metrics import scored_classes
    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from .distributed import resolve_device

    ckpt = load_checkpoint(source)
    recipe = recipe_for_eval(ckpt, data, overrides)
    model, _ = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    model.to(dev).eval()
    split = split or recipe.data.val_split
    dataset = build_dataset(recipe.data, split)
    extra = list(ckpt.get("extra_classes") or [])
    num_classes = scored_classes(int(ckpt["num_classes"]), dataset.num_classes, extra,
                                 where=f"the checkpoint (dataset '{recipe.data.dataset}')")
    idx = scored_indices(len(dataset), max_images)  # the rule export parity and bench use too
    loader = build_loader(recipe, split, train=False, batch_size=recipe.eval.batch_size,
                          indices=idx if len(idx) < len(dataset) else None)
    names = list(ckpt.get("classes") or dataset.class_names)
    palette = ckpt.get("palette") or dataset.palette
    vis = None
    if save_vis:
        vis = VisWriter(save_vis, palette, recipe.data.mean, recipe.data.std, names=names,
                        sources=[dataset.paths(i)[0] for i in idx], root=dataset.root)
    result = evaluate(model, loader, num_classes,
                      flip=recipe.eval.flip if flip is None else flip,
                      scales=recipe.eval.scales if scales is None else scales,
                      window=window if window is not None else recipe.eval.sliding_window,
                      stride=recipe.eval.sliding_stride, progress=progress, on_batch=vis, extra_classes=len(extra))
    result["selection"] = describe_selection(recipe.data.dataset, split, len(idx), len(dataset), max_images)
    result["vis_files"] = [str(p) for p in vis.written] if vis else []
    result["class_names"] = names
    result["table"] = result["confusion"].table(names)
    result["split"] = split
    result["dataset"] = recipe.data.dataset
    result["checkpoint"] = str(source)
    result["model_name"] = ckpt["model_name"]
    result["step"] = ckpt.get("step")
    return result
