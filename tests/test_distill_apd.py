"""APD unit tests on small hand-built cases (docs/apd-method.md is the specification)."""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

from apd_edge.distill import APDDistiller, build_distiller
from apd_edge.distill.apd import TeacherProjector, adaptive_head, unit_rows, upsampled_cross_entropy
from helpers.distill import TinySeg, make_recipe

C = 3  # classes in the tiny cases


def identity_projectors(d: APDDistiller) -> None:
    """Make g_s and g_t the identity on non-negative features (1x1 convs = I, zero bias)."""
    for net in (d.student_proj, d.teacher_proj.net):
        with torch.no_grad():
            for lin in (net[0], net[2]):
                lin.weight.copy_(torch.eye(lin.weight.shape[0]))
                lin.bias.zero_()


def tiny_apd(scope: str = "batch", tau: float = 1.0, channels: int = 2, **kw) -> APDDistiller:
    torch.manual_seed(0)
    student, teacher = TinySeg(C, channels), TinySeg(C, channels)
    d = build_distiller(student, teacher, make_recipe(prototype_scope=scope, tau=tau, proj_dim=channels, **kw))
    assert isinstance(d, APDDistiller)
    return d


def unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def feat_map(pixels: list[list[float]]) -> torch.Tensor:
    """One image, 1 x W feature map from a list of per-pixel 2-vectors -> 1 x 2 x 1 x W."""
    return torch.tensor(pixels, dtype=torch.float32).t().reshape(1, 2, 1, len(pixels))


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# -------------------------------------------------------------------------------- hand-computed case
# Three pixels, labels [0, 1, ignore]; class 2 absent, so N = 2 while C = 3. tau = 1, identity projectors.
FS = [[1.0, 0.0], [0.0, 1.0], unit(0.6, 0.8)]  # student unit features
FT = [unit(0.6, 0.8), [0.0, 1.0], [1.0, 0.0]]  # teacher unit features
LABELS = [0, 1, 255]
# prototypes: P_s[0] = (1, 0), P_s[1] = (0, 1); P_t[0] = (0.6, 0.8), P_t[1] = (0, 1)
ZS = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]  # z_s(x)[c] = <f_s(x), P_s[c]>
ZT = [[1.0, 0.8], [0.8, 1.0], [0.6, 0.0]]  # z_t(x)[c] = <f_t(x), P_t[c]>
KL_SUM = sum(kl(softmax(t), softmax(s)) for t, s in zip(ZT, ZS))  # per-pixel KLs, every pixel (ignored too)
PK_HAND = KL_SUM / (1 * 2 * 1 * 3)  # element-wise mean over B x N x h x w = 1 x 2 x 1 x 3
PA_HAND = 0.5 * ((1 - 0.6) + (1 - 1.0)) / 2  # 0.5 * mean_c (1 - cos) = 0.1
# teacher-projector CE: z_t scattered into C = 3 classes (absent class 2 -> 0), mean over the 2 valid pixels
TP_HAND = (-math.log(softmax([1.0, 0.8, 0.0])[0]) - math.log(softmax([0.8, 1.0, 0.0])[1])) / 2


def test_kl_reduction_matches_hand_computation():
    d = tiny_apd("batch").eval()
    identity_projectors(d)
    out = d.apd_losses(feat_map(FS), feat_map(FT), torch.tensor([[LABELS]]), C)
    assert out["apd_pk"].item() == pytest.approx(PK_HAND, rel=1e-5)
    # written out: softmax(z_t) = (.5498, .4502), (.4502, .5498), (.6457, .3543);
    # softmax(z_s) = (.7311, .2689), (.2689, .7311), (.4502, .5498); per-pixel KL = .075256, .075256, .077176
    # sum .227688 / (B*N*h*w = 6) = .037948 (dividing by C = 3 or dropping the ignored pixel would differ)
    assert PK_HAND == pytest.approx(0.037948, abs=1e-6)
    assert TP_HAND == pytest.approx(0.782352, abs=1e-6)
    assert out["apd_pa"].item() == pytest.approx(PA_HAND, rel=1e-5)
    assert out["apd_tproj"].item() == pytest.approx(TP_HAND, rel=1e-5)


def test_image_scope_reduction_by_hand():
    """Image 2 has one class only: its KL is 0 (a one-class softmax), its features agree (L_pa 0)."""
    img2 = [[1.0, 0.0], unit(1.0, 1.0), [0.0, 1.0]]
    fs = torch.cat([feat_map(FS), feat_map(img2)])
    ft = torch.cat([feat_map(FT), feat_map(img2)])
    labels = torch.tensor([[LABELS], [[0, 0, 255]]])
    d = tiny_apd("image").eval()
    identity_projectors(d)
    out = d.apd_losses(fs, ft, labels, C)
    # per image: sum of its KL terms / (h * w * N_b); mean over images with N_b > 0
    assert out["apd_pk"].item() == pytest.approx((KL_SUM / (3 * 2) + 0.0) / 2, rel=1e-5)
    assert out["apd_pa"].item() == pytest.approx((PA_HAND + 0.0) / 2, rel=1e-5)
    d_batch = tiny_apd("batch").eval()
    identity_projectors(d_batch)
    assert d_batch.apd_losses(fs, ft, labels, C)["apd_pk"].item() != pytest.approx(out["apd_pk"].item(), rel=1e-3)


# -------------------------------------------------------------------------------- properties
def test_identical_features_give_zero_kl_and_alignment():
    d = tiny_apd("batch", tau=10.0, channels=4).train()
    d.student_proj.load_state_dict(d.teacher_proj.net.state_dict())
    torch.manual_seed(1)
    feat = torch.randn(2, 4, 6, 6)
    labels = torch.randint(0, C, (2, 12, 12))
    labels[0, :4] = 255
    out = d.apd_losses(feat, feat.clone(), labels, C)
    assert out["apd_pk"].abs().item() < 1e-6
    assert out["apd_pa"].abs().item() < 1e-6
    assert out["apd_tproj"].item() > 0  # g_t's own loss is a real CE


def test_identical_student_and_teacher_networks_end_to_end():
    torch.manual_seed(0)
    teacher = TinySeg(C, 4)
    d = build_distiller(copy.deepcopy(teacher), teacher, make_recipe(proj_dim=4))
    d.student_proj.load_state_dict(d.teacher_proj.net.state_dict())
    d.train()
    loss = d(torch.randn(2, 3, 16, 16), torch.randint(0, C, (2, 16, 16)))
    for k in ("kd", "apd_pk", "apd_pa"):
        assert loss.parts[k].abs().item() < 1e-6, k


@pytest.mark.parametrize("scope", ["batch", "image"])
def test_all_ignore_labels_give_zero_terms_and_no_nan(scope):
    d = tiny_apd(scope, tau=10.0, channels=4).train()
    before = [p.clone() for p in d.teacher_proj.parameters()]
    images = torch.randn(2, 3, 16, 16)
    labels = torch.full((2, 16, 16), 255)
    out = d.apd_losses(d.student.forward_dict(images)["feat"], d.teacher.forward_dict(images)["feat"], labels, C)
    for k in ("apd_pk", "apd_pa", "apd_tproj"):
        assert out[k].item() == 0.0, k
    (out["apd_pk"] + out["apd_pa"]).backward()
    grads = [p.grad for p in d.student_proj.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and (g == 0).all() for g in grads)  # attached, zero
    assert all(torch.equal(a, b) for a, b in zip(before, d.teacher_proj.parameters()))  # no g_t step
    loss = d(images, labels)  # the whole step: CE over no valid pixel is 0 too, not NaN
    assert all(loss.parts[k].item() == 0.0 for k in ("ce", "apd_pk", "apd_pa", "apd_tproj"))
    assert all(torch.isfinite(v) for v in loss.parts.values())  # KD on the logits needs no labels


def test_some_images_without_valid_class_image_scope():
    d = tiny_apd("image", tau=10.0, channels=4).eval()
    torch.manual_seed(2)
    fs, ft = torch.rand(2, 4, 4, 4), torch.rand(2, 4, 4, 4)
    labels = torch.randint(0, C, (2, 4, 4))
    only_first = d.apd_losses(fs[:1], ft[:1], labels[:1], C)
    labels[1] = 255
    both = d.apd_losses(fs, ft, labels, C)
    assert both["apd_pk"].item() == pytest.approx(only_first["apd_pk"].item(), rel=1e-5)
    assert both["apd_pa"].item() == pytest.approx(only_first["apd_pa"].item(), rel=1e-5)


def test_teacher_never_receives_gradients_and_stays_unchanged():
    d = tiny_apd("batch", tau=10.0, channels=4).train()
    before = copy.deepcopy(d.teacher.state_dict())
    loss = d(torch.randn(2, 3, 16, 16), torch.randint(0, C, (2, 16, 16)))
    loss.total.backward()
    assert all(not p.requires_grad and p.grad is None for p in d.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in d.teacher.state_dict().items())
    assert not d.teacher.training


def test_projectors_train_only_by_their_own_losses():
    d = tiny_apd("batch", tau=10.0, channels=4).train()
    group_params = {id(p) for g in d.param_groups(0.01, 10.0) for p in g["params"]}
    assert {id(p) for p in d.student_proj.parameters()} <= group_params
    assert not {id(p) for p in d.teacher_proj.parameters()} & group_params
    assert not {id(p) for p in d.teacher_proj.parameters()} & {id(p) for p in d.parameters()}

    g_t_before = [p.detach().clone() for p in d.teacher_proj.parameters()]
    loss = d(torch.randn(2, 3, 16, 16), torch.randint(0, C, (2, 16, 16)))
    # g_t already stepped inside forward, by its own optimizer
    assert any(not torch.equal(a, b) for a, b in zip(g_t_before, d.teacher_proj.parameters()))
    g_t_after = [p.detach().clone() for p in d.teacher_proj.parameters()]
    loss.total.backward()
    assert all(p.grad is None for p in d.teacher_proj.parameters())  # student loss reaches no g_t weight
    assert all(torch.equal(a, b) for a, b in zip(g_t_after, d.teacher_proj.parameters()))
    s_grads = [p.grad for p in d.student_proj.parameters()]
    assert all(g is not None for g in s_grads) and any(g.abs().sum() > 0 for g in s_grads)


@pytest.mark.parametrize("align", [True, False])
def test_teacher_projector_step_is_one_adam_step_on_its_ce(align):
    """g_t moves exactly as Adam(lr, betas) on CE(upsampled scattered z_t, labels) -- a loop reference;
    the upsampling follows ``distill.align_corners`` (True: the released code)."""
    d = tiny_apd("batch", tau=10.0, channels=4, teacher_proj_lr=1e-2).train()
    d.recipe = dataclasses.replace(d.recipe, distill=dataclasses.replace(d.recipe.distill, align_corners=align))
    ref = copy.deepcopy(d.teacher_proj.net)
    torch.manual_seed(3)
    fs, ft = torch.rand(2, 4, 4, 4), torch.rand(2, 4, 4, 4)
    labels = torch.randint(0, C, (2, 8, 8))
    labels[0, :2] = 255
    d.apd_losses(fs, ft, labels, C)

    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.9, 0.99))
    f = F.normalize(ref(ft.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), dim=1)
    small = F.interpolate(labels[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
    logits = torch.zeros(2, C, 4, 4)
    for c in range(C):
        m = small == c
        if m.any():
            proto = F.normalize(f.permute(0, 2, 3, 1)[m].sum(0), dim=0)
            logits[:, c] = 10.0 * torch.einsum("behw,e->bhw", f, proto)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=align)
    F.cross_entropy(up, labels, ignore_index=255).backward()
    opt.step()
    for a, b in zip(ref.parameters(), d.teacher_proj.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_eval_mode_does_not_step_teacher_projector():
    d = tiny_apd("batch", tau=10.0, channels=4).eval()
    before = [p.clone() for p in d.teacher_proj.parameters()]
    d(torch.randn(1, 3, 16, 16), torch.randint(0, C, (1, 16, 16)))
    assert all(torch.equal(a, b) for a, b in zip(before, d.teacher_proj.parameters()))


# -------------------------------------------------------------------------------- scopes
def loop_reference(fs, ft, labels, tau, scope):
    """Straightforward per-image / per-class loops for L_pk and L_pa (identity projectors)."""
    fs, ft = F.normalize(fs, dim=1), F.normalize(ft, dim=1)
    groups = ([(fs, ft, labels)] if scope == "batch"
              else [(fs[i:i + 1], ft[i:i + 1], labels[i:i + 1]) for i in range(len(fs))])
    pks, pas = [], []
    for s, t, y in groups:
        classes = [c for c in range(C) if (y == c).any()]
        if not classes:
            continue
        ps = [F.normalize(s.permute(0, 2, 3, 1)[y == c].mean(0), dim=0) for c in classes]
        pt = [F.normalize(t.permute(0, 2, 3, 1)[y == c].mean(0), dim=0) for c in classes]
        zs = tau * torch.stack([torch.einsum("behw,e->bhw", s, p) for p in ps], 1)
        zt = tau * torch.stack([torch.einsum("behw,e->bhw", t, p) for p in pt], 1)
        pks.append(F.kl_div(F.log_softmax(zs, 1), F.softmax(zt, 1), reduction="sum") / zs.numel())
        pas.append(0.5 * torch.stack([1 - a @ b for a, b in zip(ps, pt)]).mean())
    return torch.stack(pks).mean(), torch.stack(pas).mean()


@pytest.mark.parametrize("scope", ["batch", "image"])
def test_vectorised_terms_match_loop_reference(scope):
    d = tiny_apd(scope, tau=10.0, channels=4).eval()
    identity_projectors(d)
    torch.manual_seed(4)
    fs, ft = torch.rand(3, 4, 5, 5), torch.rand(3, 4, 5, 5)
    labels = torch.randint(0, C, (3, 5, 5))
    labels[1, 1:] = 255
    labels[2] = torch.where(labels[2] == 2, torch.full_like(labels[2], 255), labels[2])
    out = d.apd_losses(fs, ft, labels, C)
    pk, pa = loop_reference(fs, ft, labels, 10.0, scope)
    assert out["apd_pk"].item() == pytest.approx(pk.item(), rel=1e-4)
    assert out["apd_pa"].item() == pytest.approx(pa.item(), rel=1e-4)


# -------------------------------------------------------------------------------- fused kernels = plain ops
def test_unit_rows_is_f_normalize_float64():
    torch.manual_seed(7)
    x = torch.randn(6, 5, dtype=torch.float64)
    x[2] = 0.0  # zero row: output 0, gradient g / eps as F.normalize's
    x[3] *= 1e-14  # norm below eps: clamped
    g = torch.randn(6, 5, dtype=torch.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.testing.assert_close(unit_rows(a), F.normalize(b, dim=-1), rtol=1e-12, atol=0)
    (unit_rows(a) * g).sum().backward()
    (F.normalize(b, dim=-1) * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(unit_rows, (torch.randn(4, 3, dtype=torch.float64, requires_grad=True),))


def test_adaptive_head_is_the_plain_prototype_and_logit_chain_float64():
    torch.manual_seed(8)
    f = F.normalize(torch.randn(2, 9, 4, dtype=torch.float64), dim=-1)
    y = torch.randint(0, C, (2, 9))
    y[1][y[1] == 2] = 0  # group 1 lacks class 2: zero prototype
    onehot = F.one_hot(y, C).to(torch.float64)
    gp, gz = torch.randn(2, C, 4, dtype=torch.float64), torch.randn(2, 9, C, dtype=torch.float64)
    a, b = f.clone().requires_grad_(True), f.clone().requires_grad_(True)
    p_a, z_a = adaptive_head(a, onehot, 10.0)
    p_b = F.normalize(torch.bmm(onehot.transpose(1, 2), b), dim=-1)
    z_b = 10.0 * torch.bmm(b, p_b.transpose(1, 2))
    torch.testing.assert_close(p_a, p_b, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(z_a, z_b, rtol=1e-12, atol=1e-12)
    ((p_a * gp).sum() + (z_a * gz).sum()).backward()
    ((p_b * gp).sum() + (z_b * gz).sum()).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    small = b[:1, :5].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: adaptive_head(v, onehot[:1, :5], 3.0), (small,))


@pytest.mark.parametrize("align", [True, False])
def test_upsampled_cross_entropy_is_interpolate_then_cross_entropy_float64(align):
    """Separable-matmul upsampling + fused CE = F.interpolate(bilinear) + F.cross_entropy, values and
    gradients, at a non-integer scale with ignored pixels."""
    torch.manual_seed(9)
    z = 5 * torch.randn(2, C, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, C, (2, 12, 17))
    labels[0, :3] = 255
    a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ours = upsampled_cross_entropy(a, labels, align, 255)
    up = F.interpolate(b, size=(12, 17), mode="bilinear", align_corners=align)
    ref = F.cross_entropy(up, labels, ignore_index=255)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda v: upsampled_cross_entropy(v, labels[:, :6, :9], align, 255),
                                    (z[:, :, :3, :4].clone().requires_grad_(True),))


def plain_reference(gs, gt, fs, ft, labels, tau, scope, align):
    """L_pk, L_pa and g_t's CE by plain ops and per-group / per-class loops (the method doc, written out)."""
    size = fs.shape[-2:]
    small = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    f_s = F.normalize(gs(fs.permute(0, 2, 3, 1)), dim=-1)  # B x h x w x E
    f_t = F.normalize(gt(ft.permute(0, 2, 3, 1)), dim=-1)
    groups = [slice(None)] if scope == "batch" else [slice(i, i + 1) for i in range(len(fs))]
    pks, pas, logits = [], [], []
    for g in groups:
        y, s, t = small[g], f_s[g], f_t[g]
        classes = [c for c in range(C) if (y == c).any()]
        ps = {c: F.normalize(s[y == c].sum(0), dim=0) for c in classes}
        pt = {c: F.normalize(t[y == c].sum(0), dim=0) for c in classes}
        zt = {c: tau * t @ pt[c] for c in classes}
        logits.append(torch.stack([zt[c] if c in zt else torch.zeros(t.shape[:3]) for c in range(C)], 1))
        if classes:
            zs_n = torch.stack([tau * s @ ps[c] for c in classes], -1)
            zt_n = torch.stack([zt[c] for c in classes], -1).detach()
            pks.append(F.kl_div(F.log_softmax(zs_n, -1), F.softmax(zt_n, -1), reduction="sum") / zs_n.numel())
            pas.append(0.5 * torch.stack([1 - ps[c] @ pt[c].detach() for c in classes]).mean())
    up = F.interpolate(torch.cat(logits), size=labels.shape[-2:], mode="bilinear", align_corners=align)
    return torch.stack(pks).mean(), torch.stack(pas).mean(), F.cross_entropy(up, labels, ignore_index=255)


@pytest.mark.parametrize("scope,align", [("batch", True), ("image", False), ("image", True)])
def test_terms_gradients_and_g_t_step_match_plain_reference(scope, align):
    """The whole of apd_losses with random projectors against ``plain_reference``: the three losses, the
    gradients reaching the student features and g_s, and g_t after its Adam step (float32 rounding)."""
    d = tiny_apd(scope, tau=10.0, channels=4, teacher_proj_lr=1e-2).train()
    d.recipe = dataclasses.replace(d.recipe, distill=dataclasses.replace(d.recipe.distill, align_corners=align))
    gs, gt = copy.deepcopy(d.student_proj), copy.deepcopy(d.teacher_proj.net)
    torch.manual_seed(6)
    fs, ft = 3 * torch.randn(2, 4, 5, 6), 3 * torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, C, (2, 11, 13))
    labels[0, :3] = 255
    labels[1][labels[1] == 2] = 255  # image 1 lacks class 2

    a = fs.clone().requires_grad_(True)
    out = d.apd_losses(a, ft, labels, C)
    (out["apd_pk"] + 2 * out["apd_pa"]).backward()

    b = fs.clone().requires_grad_(True)
    pk, pa, tproj = plain_reference(gs, gt, b, ft, labels, 10.0, scope, align)
    opt = torch.optim.Adam(gt.parameters(), lr=1e-2, betas=(0.9, 0.99))
    tproj.backward()
    (pk + 2 * pa).backward()
    opt.step()

    for got, want in ((out["apd_pk"], pk), (out["apd_pa"], pa), (out["apd_tproj"], tproj)):
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert pk.item() > 1e-2 and a.grad.abs().max() > 1e-3  # a real, non-trivial case
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    for p, q in zip(d.student_proj.parameters(), gs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7)
    for p, q in zip(d.teacher_proj.parameters(), gt.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_scopes_agree_on_one_image_and_differ_on_two():
    torch.manual_seed(5)
    fs, ft = torch.rand(2, 4, 6, 6), torch.rand(2, 4, 6, 6)
    labels = torch.randint(0, C, (2, 6, 6))
    res = {}
    for scope in ("batch", "image"):
        d = tiny_apd(scope, tau=10.0, channels=4).eval()  # same seed -> same projectors
        res[scope, 1] = d.apd_losses(fs[:1], ft[:1], labels[:1], C)
        res[scope, 2] = d.apd_losses(fs, ft, labels, C)
    for k in ("apd_pk", "apd_pa", "apd_tproj"):
        assert res["batch", 1][k].item() == pytest.approx(res["image", 1][k].item(), rel=1e-6), k
        assert abs(res["batch", 2][k].item() - res["image", 2][k].item()) > 1e-5, k


# -------------------------------------------------------------------------------- shapes, state
def test_student_features_resized_when_strides_differ():
    torch.manual_seed(0)
    student, teacher = TinySeg(C, 6, stride=4), TinySeg(C, 4, stride=2)
    d = build_distiller(student, teacher, make_recipe(proj_dim=8)).train()
    assert d.student_proj[2].out_features == 4  # E defaults to the teacher's channels
    loss = d(torch.randn(2, 3, 16, 16), torch.randint(0, C, (2, 16, 16)))
    assert torch.isfinite(loss.total)
    loss.total.backward()
    assert set(loss.parts) >= {"ce", "kd", "apd_pk", "apd_pa", "apd_tproj", "loss"}


def test_state_dict_and_extra_state_round_trip():
    d = tiny_apd("batch", tau=10.0, channels=4).train()
    d(torch.randn(2, 3, 16, 16), torch.randint(0, C, (2, 16, 16)))  # creates Adam state
    sd = d.state_dict()
    assert any(k.startswith("teacher_proj.") for k in sd) and any(k.startswith("student_proj.") for k in sd)
    assert not any(k.startswith("_teacher") for k in sd)
    buf = io.BytesIO()
    torch.save({"sd": sd, "extra": d.extra_state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    other = tiny_apd("batch", tau=10.0, channels=4)
    with torch.no_grad():
        for p in list(other.teacher_proj.parameters()) + list(other.student_proj.parameters()):
            p.add_(1.0)
    other.load_state_dict(saved["sd"])
    for a, b in zip(d.teacher_proj.parameters(), other.teacher_proj.parameters()):
        assert torch.equal(a, b)
    other2 = tiny_apd("batch", tau=10.0, channels=4)
    other2.load_extra_state_dict(saved["extra"])
    for a, b in zip(list(d.teacher_proj.parameters()) + list(d.student_proj.parameters()),
                    list(other2.teacher_proj.parameters()) + list(other2.student_proj.parameters())):
        assert torch.equal(a, b)
    assert other2.teacher_proj.optimizer.state_dict()["state"][0]["exp_avg"].shape == d.teacher_proj.net[0].weight.shape
    with pytest.raises(RuntimeError, match="teacher_proj"):
        bad = dict(saved["sd"])
        del bad["teacher_proj.0.weight"]
        other.load_state_dict(bad)


def test_errors_for_missing_features():
    from apd_edge.errors import ApdError

    student, teacher = TinySeg(C, 4), TinySeg(C, 4)
    teacher.feat_channels = 0
    with pytest.raises(ApdError, match="teacher features"):
        build_distiller(student, teacher, make_recipe())
    with pytest.raises(ApdError, match="needs a teacher"):
        build_distiller(student, None, make_recipe())


def test_teacher_projector_update_without_loss_is_a_no_op():
    tp = TeacherProjector(4, 4, 4, 1e-3, (0.9, 0.99))
    before = [p.clone() for p in tp.parameters()]
    tp.update(None)
    assert all(torch.equal(a, b) for a, b in zip(before, tp.parameters()))
