"""The checkpoint module below engine/distill/runtime: one run-folder lookup, used by every consumer, and
no torch at import time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apd_edge.checkpoint import checkpoint_file, find_checkpoint
from apd_edge.errors import ApdError

ROOT = Path(__file__).resolve().parents[1]


def test_find_checkpoint_prefers_best_then_last(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert find_checkpoint(run) is None
    (run / "last.pt").write_bytes(b"x")
    assert find_checkpoint(run) == run / "last.pt"
    (run / "best.pt").write_bytes(b"x")
    (run / "prev.pt").write_bytes(b"x")
    assert find_checkpoint(run) == run / "best.pt"


def test_checkpoint_file_errors_name_the_folder_or_file(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    assert checkpoint_file(tmp_path / "a.pt") == tmp_path / "a.pt"
    with pytest.raises(ApdError, match=r"^no best\.pt or last\.pt in run folder .*empty$"):
        (tmp_path / "empty").mkdir()
        checkpoint_file(tmp_path / "empty")
    with pytest.raises(ApdError, match=r"^checkpoint not found: .*nope\.pt$"):
        checkpoint_file(tmp_path / "nope.pt")


def test_every_consumer_resolves_a_run_folder_the_same_way(tmp_path):
    """load_checkpoint, export's resolve_checkpoint and bench's artifact_kind all take last.pt when best.pt is
    missing, and best.pt once it exists."""
    torch = pytest.importorskip("torch")
    from apd_edge.bench.artifacts import artifact_kind
    from apd_edge.checkpoint import load_checkpoint, save_checkpoint
    from apd_edge.export.bundle import resolve_checkpoint

    run = tmp_path / "run"
    save_checkpoint({"step": 5, "w": torch.zeros(2)}, run / "last.pt")
    assert load_checkpoint(run)["step"] == 5
    assert resolve_checkpoint(run) == (run / "last.pt").resolve()
    assert artifact_kind(run) == "checkpoint"
    save_checkpoint({"step": 3, "w": torch.zeros(2)}, run / "best.pt")
    assert load_checkpoint(run)["step"] == 3
    assert resolve_checkpoint(run) == (run / "best.pt").resolve()
    (run / "best.pt").unlink()
    (run / "last.pt").unlink()
    with pytest.raises(ApdError, match="no best.pt or last.pt in run folder"):
        resolve_checkpoint(run)
    with pytest.raises(ApdError, match="not a bundle folder"):
        artifact_kind(run)


def test_importing_the_checkpoint_module_imports_no_torch():
    """Torch-free code (bench's artifact lookup, the runtime) imports it; torch comes only with a load or save."""
    code = ("import sys\nimport apd_edge.checkpoint, apd_edge.targets, apd_edge.tables\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('OK')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stderr[-2000:]
