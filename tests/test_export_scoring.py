"""Export scores mIoU with the one confusion matrix (metrics.ConfusionMatrix): parity and the INT8 search.

Issue 17 removed two private copies (``parity._Confusion`` and the matrix inside ``int8._miou``). The old
INT8 formula is kept here as a reference: the counts are integers, so wherever both definitions agree on
which classes enter the mean (every predicted class has ground truth in the scored images) the results
are bit-identical; they differ only where a class is predicted but never labelled, which the house's mean
(eval, bench, parity) scores as IoU 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from apd_edge.export.int8 import _miou as int8_miou
from apd_edge.export.parity import run_parity
from apd_edge.metrics import ConfusionMatrix
from apd_edge.runtime.postprocess import logits_to_labels


def old_int8_miou(labels, masks, num_classes, scored):
    """``int8._miou`` before issue 17 (mean over the classes with ground truth)."""
    n = max(num_classes, scored or 0)
    mat = np.zeros((n, n), np.int64)
    for lab, mask in zip(labels, masks):
        keep = mask != 255
        t, p = mask[keep].astype(np.int64), lab[keep].astype(np.int64)
        mat += np.bincount(t * n + p, minlength=n * n).reshape(n, n)
    k = scored or num_classes
    tp = np.diag(mat)[:k].astype(np.float64)
    gt = mat.sum(1)[:k]
    union = gt + mat.sum(0)[:k] - tp
    present = gt > 0
    return float(100.0 * (tp[present] / np.maximum(union[present], 1)).mean())


def _case(seed: int, outputs: int, scored: int, n_img: int = 4, hw=(12, 17)):
    rng = np.random.default_rng(seed)
    masks = [rng.integers(0, scored, hw) for _ in range(n_img)]
    for m in masks:
        m[rng.random(hw) < 0.2] = 255  # ignored pixels
        m.flat[:scored] = np.arange(scored)  # every scored class labelled somewhere
    labels = [np.where(rng.random(hw) < 0.6, np.where(m == 255, 0, m), rng.integers(0, outputs, hw)) for m in masks]
    return labels, masks


def test_int8_miou_is_bit_identical_to_before_when_predicted_classes_are_labelled():
    for seed in range(20):
        for outputs, scored in ((5, None), (12, 11), (4, 3)):
            labels, masks = _case(seed, outputs, scored or outputs)
            new, old = int8_miou(labels, masks, outputs, scored), old_int8_miou(labels, masks, outputs, scored)
            assert new == old  # bit-identical, not approximately
            cm = ConfusionMatrix(scored or outputs, extra_classes=outputs - (scored or outputs))
            for lab, mask in zip(labels, masks):
                cm.update(lab, mask)
            assert new == 100.0 * cm.compute()["miou"]


def test_int8_miou_hand_counted_with_an_extra_class():
    # 2 scored classes + 1 extra (void) output. Class 0: tp 1, labelled 2, predicted 1 -> 1/2.
    # Class 1: tp 1, labelled 2, predicted 2 -> 1/3. The void prediction is a miss of class 1; 255 is ignored.
    mask = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 2, 2]])
    assert int8_miou([pred], [mask], 3, 2) == 100.0 * (1 / 2 + 1 / 3) / 2


def test_int8_miou_counts_a_predicted_but_unlabelled_class_as_eval_does():
    mask = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])  # class 2 predicted once, never labelled
    assert int8_miou([pred], [mask], 3, None) == 100.0 * (1 / 2 + 1 + 0) / 3  # eval's mean: IoU 0 for class 2
    assert old_int8_miou([pred], [mask], 3, None) == 100.0 * (1 / 2 + 1) / 2  # the old INT8 mean left it out


class _Backend:
    """An ONNX-backend stand-in returning the PyTorch logits with one class boosted on some pixels."""

    def __init__(self, model: nn.Module, boost: int) -> None:
        self.model, self.boost = model, boost

    def infer(self, x, names):
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x)).numpy().copy()
        out[:, self.boost, ::3, ::2] += 100.0
        return {"logits": out}


def test_parity_miou_is_the_confusion_matrix_miou():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1).eval()  # 3 scored classes + 1 extra output
    prep = {"size": [16, 24], "mean": [0.5] * 3, "std": [0.25] * 3, "mode": "pad", "pad_fill": "reflect"}
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8), rng.integers(0, 3, (16, 24))) for _ in range(3)]
    images[0][1][:2] = 255
    res = run_parity(model, {"x": _Backend(model, 3)}, images, prep, 3, extra_classes=1)["x"]
    from apd_edge.runtime.preprocess import preprocess_image

    cm_t, cm_b = ConfusionMatrix(3, extra_classes=1), ConfusionMatrix(3, extra_classes=1)
    backend = _Backend(model, 3)
    for img, mask in images:
        x, meta = preprocess_image(img, (16, 24), prep["mean"], prep["std"], "pad", "reflect")
        with torch.inference_mode():
            cm_t.update(logits_to_labels(model(torch.from_numpy(x)).numpy(), meta), mask)
        cm_b.update(logits_to_labels(backend.infer(x, ["logits"])["logits"], meta), mask)
    assert res["miou_torch"] == 100.0 * cm_t.compute()["miou"]
    assert res["miou"] == 100.0 * cm_b.compute()["miou"]
    assert res["miou"] < res["miou_torch"]  # the boosted extra class costs accuracy: counted as errors
