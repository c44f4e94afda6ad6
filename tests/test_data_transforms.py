"""Transforms keep image and mask aligned; the loader yields normalised batches deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apd_edge.config import IGNORE_INDEX, AugmentConfig, recipe_from_dict
from apd_edge.data import build_loader
from apd_edge.data.transforms import EvalTransform, TrainTransform, normalize_image

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def coded(h=96, w=128, block=16):
    """Mask = block id (0..254 pattern, asymmetric); image encodes the same id in channel 0 and y, x in 1, 2."""
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // block) * 7 + (xx // block) * 3 + (xx // block) ** 2) % 23
    img = np.stack([mask * 10 + 5, yy * 255 // h, xx * 255 // w], -1).astype(np.uint8)
    return img, mask.astype(np.uint8)


def decode(out_img: np.ndarray) -> np.ndarray:
    """Undo normalisation, read the block id back from channel 0."""
    rgb = (out_img.transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)) * 255
    return np.clip(np.round((rgb[..., 0] - 5) / 10), 0, 255).astype(np.int64)


def interior(lab: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood has one label (away from block borders and padding)."""
    import cv2

    lab8, k = lab.astype(np.uint8), np.ones((3, 3), np.uint8)
    return (cv2.erode(lab8, k) == cv2.dilate(lab8, k)) & (lab != IGNORE_INDEX)


def test_normalize_image():
    img = np.full((2, 3, 3), 255, np.uint8)
    out = normalize_image(img, MEAN, STD)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], (1 - np.array(MEAN)) / np.array(STD), rtol=1e-5)


def test_crop_flip_pad_exact():
    img, mask = coded(48, 64)
    t = TrainTransform([96, 96], AugmentConfig(scale=[1.0, 1.0], flip=True, jitter=0.0), MEAN, STD)
    flips = set()
    for seed in range(12):
        out, lab = t(img, mask, np.random.default_rng(seed))
        _, _, geo = t.geometry(img, mask, np.random.default_rng(seed))
        flips.add(geo.flip)
        assert out.shape == (3, 96, 96) and lab.shape == (96, 96) and lab.dtype == np.int64
        valid = lab != IGNORE_INDEX
        assert valid.sum() == 48 * 64  # the whole image survives the (padded) crop
        np.testing.assert_array_equal(decode(out)[valid], lab[valid])
        np.testing.assert_allclose(out[:, ~valid], 0, atol=0.01)  # image padding = mean colour -> 0
        # the original is recovered exactly by undoing the flip
        rows, cols = np.nonzero(valid)
        crop = lab[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        np.testing.assert_array_equal(crop[:, ::-1] if geo.flip else crop, mask)
    assert flips == {True, False}


@pytest.mark.parametrize("rotate", [0.0, 15.0])
def test_scale_rotate_crop_alignment(rotate):
    img, mask = coded()
    aug = AugmentConfig(scale=[0.75, 1.75], flip=True, jitter=0.0, rotate=rotate)
    t = TrainTransform([64, 64], aug, MEAN, STD)
    for seed in range(8):
        out, lab = t(img, mask, np.random.default_rng(seed))
        valid = lab != IGNORE_INDEX
        agree = (decode(out)[valid] == lab[valid]).mean()
        assert agree > 0.7, (seed, agree)  # block borders blend under linear interpolation
        inner = interior(lab)
        assert inner.sum() > 500 and (decode(out)[inner] == lab[inner]).mean() > 0.95, seed
        # a control that must fail: the mask mirrored against the image
        if valid.all():
            assert (decode(out) == lab[:, ::-1]).mean() < 0.5


def test_photometric_changes_image_not_mask():
    img, mask = coded(64, 64)
    geo_only = TrainTransform([64, 64], AugmentConfig(scale=[1, 1], flip=False, jitter=0.0), MEAN, STD)
    jit = TrainTransform([64, 64], AugmentConfig(scale=[1, 1], flip=False, jitter=0.4, blur=1.0), MEAN, STD)
    a, la = geo_only(img, mask, np.random.default_rng(0))
    b, lb = jit(img, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(la, lb)
    assert np.abs(a - b).mean() > 0.05


def test_eval_transform_normalises_only():
    img, mask = coded(50, 70)
    out, lab = EvalTransform(MEAN, STD)(img, mask)
    assert out.shape == (3, 50, 70) and lab.dtype == np.int64
    np.testing.assert_array_equal(lab, mask)
    np.testing.assert_array_equal(decode(out), mask)


def recipe(workers=0, **data):
    return recipe_from_dict({
        "seed": 5,
        "data": {"dataset": "synthetic", "workers": workers,
                 "options": {"num_train": 8, "num_val": 3, "size": [64, 96]}, **data},
        "train": {"batch_size": 4, "crop": [64, 64]},
        "eval": {"batch_size": 2},
    })


def test_train_loader_batches_and_determinism():
    loader = build_loader(recipe(), "train", train=True)
    assert loader.drop_last and len(loader) == 2
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (4, 64, 64) and labels.dtype == torch.int64
    vals = set(torch.unique(labels).tolist())
    assert vals <= set(range(10)) | {255} and len(vals) > 3
    again, again_l = next(iter(build_loader(recipe(), "train", train=True)))
    assert torch.equal(images, again) and torch.equal(labels, again_l)
    second = next(iter(loader))  # the next epoch draws new augmentation
    assert not torch.equal(images, second[0])


def _drain_images(workers: int) -> list:
    """All image batches of one epoch; the loader (and its persistent workers) is shut down before returning."""
    import gc

    loader = build_loader(recipe(workers=workers), "train", train=True)
    assert loader.persistent_workers and loader.num_workers == workers
    out = [b[0] for b in loader]
    del loader
    gc.collect()  # stop the workers now, not while the next loader forks its own
    return out


def test_worker_loader_is_deterministic():
    a = _drain_images(2)
    b = _drain_images(2)
    assert len(a) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_eval_loader_whole_images():
    loader = build_loader(recipe(), "val", train=False)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [2, 1]  # no drop_last for evaluation
    assert batches[0][0].shape == (2, 3, 64, 96) and batches[0][1].shape == (2, 64, 96)


def test_train_split_smaller_than_batch():
    from apd_edge.errors import ApdError

    with pytest.raises(ApdError, match=r"has 3 images, fewer than one batch"):
        build_loader(recipe(), "val", train=True)


def test_colour_matrix_matches_sequential_jitter():
    from apd_edge.data.transforms import colour_matrix

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (50, 3))
    b, c, s = 1.1, 0.8, 1.3
    f = x * b
    mean = f.mean()
    f = (f - mean) * c + mean
    grey = f @ np.array([0.299, 0.587, 0.114])
    expected = grey[:, None] + (f - grey[:, None]) * s
    m = colour_matrix(b, c, s, 0.0, x.mean())
    np.testing.assert_allclose(x @ m[:, :3].T + m[:, 3], expected, atol=1e-6)
    np.testing.assert_allclose(colour_matrix(1, 1, 1, 0, 0), np.hstack([np.eye(3), np.zeros((3, 1))]), atol=1e-12)
    rot = colour_matrix(1, 1, 1, 0.5, 0)
    np.testing.assert_allclose(rot[:, :3] @ np.full(3, 100.0), np.full(3, 100.0), atol=1e-6)  # greys stay grey
    assert not np.allclose(rot[:, :3] @ np.array([200.0, 50, 50]), [200, 50, 50], atol=5)  # colours turn


def test_shard_sampler_covers_every_image_once():
    from apd_edge.data.loader import ShardSampler

    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10)) and [len(s) for s in shards] == [4, 3, 3]


def test_distributed_loaders(tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        train = build_loader(recipe(), "train", train=True, distributed=True)
        assert isinstance(train.sampler, DistributedSampler) and train.sampler.drop_last and len(train) == 2
        assert next(iter(train))[0].shape == (4, 3, 64, 64)
        val = build_loader(recipe(), "val", train=False, distributed=True)
        assert sum(b[0].shape[0] for b in val) == 3  # every image once
    finally:
        dist.destroy_process_group()
