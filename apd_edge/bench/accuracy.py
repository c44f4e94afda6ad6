"""Accuracy of a runnable model on a dataset's val split (mIoU through ``apd_edge.metrics``). Torch-free.

Which data: ``--data DATASET[:ROOT]`` when given, else the dataset recorded in the bundle manifest
(``manifest["source"]["dataset"]`` and ``data_root``, or a ``dataset`` / ``data`` / ``recipe.data`` section),
else none (mIoU n/a).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ApdError


@dataclass
class EvalData:
    """A dataset split chosen for accuracy, or the reason there is none."""

    dataset: Any | None
    label: str  # "camvid:val" etc.
    reason: str = ""


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``"camvid:/data/camvid"`` -> ("camvid", "/data/camvid"); ``"synthetic"`` -> ("synthetic", None)."""
    name, sep, root = spec.partition(":")
    name = name.strip()
    if not name:
        raise ApdError(f"--data {spec!r}: expected DATASET:ROOT (e.g. camvid:data/camvid)")
    return name, (root.strip() or None) if sep else None


def _manifest_data(manifest: dict) -> dict | None:
    for key in ("dataset", "data"):
        v = manifest.get(key)
        if isinstance(v, dict) and (v.get("dataset") or v.get("name")):
            return v
    recipe = manifest.get("recipe")
    if isinstance(recipe, dict) and isinstance(recipe.get("data"), dict):
        return recipe["data"]
    src = manifest.get("source")  # what export_bundle records: the checkpoint's dataset and root
    if isinstance(src, dict) and src.get("dataset"):
        return {"dataset": src["dataset"], "root": src.get("data_root"), "options": src.get("data_options") or {},
                "val_split": src.get("val_split")}
    return None


def resolve_eval_data(manifest: dict | None, spec: str | None = None, split: str | None = None) -> EvalData:
    """Build the val split for accuracy; failures become a reason, never an exception (bad ``spec`` raises)."""
    from ..config import DataConfig
    from ..data.registry import build_dataset  # the registry module itself: torch-free

    if spec:
        name, root = parse_data_spec(spec)
        cfg = DataConfig(dataset=name, root=root)
        split = split or "val"
        ds = build_dataset(cfg, split)  # the user named it: errors are theirs to see
        return EvalData(ds, f"{name}:{split}")
    d = _manifest_data(manifest or {})
    if d is None:
        return EvalData(None, "", "bundle records no dataset (pass --data DATASET:ROOT)")
    name = d.get("dataset") or d.get("name")
    options = d.get("options") or {}
    split = split or d.get("val_split") or "val"
    try:
        cfg = DataConfig(dataset=name, root=d.get("root"), options=dict(options))
        ds = build_dataset(cfg, split)
    except ApdError as exc:
        return EvalData(None, f"{name}:{split}", f"dataset unavailable ({exc}); pass --data DATASET:ROOT")
    return EvalData(ds, f"{name}:{split}")


def evaluate_predictor(predict: Callable[[np.ndarray], np.ndarray], dataset, num_classes: int,
                       max_images: int | None = None, extra_classes: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``predict(rgb uint8) -> HxW labels`` over ``dataset`` (all, or ``max_images`` evenly spaced);
    mIoU as a fraction.

    ``num_classes``: the model's outputs; ``extra_classes``: its declared trailing outputs the dataset does
    not label (manifest ``extra_classes``), scored as errors and left out of the mean.
    """
    from ..data.scoring import scored_indices
    from ..metrics import ConfusionMatrix, scored_classes

    scored = scored_classes(num_classes, getattr(dataset, "num_classes", num_classes - len(extra_classes or [])),
                            extra_classes, "the model")
    idx = scored_indices(len(dataset), max_images)  # the rule eval and export parity use
    n = len(idx)
    if n == 0:
        raise ApdError("the evaluation split has no images")
    cm = ConfusionMatrix(scored, extra_classes=num_classes - scored)
    for i in idx:
        image, mask = dataset[i]
        pred = predict(image)
        if pred.shape != mask.shape:
            raise ApdError(f"prediction shape {pred.shape} differs from mask shape {mask.shape} (image {i})")
        cm.update(pred, mask)
    res = cm.compute()
    return {"miou": float(res["miou"]), "acc": float(res["acc"]), "n": n, "total": len(dataset)}
