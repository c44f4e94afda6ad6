"""The embedded synthetic street scenes: determinism, class coverage, sizes, speed, folder export."""

from __future__ import annotations

import time

import numpy as np
import pytest

from apd_edge.config import DataConfig
from apd_edge.data import build_dataset
from apd_edge.data.synthetic import SYNTH_CLASSES, write_synthetic
from apd_edge.errors import ApdError


def synth(split="train", **opts) -> object:
    return build_dataset(DataConfig(options={"num_train": 16, "num_val": 4, "size": [96, 128], **opts}), split)


def test_deterministic_by_seed_and_index():
    a, b = synth(seed=3), synth(seed=3)
    order = [5, 0, 5]
    first = [a[i] for i in order]
    for i, (img, mask) in zip(order, first):
        img2, mask2 = b[i]  # another instance, different access order: identical arrays
        np.testing.assert_array_equal(img, img2)
        np.testing.assert_array_equal(mask, mask2)
    other = synth(seed=4)[5]
    assert not np.array_equal(other[0], first[0][0]) and not np.array_equal(other[1], first[0][1])
    assert not np.array_equal(a[1][0], a[2][0])
    assert not np.array_equal(synth("val", seed=3)[0][0], a[0][0])  # val is not a copy of train


def test_every_class_appears_and_shapes():
    ds = synth()
    assert ds.num_classes == len(SYNTH_CLASSES) == 10 and len(ds.palette) == 10
    seen = np.zeros(256, np.int64)
    for i in range(12):
        img, mask = ds[i]
        assert img.shape == (96, 128, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 128) and mask.dtype == np.uint8
        seen += np.bincount(mask.ravel(), minlength=256)
    assert (seen[:10] > 0).all(), dict(zip(SYNTH_CLASSES, seen[:10]))
    assert seen[10:].sum() == 0
    # texture and lighting vary: images are not flat colour fills
    assert ds[0][0].std() > 20


def test_colour_alone_is_ambiguous():
    """Mean colours of different classes overlap across images (e.g. grey cars on grey roads)."""
    ds = synth(num_train=24)
    means = {c: [] for c in range(10)}
    for i in range(24):
        img, mask = ds[i]
        for c in np.unique(mask):
            means[int(c)].append(img[mask == c].mean(0))
    car = np.array(means[5])
    others = np.concatenate([np.array(means[c]) for c in (0, 2, 4)])  # road, building, vegetation
    nearest = np.linalg.norm(car[:, None] - others[None], axis=-1).min(1)
    assert (nearest < 30).mean() > 0.3  # many cars have a near-twin colour among other classes


def test_small_size_and_speed():
    ds = synth(size=[64, 64])
    img, mask = ds[0]
    assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
    ds = synth(size=[128, 128])
    ds[0]
    t = time.perf_counter()
    for i in range(10):
        ds[i]
    per_image = (time.perf_counter() - t) / 10
    assert per_image < 0.1, f"{per_image * 1000:.1f} ms per 128x128 image"


def test_bad_options():
    with pytest.raises(ApdError, match=r"data.options.size: expected \[H, W\] integers >= 64"):
        synth(size=[32, 64])
    with pytest.raises(ApdError, match=r"split 'val' is empty"):
        synth("val", num_val=0)


def test_write_synthetic_reads_back_as_folder(tmp_path):
    out = write_synthetic(tmp_path / "syn", num_train=3, num_val=2, size=(64, 96), seed=7, progress=False)
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    folder = build_dataset(DataConfig(dataset="folder", root=str(out)), "val")
    gen = build_dataset(DataConfig(options={"num_val": 2, "size": [64, 96], "seed": 7}), "val")
    assert folder.class_names == gen.class_names and folder.palette == gen.palette and len(folder) == 2
    for i in range(2):
        np.testing.assert_array_equal(folder[i][0], gen[i][0])
        np.testing.assert_array_equal(folder[i][1], gen[i][1])
