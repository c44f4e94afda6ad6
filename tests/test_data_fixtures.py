"""The dataset writers of helpers/data.py write what they claim."""

from __future__ import annotations

import cv2
import numpy as np

from helpers.data import mask_from, png


def test_fixture_writers_roundtrip(tmp_path):
    m = mask_from([0, 3, 11])
    assert cv2.imread(str(png(tmp_path / "m.png", m)), cv2.IMREAD_UNCHANGED).tolist() == m.tolist()
    assert sorted(np.unique(m).tolist()) == [0, 3, 11]
