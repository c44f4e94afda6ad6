"""Pixel-wise KD and channel-wise distillation against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from apd_edge.distill import build_distiller, channel_wise_loss, pixel_kd_loss
from apd_edge.distill.base import NoDistill
from helpers.distill import TinySeg, make_recipe

LN3 = math.log(3.0)


def test_pixel_kd_matches_hand_computation_t1():
    # one pixel, two classes: teacher softmax(ln 3, 0) = (3/4, 1/4), student softmax(0, 0) = (1/2, 1/2)
    s = torch.zeros(1, 2, 1, 1)
    t = torch.tensor([LN3, 0.0]).reshape(1, 2, 1, 1)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # = 0.130812
    # element-wise mean over B x C x H x W = 2 elements, times T^2 = 1
    assert pixel_kd_loss(s, t, (1, 1), 1.0).item() == pytest.approx(kl / 2, rel=1e-6)
    assert kl / 2 == pytest.approx(0.065406, abs=1e-6)


def test_pixel_kd_temperature_and_upsampling():
    s = torch.zeros(1, 2, 1, 1)
    t = torch.tensor([LN3, 0.0]).reshape(1, 2, 1, 1)
    # T = 2: teacher softmax(ln3 / 2, 0) = (sqrt3 / (sqrt3 + 1), 1 / (sqrt3 + 1))
    r3 = math.sqrt(3.0)
    pt = (r3 / (r3 + 1), 1 / (r3 + 1))
    kl = sum(p * math.log(p / 0.5) for p in pt)
    # constant maps upsampled to 4 x 4: every pixel identical, the mean is unchanged; times T^2 = 4
    assert pixel_kd_loss(s, t, (4, 4), 2.0).item() == pytest.approx(kl / 2 * 4, rel=1e-6)


def test_cwd_matches_hand_computation():
    # one image, two channels over two positions, T = 4
    # channel 0: teacher (4 ln3, 0)/4 -> softmax (3/4, 1/4); student zeros -> (1/2, 1/2)
    # channel 1: teacher == student -> KL 0
    t = torch.tensor([[4 * LN3, 0.0], [1.0, 2.0]]).reshape(1, 2, 1, 2)
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]]).reshape(1, 2, 1, 2)
    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # summed over positions, mean over B*C = 2 channels, times T^2 = 16
    expected = (kl0 + 0.0) / 2 * 16
    assert channel_wise_loss(s, t, 4.0).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.046496, abs=1e-6)


def test_cwd_upsamples_the_smaller_map():
    t = torch.randn(2, 3, 8, 8)
    s_small = torch.randn(2, 3, 4, 4)
    s_big = torch.nn.functional.interpolate(s_small, size=(8, 8), mode="bilinear", align_corners=False)
    assert channel_wise_loss(s_small, t).item() == pytest.approx(channel_wise_loss(s_big, t).item(), rel=1e-6)


@pytest.mark.parametrize("method,key,weight", [("kd", "kd", 10.0), ("cwd", "cwd", 3.0)])
def test_distiller_totals(method, key, weight):
    torch.manual_seed(0)
    d = build_distiller(TinySeg(3, 4), TinySeg(3, 4), make_recipe(method)).train()
    out = d(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
    assert out.total.item() == pytest.approx(out.parts["ce"].item() + weight * out.parts[key].item(), rel=1e-5)
    out.total.backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert d.extra_modules() == [] and d.extra_state_dict() == {}


def test_none_has_no_teacher_and_only_ce():
    d = build_distiller(TinySeg(3, 4), None, make_recipe("none")).train()
    assert isinstance(d, NoDistill) and d.teacher is None
    out = d(torch.randn(1, 3, 16, 16), torch.randint(0, 3, (1, 16, 16)))
    assert set(out.parts) == {"ce", "loss"}
