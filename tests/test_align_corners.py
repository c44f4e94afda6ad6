"""``distill.align_corners``: the released APD upsampling (True, default) or ours before (False)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from apd_edge.config import RecipeError, recipe_from_dict
from apd_edge.distill import build_distiller
from apd_edge.distill.kd import pixel_kd_loss
from helpers.distill import TinySeg

C = 4


class LowResSeg(TinySeg):
    """Logits left at the feature stride (as the released code's students give them)."""

    def _forward(self, x, with_aux):
        feat = F.relu(self.backbone(x))
        return {"out": self.classifier(feat), "aux": [], "feat": feat}


def _recipe(method: str, **distill):
    return recipe_from_dict({"distill": {"method": method, "apd": {"proj_dim": 4}, **distill},
                             "model": {"aux_weights": []}})


def test_default_is_the_released_setting_and_the_key_is_typed():
    assert _recipe("kd").distill.align_corners is True
    assert _recipe("kd", align_corners=False).distill.align_corners is False
    with pytest.raises(RecipeError, match="distill.align_corners: expected true or false"):
        _recipe("kd", align_corners="yes")


@pytest.mark.parametrize("align", [True, False])
def test_pixel_kd_upsamples_with_the_setting(align):
    torch.manual_seed(0)
    s, t = torch.randn(2, C, 4, 5), torch.randn(2, C, 4, 5)
    size = (16, 20)
    up_s = F.interpolate(s, size=size, mode="bilinear", align_corners=align)
    up_t = F.interpolate(t, size=size, mode="bilinear", align_corners=align)
    ref = F.kl_div(F.log_softmax(up_s, 1), F.log_softmax(up_t, 1), log_target=True, reduction="sum") / up_s.numel()
    got = pixel_kd_loss(s, t, size, 1.0, align)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    other = pixel_kd_loss(s, t, size, 1.0, not align)
    assert abs(other.item() - got.item()) > 1e-4 * abs(got.item())  # the switch changes the value


@pytest.mark.parametrize("method", ["kd", "apd"])
def test_distillers_follow_the_recipe(method):
    """Same student, teacher and batch: the KD term (and APD's g_t loss) depend on the switch; the student's
    own forward does not (its upsampling is part of the exported model)."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, C, (2, 16, 16))
    parts = {}
    outs = {}
    for align in (True, False):
        torch.manual_seed(1)
        student, teacher = LowResSeg(C, 4), LowResSeg(C, 4)
        d = build_distiller(student, teacher, _recipe(method, align_corners=align)).train()
        with torch.no_grad():
            outs[align] = student.forward_dict(x, with_aux=False)["out"]
        parts[align] = {k: float(v) for k, v in d(x, y).parts.items()}
        s_out, t_out = student.forward_dict(x, with_aux=False), teacher.forward_dict(x, with_aux=False)
        ref = pixel_kd_loss(s_out["out"], t_out["out"], (16, 16), 1.0, align)
        if method == "kd":
            assert parts[align]["kd"] == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.equal(outs[True], outs[False])
    assert parts[True]["kd"] != pytest.approx(parts[False]["kd"], rel=1e-4)
    if method == "apd":
        assert parts[True]["apd_tproj"] != pytest.approx(parts[False]["apd_tproj"], rel=1e-6)
        # the adaptive terms work at feature size and do not depend on the switch
        assert parts[True]["apd_pk"] == pytest.approx(parts[False]["apd_pk"], rel=1e-6)
        assert parts[True]["apd_pa"] == pytest.approx(parts[False]["apd_pa"], rel=1e-6)


def test_models_at_input_size_make_kd_independent_of_the_switch():
    """apd-edge's models return logits at input size, so for them only APD's g_t loss sees the switch."""
    torch.manual_seed(0)
    s, t = torch.randn(1, C, 8, 8), torch.randn(1, C, 8, 8)
    assert pixel_kd_loss(s, t, (8, 8), 1.0, True).item() == pixel_kd_loss(s, t, (8, 8), 1.0, False).item()
