"""build_teacher: registry model + checkpoint, or a user factory with a forward-hooked feature module."""

from __future__ import annotations

import itertools
import textwrap

import pytest
import torch

from apd_edge.config import recipe_from_dict
from apd_edge.distill import HookedTeacher, build_distiller, build_teacher
from apd_edge.checkpoint import save_checkpoint
from apd_edge.errors import ApdError
from apd_edge.models import registry as model_registry
from helpers.distill import TinySeg, make_recipe

FACTORY_SRC = '''
import torch
from torch import nn


class UserNet(nn.Module):
    """A user's model: a dict output at half resolution, features in ``body.act``."""

    def __init__(self, classes=3, width=6):
        super().__init__()
        self.body = nn.Sequential()
        self.body.add_module("conv", nn.Conv2d(3, width, 3, stride=4, padding=1))
        self.body.add_module("act", nn.ReLU())
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        y = self.head(self.body(x))
        return {"out": torch.nn.functional.interpolate(y, scale_factor=2.0)}


def make(classes=3, width=6):
    return UserNet(classes, width)


def plain(classes=3):
    return nn.Sequential(nn.Conv2d(3, classes, 1))
'''
_ids = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A fresh importable module holding the user's factory; returns its name."""
    name = f"apd_user_teacher_{next(_ids)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY_SRC))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def teacher_recipe(**teacher) -> object:
    return recipe_from_dict({"teacher": teacher, "distill": {"method": "apd"}})


def test_factory_teacher_with_hook(user_module, tmp_path):
    torch.manual_seed(0)
    from importlib import import_module

    ref = import_module(user_module).make(3, 6)
    ckpt = tmp_path / "user.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)  # DDP-style keys
    t = build_teacher(teacher_recipe(factory=f"{user_module}:make", factory_kwargs={"width": 6},
                                     feat_module="body.act", checkpoint=str(ckpt)), num_classes=3)
    assert isinstance(t, HookedTeacher)
    assert (t.feat_channels, t.feat_stride) == (6, 4)
    assert not t.training and all(not p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training  # stays frozen
    x = torch.randn(2, 3, 32, 32)
    out = t.forward_dict(x, with_aux=False)
    assert out["out"].shape == (2, 3, 32, 32)  # upsampled to the input size
    assert out["feat"].shape == (2, 6, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(out["feat"], ref.body(x))
    # and it drives the APD distiller like any registry teacher
    d = build_distiller(TinySeg(3, 4, stride=2), t, make_recipe(proj_dim=8)).train()
    loss = d(x, torch.randint(0, 3, (2, 32, 32)))
    assert torch.isfinite(loss.total)


def test_factory_errors(user_module, tmp_path):
    with pytest.raises(ApdError, match="expected 'package.module:function'"):
        build_teacher(teacher_recipe(factory="nocolon", feat_module="x"), 3)
    with pytest.raises(ApdError,
                       match="cannot import module 'no_such_pkg_xyz.mod' \\(No module named 'no_such_pkg_xyz'"):
        build_teacher(teacher_recipe(factory="no_such_pkg_xyz.mod:make", feat_module="x"), 3)
    with pytest.raises(ApdError, match="did you mean 'make'"):
        build_teacher(teacher_recipe(factory=f"{user_module}:mkae", feat_module="body.act"), 3)
    with pytest.raises(ApdError, match="no module 'body.actt'.*did you mean 'body.act'"):
        build_teacher(teacher_recipe(factory=f"{user_module}:make", feat_module="body.actt"), 3)
    with pytest.raises(ApdError, match="teacher.checkpoint not found"):
        build_teacher(teacher_recipe(factory=f"{user_module}:make", feat_module="body.act",
                                     checkpoint=str(tmp_path / "missing.pt")), 3)
    with pytest.raises(ApdError, match="predicts 3 classes, the data has 5"):
        build_teacher(teacher_recipe(factory=f"{user_module}:make", feat_module="body.act"), 5)
    bad = tmp_path / "bad.pt"
    torch.save({"head.weight": torch.zeros(1)}, bad)
    with pytest.raises(ApdError, match="does not fit the teacher model"):
        build_teacher(teacher_recipe(factory=f"{user_module}:make", feat_module="body.act", checkpoint=str(bad)), 3)
    with pytest.raises(ApdError, match="no teacher given"):
        build_teacher(teacher_recipe(), 3)


def test_factory_without_feature_module_fails_for_apd(user_module):
    t = build_teacher(teacher_recipe(factory=f"{user_module}:plain"), 3)
    assert t.forward_dict(torch.randn(1, 3, 8, 8))["feat"] is None
    with pytest.raises(ApdError, match="teacher.feat_module"):
        build_distiller(TinySeg(3, 4), t, make_recipe())
    build_distiller(TinySeg(3, 4), t, make_recipe("kd"))  # logits-only methods are fine


@pytest.fixture
def tiny_registry_teacher(monkeypatch) -> str:
    name = "tiny_test_teacher"

    def factory(num_classes, pretrained=False, channels=4):
        return TinySeg(num_classes, channels)

    model_registry._ensure_loaded()
    monkeypatch.setitem(model_registry.MODELS._items, name, factory)
    monkeypatch.setitem(model_registry.MODEL_ROLES, name, "teacher")
    return name


def test_registry_teacher_from_checkpoint(tiny_registry_teacher, tmp_path):
    torch.manual_seed(0)
    src = TinySeg(3, 5)
    path = tmp_path / "run" / "best.pt"
    save_checkpoint({"model_name": tiny_registry_teacher, "model_kwargs": {"channels": 5}, "num_classes": 3,
                     "model": src.state_dict()}, path)
    for recipe in (teacher_recipe(name=tiny_registry_teacher, checkpoint=str(path)),
                   teacher_recipe(checkpoint=str(path.parent))):  # the run folder; model named by the checkpoint
        t = build_teacher(recipe, 3)
        assert t.feat_channels == 5 and not t.training
        assert all(not p.requires_grad for p in t.parameters())
        for k, v in src.state_dict().items():
            assert torch.equal(t.state_dict()[k], v)
    plain = tmp_path / "plain.pt"
    torch.save(src.state_dict(), plain)
    t = build_teacher(teacher_recipe(name=tiny_registry_teacher, checkpoint=str(plain), kwargs={"channels": 5}), 3)
    assert torch.equal(t.classifier.weight, src.classifier.weight)


def test_registry_teacher_errors(tiny_registry_teacher, tmp_path):
    path = tmp_path / "t.pt"
    save_checkpoint({"model_name": "other_model", "num_classes": 3, "model": TinySeg(3, 4).state_dict()}, path)
    with pytest.raises(ApdError, match="holds a 'other_model' model, but teacher.name is 'tiny_test_teacher'"):
        build_teacher(teacher_recipe(name=tiny_registry_teacher, checkpoint=str(path)), 3)
    save_checkpoint({"model_name": tiny_registry_teacher, "num_classes": 4, "model": TinySeg(4, 4).state_dict()}, path)
    with pytest.raises(ApdError, match="trained for 4 classes, the data has 3"):
        build_teacher(teacher_recipe(name=tiny_registry_teacher, checkpoint=str(path)), 3)
    with pytest.raises(ApdError, match="teacher.checkpoint not found"):
        build_teacher(teacher_recipe(name=tiny_registry_teacher, checkpoint=str(tmp_path / "nope.pt")), 3)
    plain = tmp_path / "plain.pt"
    torch.save(TinySeg(3, 7).state_dict(), plain)
    with pytest.raises(ApdError, match="does not fit the teacher model"):
        build_teacher(teacher_recipe(name=tiny_registry_teacher, checkpoint=str(plain)), 3)
    with pytest.warns(UserWarning, match="random weights"):
        build_teacher(teacher_recipe(name=tiny_registry_teacher), 3)


def test_teacher_output_stride_comes_from_its_checkpoint(tmp_path):
    """OS8 and OS16 weights have the same keys, so only the checkpoint's model_kwargs can tell them apart."""
    from apd_edge.models import build_model

    torch.manual_seed(0)
    src = build_model("pspnet_r18", 3, output_stride=16).eval()
    path = tmp_path / "best.pt"
    save_checkpoint({"model_name": "pspnet_r18", "model_kwargs": {"output_stride": 16}, "num_classes": 3,
                     "model": src.state_dict()}, path)
    t = build_teacher(teacher_recipe(checkpoint=str(path)), 3)
    assert t.feat_stride == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(t(x), src(x), atol=1e-5)
