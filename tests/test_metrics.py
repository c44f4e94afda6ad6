"""Confusion-matrix metrics against a direct per-class set count, with ignored and absent classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apd_edge.metrics import ConfusionMatrix, miou


def reference(pred: np.ndarray, target: np.ndarray, n: int, ignore: int = 255) -> dict:
    """Independent computation: per class, count the sets of pixels directly."""
    valid = target != ignore
    ious, accs = [], []
    for c in range(n):
        p, t = (pred == c) & valid, (target == c) & valid
        inter, union = np.logical_and(p, t).sum(), np.logical_or(p, t).sum()
        ious.append(inter / union if union else math.nan)
        accs.append(inter / t.sum() if t.sum() else math.nan)
    present = [x for x in ious if not math.isnan(x)]
    correct = ((pred == target) & valid).sum()
    return {"iou": ious, "miou": sum(present) / len(present), "acc": correct / valid.sum(),
            "macc": np.nanmean(accs)}


def random_case(seed: int, n: int = 7):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, n - 2, (3, 40, 50))  # classes n-2, n-1 never labelled
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, n - 1, target.shape))  # n-1 never predicted
    target[rng.random(target.shape) < 0.1] = 255
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_reference(seed):
    pred, target = random_case(seed)
    cm = ConfusionMatrix(7)
    for p, t in zip(pred, target):  # accumulated image by image
        cm.update(p, t)
    r, ref = cm.compute(), reference(pred, target, 7)
    np.testing.assert_allclose(r["iou"][:6], ref["iou"][:6], rtol=1e-12)
    assert math.isnan(r["iou"][6]) and r["present"] == [True] * 6 + [False]
    assert r["iou"][5] == 0.0  # predicted but never labelled: present, IoU 0, counts in the mean
    assert r["miou"] == pytest.approx(ref["miou"], rel=1e-12)
    assert r["acc"] == pytest.approx(ref["acc"], rel=1e-12)
    assert r["macc"] == pytest.approx(ref["macc"], rel=1e-12)
    assert r["pixels"] == int((target != 255).sum())
    assert miou(pred, target, 7) == pytest.approx(ref["miou"], rel=1e-12)


def test_torch_inputs_and_logits_match_numpy():
    pred, target = random_case(3)
    a, b, c = ConfusionMatrix(7), ConfusionMatrix(7), ConfusionMatrix(7)
    a.update(pred, target)
    b.update(torch.from_numpy(pred), torch.from_numpy(target))
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 7).permute(0, 3, 1, 2).float()
    c.update(logits, torch.from_numpy(target))
    np.testing.assert_array_equal(a.mat, b.mat)
    np.testing.assert_array_equal(a.mat, c.mat)


def test_perfect_and_out_of_range():
    t = np.array([[0, 1], [2, 255]])
    cm = ConfusionMatrix(4)
    cm.update(t.copy(), t)
    r = cm.compute()
    assert r["miou"] == 1.0 and r["acc"] == 1.0 and math.isnan(r["iou"][3])
    with pytest.raises(ValueError, match="prediction value 9"):
        cm.update(np.array([[9, 0]]), np.array([[1, 0]]))


def test_table_and_reduce_without_dist():
    pred, target = random_case(4)
    cm = ConfusionMatrix(7)
    cm.update(pred, target)
    before = cm.mat.copy()
    assert cm.reduce_() is cm and np.array_equal(cm.mat, before)
    names = ["road", "car", "tree", "sky", "wall", "pole", "sign"]
    text = cm.table(names)
    lines = text.splitlines()
    assert len(lines) == 9 and lines[0].split()[:2] == ["class", "IoU"]
    assert lines[7].split()[0] == "sign" and lines[7].split()[1] == "-"  # absent class
    assert f"{100 * cm.compute()['miou']:5.1f}".strip() in lines[-1]


def _reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pred, target = random_case(10 + rank)  # each rank counts different pixels
        cm = ConfusionMatrix(7)
        cm.update(pred, target)
        np.save(f"{out_dir}/local{rank}.npy", cm.mat)
        assert cm.reduce_() is cm
        np.save(f"{out_dir}/reduced{rank}.npy", cm.mat)
    finally:
        dist.destroy_process_group()


def test_reduce_sums_over_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    local = [np.load(tmp_path / f"local{r}.npy") for r in (0, 1)]
    hand = []
    for r in (0, 1):  # the same counts, made here without any process group
        cm = ConfusionMatrix(7)
        cm.update(*random_case(10 + r))
        hand.append(cm.mat)
        np.testing.assert_array_equal(local[r], cm.mat)
    assert not np.array_equal(hand[0], hand[1])
    for r in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"reduced{r}.npy"), hand[0] + hand[1])
    # the reduced matrix scores the union of both ranks' pixels
    (p0, t0), (p1, t1) = random_case(10), random_case(11)
    merged = ConfusionMatrix(7)
    merged.mat = np.load(tmp_path / "reduced1.npy")
    ref = reference(np.concatenate([p0, p1]), np.concatenate([t0, t1]), 7)
    assert merged.compute()["miou"] == pytest.approx(ref["miou"], rel=1e-12)
