"""Export-time parity: ONNX Runtime (CPU) against PyTorch on real images, for every ONNX precision.

Per precision: max / mean absolute logit difference, argmax agreement (% of pixels, on the original
image after the runtime's postprocessing), and mIoU of PyTorch and of the ONNX model against the ground
truth. Both sides see the identical preprocessed input (the bundle's preprocessing).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..metrics import ConfusionMatrix
from ..runtime.postprocess import logits_to_labels
from ..runtime.preprocess import preprocess_image

FP32_MIN_AGREEMENT = 99.9  # % of pixels; below this the export fails


def _miou(cm: ConfusionMatrix) -> float | None:
    v = float(cm.compute()["miou"])
    return None if v != v else v  # NaN (nothing labelled) -> None, so the manifest stays valid JSON


def pick_indices(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)``: the rule eval and bench score by (data.scoring)."""
    from ..data.scoring import scored_indices

    return scored_indices(n_total, n)


def run_parity(model: torch.nn.Module, backends: dict[str, object], images: Sequence, prep: dict,
               num_classes: int, log: Callable[[str], None] | None = None,
               extra_classes: int = 0) -> dict[str, dict]:
    """Compare ``backends`` (precision -> object with ``infer(x) -> {"logits": ...}``) to ``model``.

    ``images`` yields ``(uint8 RGB image, mask or None)``; ``prep`` holds size/mean/std/mode/pad_fill.
    ``num_classes``: the scored (labelled) classes; ``extra_classes``: trailing outputs scored as errors.
    """
    model = model.eval()
    cm_torch = ConfusionMatrix(num_classes, extra_classes=extra_classes)
    cms = {p: ConfusionMatrix(num_classes, extra_classes=extra_classes) for p in backends}
    stats = {p: {"max_abs_diff": 0.0, "sum_abs_diff": 0.0, "n_values": 0, "agree": 0, "pixels": 0} for p in backends}
    have_masks = True
    n = 0
    for img, mask in images:
        x, meta = preprocess_image(img, tuple(prep["size"]), prep["mean"], prep["std"], prep["mode"],
                                   prep.get("pad_fill", "reflect"))
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).float().numpy()
        ref_lab = logits_to_labels(ref, meta)
        if mask is None:
            have_masks = False
        else:
            cm_torch.update(ref_lab, mask)
        for p, be in backends.items():
            out = be.infer(x, ["logits"])["logits"].astype(np.float32)
            d = np.abs(out - ref)
            s = stats[p]
            s["max_abs_diff"] = max(s["max_abs_diff"], float(d.max()))
            s["sum_abs_diff"] += float(d.sum())
            s["n_values"] += d.size
            lab = logits_to_labels(out, meta)
            s["agree"] += int((lab == ref_lab).sum())
            s["pixels"] += lab.size
            if mask is not None:
                cms[p].update(lab, mask)
        n += 1
        if log and n % 25 == 0:
            log(f"  parity: {n} images")
    miou_t = _miou(cm_torch) if have_masks and n else None
    res = {}
    for p, s in stats.items():
        miou = _miou(cms[p]) if have_masks and n else None
        res[p] = {
            "images": n,
            "max_abs_diff": s["max_abs_diff"],
            "mean_abs_diff": s["sum_abs_diff"] / max(1, s["n_values"]),
            "agreement": 100.0 * s["agree"] / max(1, s["pixels"]),
            "miou_torch": None if miou_t is None else 100.0 * miou_t,
            "miou": None if miou is None else 100.0 * miou,
            "miou_delta": None if miou is None or miou_t is None else 100.0 * (miou - miou_t),
        }
    return res


def parity_table(parity: dict[str, dict]) -> str:
    """An aligned text table of parity results (mIoU in %)."""
    from ..tables import text_table

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = ("precision", "images", "max|dlogit|", "mean|dlogit|", "agree %", "mIoU torch", "mIoU onnx", "delta")
    body = [(p, r["images"], f(r["max_abs_diff"], ".2e"), f(r["mean_abs_diff"], ".2e"), f(r["agreement"], ".3f"),
             f(r["miou_torch"], ".2f"), f(r["miou"], ".2f"), f(r["miou_delta"], "+.2f")) for p, r in parity.items()]
    return text_table(head, body, align="lrrrrrrr", rule=False)
