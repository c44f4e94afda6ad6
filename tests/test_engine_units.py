"""Engine pieces without a training run: schedule, RNG state, run folder, inference helpers."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from apd_edge.config import recipe_from_dict
from apd_edge.engine.inference import predict_scores, sliding_window_scores
from apd_edge.engine.run import MetricsLog, point_latest, prepare_run_dir
from apd_edge.engine.schedule import WarmupPolyLR, lr_factor
from apd_edge.engine.trainer import rng_state, set_rng_state
from apd_edge.errors import ApdError


def test_lr_factor_warmup_then_poly():
    assert lr_factor(0, 100, warmup_iters=10, warmup_ratio=0.1, power=1.0) == pytest.approx(0.1)
    assert lr_factor(5, 100, 10, 0.1, 1.0) == pytest.approx(0.95 * 0.55)
    assert lr_factor(10, 100, 10, 0.1, 1.0) == pytest.approx(0.9)
    assert lr_factor(50, 100, 0, 0.1, 0.9) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, 0, 0.1, 0.9) == 0.0
    vals = [lr_factor(s, 100, 10, 0.1, 0.9) for s in range(10, 101)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


def test_scheduler_keeps_group_ratio_and_state_roundtrip():
    w = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [w[0]], "lr": 0.01, "lr_mult": 1.0},
                           {"params": [w[1]], "lr": 0.1, "lr_mult": 10.0}], lr=0.01)
    sched = WarmupPolyLR(opt, total=20, warmup_iters=4, warmup_ratio=0.25, power=0.9)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0025)
    for _ in range(7):
        sched.step()
    lrs = sched.get_last_lr()
    assert lrs[1] == pytest.approx(10 * lrs[0])
    assert lrs[0] == pytest.approx(0.01 * (1 - 7 / 20) ** 0.9)
    opt2 = torch.optim.SGD([{"params": [w[0]], "lr": 0.01}, {"params": [w[1]], "lr": 0.1}], lr=0.01)
    sched2 = WarmupPolyLR(opt2, total=20, warmup_iters=4, warmup_ratio=0.25, power=0.9)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    sched2.load_state_dict(torch.load(buf, weights_only=True))
    assert sched2.get_last_lr() == pytest.approx(lrs)


def test_rng_state_is_plain_data_and_restores_every_stream():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    a = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    set_rng_state(loaded)
    b = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    assert a == b


def test_fresh_run_refuses_existing_last_pt(tmp_path):
    recipe = recipe_from_dict({"name": "x", "output_dir": str(tmp_path)})
    run = prepare_run_dir(recipe, resume=False)
    assert run == tmp_path / "x" and run.is_dir()
    with pytest.raises(ApdError, match="--resume"):
        prepare_run_dir(recipe_from_dict({"name": "y", "output_dir": str(tmp_path)}), resume=True)
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(ApdError, match=r"--resume.*--set name="):
        prepare_run_dir(recipe, resume=False)
    assert prepare_run_dir(recipe, resume=True) == run


def test_latest_symlink_is_relative(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        point_latest(tmp_path / name)
    link = tmp_path / "latest"
    assert link.is_symlink() and str(link.readlink()) == "b"
    assert link.resolve() == (tmp_path / "b").resolve()


def test_metrics_log_truncates_records_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for s in (2, 4, 4, 6, 8):
        log.write({"type": "train", "step": s, "loss": float("nan") if s == 8 else 1.0})
    with log.path.open("a") as f:
        f.write('{"step": 9, "loss"')  # a line cut by a crash
    log.truncate_after(4)
    assert [r["step"] for r in log.read()] == [2, 4, 4]
    assert json.loads(log.path.read_text().splitlines()[0])["loss"] == 1.0


class _Pointwise(nn.Module):
    """A 1x1 conv: its output at a pixel depends only on that pixel (flip/window invariant)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_inference_modes_agree_on_a_pointwise_model():
    model = _Pointwise().eval()
    x = torch.randn(2, 3, 50, 70)  # not a multiple of 32: padded and cropped back
    plain = predict_scores(model, x)
    assert plain.shape == (2, 4, 50, 70)
    assert torch.allclose(plain, model(x), atol=1e-5)
    prob = model(x).softmax(1)
    assert torch.allclose(predict_scores(model, x, flip=True), prob, atol=1e-5)
    assert torch.allclose(sliding_window_scores(model, x, (32, 32), (20, 24)), prob, atol=1e-5)
    assert torch.allclose(predict_scores(model, x, window=(32, 64)), prob, atol=1e-5)
    both = predict_scores(model, x, flip=True, scales=(1.0, 0.5))
    assert both.shape == (2, 4, 50, 70)
    assert torch.allclose(both.sum(1), torch.ones(2, 50, 70), atol=1e-4)


def test_flip_averaging_flips_back():
    class LeftHalf(nn.Module):
        """Class 1 on the left half of the input, class 0 elsewhere (position-dependent)."""

        def forward(self, x):
            out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            out[:, 1, :, : x.shape[-1] // 2] = 10.0
            out[:, 0, :, x.shape[-1] // 2:] = 10.0
            return out

    x = torch.zeros(1, 3, 32, 64)
    scores = predict_scores(LeftHalf(), x, flip=True)
    # the flipped pass, flipped back, votes for class 1 on the right half: both halves tie at 0.5
    assert torch.allclose(scores, torch.full_like(scores, 0.5), atol=1e-3)
