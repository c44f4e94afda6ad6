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


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny convolutions gain nothing from a second thread, and on a busy
    machine two OpenMP threads waiting on each other make a step 10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-init ESPNet bundle (10 synthetic classes, 64x96, FP32/FP16/INT8), exported once per session.
    Shared: a test that changes it works on a copy."""
    from helpers.bundles import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture(scope="session")
def folder_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(bundle, checkpoint, data root): ESPNet on a 4-class folder dataset, 64x64, FP32/INT8; once per session."""
    from helpers.bundles import build_folder_bundle

    return build_folder_bundle(tmp_path_factory.mktemp("folder_bundle"))
