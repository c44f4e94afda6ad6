"""Short real training runs on the synthetic dataset (tiny ESPNet, 64x64 crops, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch

from apd_edge.config import recipe_from_dict
from apd_edge.engine import checkpoint as ckpt_mod
from apd_edge.engine.trainer import train
from apd_edge.errors import ApdError
from helpers.training import TINY, tiny_recipe  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny steps run on one torch thread


def _records(run, kind):
    return [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_train_writes_a_complete_run_folder(tmp_path):
    run = train(recipe_from_dict(tiny_recipe(tmp_path)), progress=False)
    assert run == tmp_path / "runs" / "run"
    for f in ("recipe.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run / f).is_file(), f
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and str(latest.readlink()) == "run"
    train_recs = _records(run, "train")
    assert [r["step"] for r in train_recs] == [2, 4, 6, 8]
    assert all({"loss", "ce", "lr", "img_s"} <= set(r) for r in train_recs)
    assert train_recs[0]["lr"] > train_recs[-1]["lr"] > 0
    assert [r["step"] for r in _records(run, "eval")] == [4, 8]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["method"] == "none" and summary["params"] > 0
    # a checkpoint is data: plain torch.load with weights_only=True reads it
    raw = torch.load(run / "last.pt", weights_only=True)
    assert raw["step"] == 8 and raw["model_name"] == "espnet" and raw["num_classes"] == 10
    assert {"optimizer", "scheduler", "rng", "distiller", "distiller_extra", "recipe", "classes", "palette"} <= set(raw)
    assert raw["scheduler"]["last_step"] == 8
    model, _ = ckpt_mod.model_from_checkpoint(run)
    assert sum(p.numel() for p in model.parameters()) > 0
    # a second fresh run into the same folder is refused
    with pytest.raises(ApdError, match="--resume"):
        train(recipe_from_dict(tiny_recipe(tmp_path)), progress=False)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    # 10 steps over 4 batches per epoch: the interruption (step 7) and the checkpoint (step 6) are mid-epoch
    kw = dict(iterations=10, ckpt_interval=3, eval_interval=7, log_interval=1)
    ref = train(recipe_from_dict(tiny_recipe(tmp_path, "ref", **kw)), progress=False)

    class Interrupt(Exception):
        pass

    def stop_at_7(step):
        if step == 7:
            raise Interrupt

    recipe = recipe_from_dict(tiny_recipe(tmp_path, "cut", **kw))
    with pytest.raises(Interrupt):
        train(recipe, progress=False, on_step=stop_at_7)
    run = tmp_path / "runs" / "cut"
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 6
    assert [r["step"] for r in _records(run, "train")] == list(range(1, 8))
    train(recipe, resume=True, progress=False)

    steps = [r["step"] for r in _records(run, "train")]
    assert steps == list(range(1, 11))  # continues: no gap, no duplicate
    a = torch.load(run / "last.pt", weights_only=True)
    b = torch.load(ref / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ref_loss = [r["loss"] for r in _records(ref, "train")]
    cut_loss = [r["loss"] for r in _records(run, "train")]
    assert cut_loss == pytest.approx(ref_loss, rel=1e-6)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from apd_edge.distill import base

    recipe = recipe_from_dict(tiny_recipe(tmp_path, iterations=8, ckpt_interval=2))
    real = base.task_loss
    calls = {"n": 0}

    def poisoned(outputs, labels, aux_weights, ignore_index=255):
        calls["n"] += 1
        total, parts = real(outputs, labels, aux_weights, ignore_index)
        if calls["n"] >= 5:
            total = total * float("nan")
            parts["ce"] = total.detach()
        return total, parts

    monkeypatch.setattr(base, "task_loss", poisoned)
    with pytest.raises(ApdError, match=r"loss became nan at step 5 \(ce=nan.*last good checkpoint: .*last\.pt"):
        train(recipe, progress=False)
    # the weights of step 4 produced the nan (the guard cannot tell weights from data): that checkpoint is set
    # aside as diverged.pt and the one before it, whose weights gave a finite loss, is last.pt again
    last = torch.load(tmp_path / "runs" / "run" / "last.pt", weights_only=True)
    assert last["step"] == 2
    assert torch.load(tmp_path / "runs" / "run" / "diverged.pt", weights_only=True)["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_absurd_learning_rate_is_caught(tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tmp_path, iterations=30, lr=1e12, warmup_iters=0, head_lr_mult=1.0,
                                          momentum=0.0, eval_interval=100, ckpt_interval=100))
    with pytest.raises(ApdError, match="loss became nan at step"):
        train(recipe, progress=False)
    assert not (tmp_path / "runs" / "run" / "last.pt").exists()


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ApdError) as exc:
        ckpt_mod.load_checkpoint(bad)
    assert "corrupt" in str(exc.value) and "\n" not in str(exc.value)
