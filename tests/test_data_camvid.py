"""The real CamVid copy read end to end (skipped when absent)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from apd_edge.config import DataConfig
from apd_edge.data import build_dataset


@pytest.mark.camvid
def test_camvid_all_pairs(camvid_root):
    def read(args) -> np.ndarray:
        ds, i = args
        img, mask = ds[i]  # OpenCV releases the GIL while decoding: two threads halve the wall time
        assert img.shape == (360, 480, 3) and mask.shape == (360, 480)
        return np.bincount(mask.ravel(), minlength=256)

    counts = np.zeros(256, np.int64)
    for split, n in (("train", 367), ("val", 101)):
        ds = build_dataset(DataConfig(dataset="camvid", root=str(camvid_root)), split)
        assert len(ds) == n
        with ThreadPoolExecutor(2) as pool:
            counts += sum(pool.map(read, [(ds, i) for i in range(n)]))
    present = set(np.nonzero(counts)[0].tolist())
    assert present <= set(range(11)) | {255}
    assert set(range(11)) <= present and 255 in present  # every class and the (remapped) void occur
    assert counts.sum() == 468 * 360 * 480
