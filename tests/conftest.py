"""Shared fixtures. Real-data tests find CamVid at $APD_CAMVID or ../shared/data/camvid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the suite's own processes load the machine: CLI tests that count output lines must not see the
# "load average exceeds the cores" warning (its logic is tested directly in test_daily_loop.py)
os.environ.setdefault("APD_EDGE_NO_LOAD_WARNING", "1")


def camvid_path() -> Path:
    return Path(os.environ.get("APD_CAMVID", REPO.parent / "shared" / "data" / "camvid"))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = camvid_path()
    if not (root / "train").is_dir():
        pytest.skip(f"CamVid copy not found at {root} (set APD_CAMVID to run real-data tests)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
