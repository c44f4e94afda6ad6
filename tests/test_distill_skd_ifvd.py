"""SKD and IFVD: each loss against a direct loop computation, the critic's own step, gradient routing,
state save/resume, and the holistic switch (docs/distillation-baselines.md is the specification)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from apd_edge.config import RecipeError, recipe_from_dict
from apd_edge.distill import IFVDDistiller, SKDDistiller, build_distiller, ifv_loss, pairwise_loss
from apd_edge.distill.discriminator import critic_size
from apd_edge.distill.skd import pixelwise_kl
from helpers.distill import TinySeg

C = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny steps run on one torch thread


def recipe(method: str, holistic: dict | None = None, **section) -> object:
    hol = {"channels": 4, **(holistic or {})}  # a narrow critic keeps the tests fast
    return recipe_from_dict({"distill": {"method": method, method: {**section, "holistic": hol}},
                             "model": {"aux_weights": []}, "train": {"iterations": 100}})


def tiny(method: str, **kw):
    torch.manual_seed(0)
    return build_distiller(TinySeg(C, 4), TinySeg(C, 6), recipe(method, **kw))


def batch(seed: int = 0, n: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n, size, size), generator=g)
    labels[0, :3] = 255
    return torch.randn(n, 3, size, size, generator=g), labels


# -------------------------------------------------------------------------------- pair-wise (SKD)
def loop_pairwise(fs: torch.Tensor, ft: torch.Tensor, scale: float) -> torch.Tensor:
    """Nodes by explicit max over each cell (last cell clipped), cosine by explicit sums, per image."""
    b, _, h, w = ft.shape
    kh, kw = int(h * scale), int(w * scale)
    rows = [(i, min(i + kh, h)) for i in range(0, h, kh)]
    cols = [(j, min(j + kw, w)) for j in range(0, w, kw)]
    total = 0.0
    for img in range(b):
        def nodes(f):
            return [f[img, :, r0:r1, c0:c1].amax(dim=(1, 2)) for r0, r1 in rows for c0, c1 in cols]

        ns, nt = nodes(fs), nodes(ft)
        n = len(nt)
        acc = 0.0
        for i in range(n):
            for j in range(n):
                a_t = (nt[i] * nt[j]).sum() / ((nt[i].norm() + 1e-8) * (nt[j].norm() + 1e-8))
                # student norms are constants in the gradient (as released)
                a_s = (ns[i] * ns[j]).sum() / ((ns[i].norm().detach() + 1e-8) * (ns[j].norm().detach() + 1e-8))
                acc = acc + (a_t - a_s) ** 2
        total = total + acc / n ** 2
    return total / b


@pytest.mark.parametrize("shape,scale", [((6, 6), 0.5), ((7, 5), 0.5), ((8, 8), 0.25)])
def test_pairwise_matches_loop_value_and_gradient(shape, scale):
    torch.manual_seed(1)
    fs = torch.randn(2, 3, *shape, requires_grad=True)
    ft = torch.randn(2, 5, *shape)  # channel counts may differ
    ours = pairwise_loss(fs, ft, scale)
    ref = loop_pairwise(fs, ft, scale)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    g_ours, = torch.autograd.grad(ours, fs)
    g_ref, = torch.autograd.grad(ref, fs)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_pairwise_grid_and_zero_cases():
    f = torch.rand(1, 4, 7, 5)
    assert pairwise_loss(f, f.clone(), 0.5).item() == 0.0
    # one node covers the map: a 1x1 similarity is always 1, nothing to distil
    assert pairwise_loss(torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # all-zero (ReLU-dead) features: finite, no NaN
    z = torch.zeros(2, 3, 6, 6, requires_grad=True)
    out = pairwise_loss(z, torch.rand(2, 3, 6, 6), 0.5)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(z.grad).all()
    # a student map at a different size is resized to the teacher's first
    small = torch.randn(2, 3, 4, 4)
    big = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    t = torch.randn(2, 5, 8, 8)
    assert pairwise_loss(small, t).item() == pytest.approx(pairwise_loss(big, t).item(), rel=1e-6)


def test_pixelwise_kl_is_per_pixel_sum_over_classes():
    torch.manual_seed(2)
    s, t = torch.randn(2, C, 4, 4), torch.randn(2, C, 4, 4)
    ref = 0.0
    for b in range(2):
        for y in range(4):
            for x in range(4):
                p = F.softmax(t[b, :, y, x], 0)
                q = F.softmax(s[b, :, y, x], 0)
                ref += float((p * (p.log() - q.log())).sum())
    assert pixelwise_kl(s, t, (4, 4)).item() == pytest.approx(ref / 32, rel=1e-5)


# -------------------------------------------------------------------------------- IFV (IFVD)
def loop_ifv(fs: torch.Tensor, ft: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    b, _, h, w = ft.shape
    total = 0.0
    for img in range(b):
        for c in range(C):
            pix = [(y, x) for y in range(h) for x in range(w) if int(small[img, y, x]) == c]
            if not pix:
                continue
            ps = sum(fs[img, :, y, x] for y, x in pix) / len(pix)
            pt = sum(ft[img, :, y, x] for y, x in pix) / len(pix)
            for y, x in pix:
                ms = (fs[img, :, y, x] * ps).sum() / (fs[img, :, y, x].norm() * ps.norm())
                mt = (ft[img, :, y, x] * pt).sum() / (ft[img, :, y, x].norm() * pt.norm())
                total = total + (ms - mt) ** 2
    return total / (b * h * w)  # mean over every feature pixel (unlabelled ones add 0)


def test_ifv_matches_loop_with_absent_classes_and_ignored_image():
    torch.manual_seed(3)
    fs = torch.randn(3, 3, 4, 4, requires_grad=True)
    ft = torch.randn(3, 5, 4, 4)
    labels = torch.randint(0, 2, (3, 8, 8))  # class 2 is absent from the batch
    labels[1] = 255  # an image without any labelled pixel
    labels[2, :4] = 255
    labels[0, 0, 0] = 7  # out of range: no class
    small = labels[:, ::2, ::2]  # nearest 8 -> 4 picks every other pixel
    ours = ifv_loss(fs, ft, labels, C)
    ref = loop_ifv(fs, ft, small)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    g_ours, = torch.autograd.grad(ours, fs)
    g_ref, = torch.autograd.grad(ref, fs)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)
    assert (g_ours[1] == 0).all()  # the all-ignored image receives nothing


def test_ifv_all_ignored_is_zero_attached_and_identical_is_zero():
    fs = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = ifv_loss(fs, torch.randn(2, 5, 4, 4), torch.full((2, 8, 8), 255), C)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.isfinite(fs.grad).all() and (fs.grad == 0).all()
    f = torch.randn(2, 4, 4, 4)
    assert ifv_loss(f, 3.0 * f, torch.randint(0, C, (2, 4, 4)), C).item() == pytest.approx(0.0, abs=1e-10)


# -------------------------------------------------------------------------------- the critic
def test_critic_sizes():
    assert critic_size((512, 512)) == (64, 64)  # the released crop: 1/8, exactly the critic's minimum
    assert critic_size((512, 1024)) == (64, 128)
    assert critic_size((352, 480)) == (64, 88)  # 44 x 60 enlarged to a 64 px short side
    assert critic_size((16, 16)) == (64, 64)


@pytest.mark.parametrize("method,opt", [("skd", "sgd"), ("ifvd", "adam")])
def test_critic_step_is_one_optimizer_step_on_the_wgan_gp_loss(method, opt):
    """The critic moves exactly as its optimizer on L_D computed directly (loop over images for the GP)."""
    d = tiny(method).train()
    hol = d.holistic
    assert hol.cfg.optimizer == opt
    hol.steps = 40  # poly schedule: lr = 4e-4 * (1 - 40/100)^0.9
    ref = copy.deepcopy(hol.critic)
    images, labels = batch(4)
    s_logits, t_logits = torch.randn(2, C, 16, 16), torch.randn(2, C, 16, 16)
    s, t, cond = hol.inputs(s_logits, t_logits, images)
    assert s.shape == (2, C, 64, 64) and cond.shape == (2, 3, 64, 64)
    torch.manual_seed(7)
    hol.update(s, t, cond)

    torch.manual_seed(7)  # same alpha draw
    cw, gw = hol.cfg.critic_weight, hol.cfg.gp_weight
    d_real = ref(torch.cat([t, cond], 1)).mean()
    d_fake = ref(torch.cat([s, cond], 1)).mean()
    alpha = torch.rand(2, 1, 1, 1)
    mix = (alpha * t + (1 - alpha) * s).requires_grad_(True)
    grad, = torch.autograd.grad(ref(torch.cat([mix, cond], 1)).sum(), mix, create_graph=True)
    gp = sum((grad[b].pow(2).sum().sqrt() - 1) ** 2 for b in range(2)) / 2
    loss = cw * (d_fake - d_real + gw * gp)
    lr = 4e-4 * (1 - 40 / 100) ** 0.9
    if opt == "sgd":
        o = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        o = torch.optim.Adam(ref.parameters(), lr=lr, betas=(0.9, 0.99))
    loss.backward()
    o.step()
    assert hol.steps == 41
    for (n, a), b in zip(ref.named_parameters(), hol.critic.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("method", ["skd", "ifvd"])
def test_gradients_reach_student_only_and_critic_steps_by_itself(method):
    d = tiny(method).train()
    crit = d.holistic.critic
    group_ids = {id(p) for g in d.param_groups(0.01, 10.0) for p in g["params"]}
    assert group_ids == {id(p) for p in d.student.parameters()}  # no projectors, no critic
    assert not {id(p) for p in crit.parameters()} & {id(p) for p in d.parameters()}
    assert not any(k.startswith("critic.") for k in d.student.state_dict())

    before = [p.detach().clone() for p in crit.parameters()]
    t_before = copy.deepcopy(d.teacher.state_dict())
    out = d(*batch(5))
    moved = [p.detach().clone() for p in crit.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))  # its own step, inside forward
    out.total.backward()
    assert all(p.grad is None for p in crit.parameters())  # the student's loss reaches no critic weight
    assert all(torch.equal(a, b) for a, b in zip(moved, crit.parameters()))
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())
    assert all(torch.equal(v, d.teacher.state_dict()[k]) for k, v in t_before.items())
    grads = [p.grad for p in d.student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the adversarial term alone reaches the student
    d.student.zero_grad()
    images = batch(5)[0]
    s_out = d.student(images)
    adv, _ = d.eval().holistic_terms(s_out["out"], d.teacher.forward_dict(images)["out"], images)
    adv.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
    assert all(p.grad is None for p in crit.parameters())


@pytest.mark.parametrize("method,weights", [("skd", {"skd_pi": 10.0, "skd_pa": 0.5, "adv_g": 0.1}),
                                            ("ifvd", {"kd": 10.0, "ifv": 200.0, "adv_g": 0.001})])
def test_totals_use_the_released_weights(method, weights):
    d = tiny(method).train()
    out = d(*batch(6))
    expected = out.parts["ce"] + sum(w * out.parts[k] for k, w in weights.items())
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"adv_d", "adv_w", "adv_gp"} <= set(out.parts)


@pytest.mark.parametrize("method", ["skd", "ifvd"])
def test_all_ignored_labels_give_finite_loss_and_zero_label_terms(method):
    d = tiny(method).train()
    images, _ = batch(7)
    out = d(images, torch.full((2, 16, 16), 255))
    assert all(torch.isfinite(v) for v in out.parts.values())
    assert out.parts["ce"].item() == 0.0
    if method == "ifvd":
        assert out.parts["ifv"].item() == 0.0
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in d.student.parameters() if p.grad is not None)


@pytest.mark.parametrize("method", ["skd", "ifvd"])
def test_holistic_switch_off(method):
    d = tiny(method, holistic={"enabled": False}).train()
    assert d.holistic is None and d.extra_state_dict() == {}
    assert not any(k.startswith("critic.") for k in d.state_dict())
    out = d(*batch(8))
    assert not {"adv_g", "adv_d"} & set(out.parts)
    on = tiny(method).train()
    assert any(k.startswith("critic.") for k in on.state_dict())


@pytest.mark.parametrize("method", ["skd", "ifvd"])
def test_eval_mode_computes_losses_and_leaves_the_critic_alone(method):
    d = tiny(method).eval()
    state = copy.deepcopy(d.holistic.critic.state_dict())
    out = d(*batch(9))
    assert "adv_g" in out.parts and "adv_d" not in out.parts
    assert all(torch.equal(v, d.holistic.critic.state_dict()[k]) for k, v in state.items())  # SN vectors too
    assert d.holistic.steps == 0


@pytest.mark.parametrize("method", ["skd", "ifvd"])
def test_critic_state_save_and_resume_is_exact(method, tmp_path):
    """Two steps, save, two more; a fresh distiller loaded from the save takes the same two steps exactly."""
    def step(d, opt, seed):
        out = d(*batch(seed))
        opt.zero_grad()
        out.total.backward()
        opt.step()
        return out.total.item()

    d = tiny(method).train()
    opt = torch.optim.SGD(d.param_groups(0.01, 10.0), lr=0.01, momentum=0.9)
    step(d, opt, 10), step(d, opt, 11)
    path = tmp_path / "ckpt.pt"
    torch.save({"student": d.student.state_dict(), "opt": opt.state_dict(),
                "distiller": {k: v for k, v in d.state_dict().items() if not k.startswith("student.")},
                "extra": d.extra_state_dict(), "rng": torch.get_rng_state()}, path)
    losses = [step(d, opt, 12), step(d, opt, 13)]

    ck = torch.load(path, weights_only=True)
    assert ck["extra"]["critic_steps"] == 2 and ck["extra"]["critic_optimizer"]["state"]
    torch.manual_seed(123)  # a different init everywhere: everything must come from the checkpoint
    e = build_distiller(TinySeg(C, 4), d.teacher, recipe(method)).train()
    e.student.load_state_dict(ck["student"])
    missing, unexpected = e.load_state_dict(ck["distiller"], strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("student.")]
    e.load_extra_state_dict(ck["extra"])
    opt2 = torch.optim.SGD(e.param_groups(0.01, 10.0), lr=0.01, momentum=0.9)
    opt2.load_state_dict(ck["opt"])
    torch.set_rng_state(ck["rng"])
    assert [step(e, opt2, 12), step(e, opt2, 13)] == losses
    for k, v in d.extra_state_dict()["critic"].items():
        assert torch.equal(v, e.extra_state_dict()["critic"][k]), k
    for k, v in d.student.state_dict().items():
        assert torch.equal(v, e.student.state_dict()[k]), k
    assert e.holistic.steps == 4


def test_critic_state_that_does_not_fit_is_a_clear_error():
    d = tiny("skd")
    other = build_distiller(TinySeg(C, 4), TinySeg(C, 6), recipe("skd", holistic={"channels": 8}))
    with pytest.raises(Exception, match="critic state does not fit"):
        d.load_extra_state_dict(other.extra_state_dict())


# -------------------------------------------------------------------------------- recipes
def test_recipe_options_and_method_defaults():
    r = recipe_from_dict({"distill": {"method": "ifvd", "ifvd": {"holistic": {"enabled": False}}}})
    h = r.distill.ifvd.holistic
    # setting one holistic key keeps IFVD's own defaults for the rest
    assert (h.enabled, h.weight, h.optimizer, h.weight_decay) == (False, 0.001, "adam", 0.0)
    s = recipe_from_dict({"distill": {"method": "skd"}}).distill.skd
    assert (s.pi_weight, s.pa_weight, s.pair_pool_scale) == (10.0, 0.5, 0.5)
    assert (s.holistic.weight, s.holistic.optimizer, s.holistic.lr, s.holistic.gp_weight) == (0.1, "sgd", 4e-4, 10.0)
    with pytest.raises(RecipeError, match=r"distill.skd.pair_pool_scale: 0.0 is out of range"):
        recipe_from_dict({"distill": {"skd": {"pair_pool_scale": 0}}})
    with pytest.raises(RecipeError, match=r"unknown recipe key 'distill.skd.holistic.enable'.*enabled"):
        recipe_from_dict({"distill": {"skd": {"holistic": {"enable": False}}}})
    with pytest.raises(RecipeError, match=r"distill.ifvd.holistic.optimizer"):
        recipe_from_dict({"distill": {"ifvd": {"holistic": {"optimizer": "rmsprop"}}}})
    assert isinstance(tiny("skd"), SKDDistiller) and isinstance(tiny("ifvd"), IFVDDistiller)


# -------------------------------------------------------------------------------- through the engine
@pytest.mark.slow
def test_engine_resume_with_the_critic_matches_an_uninterrupted_run(tmp_path):
    """`distill` with skd: interrupted after its step-3 checkpoint and resumed == one uninterrupted run."""
    import json

    from apd_edge.engine.trainer import train
    from apd_edge.models import build_model

    tiny_kw = {"alpha2": 1, "alpha3": 1}
    torch.manual_seed(0)
    teacher_path = tmp_path / "teacher.pt"
    torch.save(build_model("espnet", 10, **tiny_kw).state_dict(), teacher_path)

    def rec(name):
        return recipe_from_dict({
            "name": name, "seed": 5, "output_dir": str(tmp_path / "runs"),
            "model": {"name": "espnet", "kwargs": tiny_kw},
            "teacher": {"name": "espnet", "checkpoint": str(teacher_path), "kwargs": tiny_kw},
            "data": {"dataset": "synthetic", "workers": 0, "options": {"num_train": 8, "num_val": 2, "size": [64, 64]},
                     "augment": {"scale": [0.75, 1.25]}},
            "train": {"iterations": 6, "batch_size": 2, "crop": [64, 64], "lr": 0.01, "log_interval": 1,
                      "eval_interval": 6, "ckpt_interval": 3, "device": "cpu", "sync_bn": False},
            "distill": {"method": "skd", "skd": {"holistic": {"channels": 4}}},
            "eval": {"batch_size": 2},
        })

    ref = train(rec("ref"), distill=True, progress=False)

    class Interrupt(Exception):
        pass

    def stop_at_4(step):
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(rec("cut"), distill=True, progress=False, on_step=stop_at_4)
    cut = train(rec("cut"), resume=True, distill=True, progress=False)
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (cut, ref))
    assert a["step"] == b["step"] == 6 and a["method"] == "skd"
    assert b["distiller_extra"]["critic_steps"] == 6
    assert not any("critic" in k for k in b["model"])  # the student's state (what export sees) has no critic
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in b["distiller_extra"]["critic"].items():
        assert torch.equal(a["distiller_extra"]["critic"][k], v), k
    for k, v in b["distiller_extra"]["critic_optimizer"]["state"].items():
        assert torch.equal(a["distiller_extra"]["critic_optimizer"]["state"][k]["momentum_buffer"],
                           v["momentum_buffer"])

    def losses(run):
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["loss"], r["adv_d"]) for r in recs if r["type"] == "train"]

    assert losses(cut) == pytest.approx(losses(ref), rel=1e-6)


def test_cli_distill_with_ifvd_and_export_has_no_critic(tmp_path):
    """`apd-edge distill RECIPE --set distill.method=ifvd`: the normal path; the student checkpoint is critic-free."""
    import yaml
    from click.testing import CliRunner

    from apd_edge.cli.main import cli
    from apd_edge.engine import checkpoint as ckpt_mod
    from apd_edge.models import build_model

    tiny_kw = {"alpha2": 1, "alpha3": 1}
    teacher_path = tmp_path / "teacher.pt"
    torch.save(build_model("espnet", 10, **tiny_kw).state_dict(), teacher_path)
    rec = {"name": "ifvd_run", "output_dir": str(tmp_path / "runs"), "model": {"name": "espnet", "kwargs": tiny_kw},
           "teacher": {"name": "espnet", "checkpoint": str(teacher_path), "kwargs": tiny_kw},
           "data": {"dataset": "synthetic", "workers": 0, "options": {"num_train": 4, "num_val": 2, "size": [64, 64]}},
           "train": {"iterations": 2, "batch_size": 2, "crop": [64, 64], "log_interval": 1, "eval_interval": 2,
                     "ckpt_interval": 2, "device": "cpu", "sync_bn": False},
           "distill": {"method": "apd"}, "eval": {"batch_size": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(rec))
    res = CliRunner().invoke(cli, ["distill", str(path), "--set", "distill.method=ifvd",
                                   "--set", "distill.ifvd.holistic.channels=4", "--quiet"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "ifvd_run"
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["method"] == "ifvd" and last["distiller_extra"]["critic_steps"] == 2
    assert any(k.startswith("critic.") for k in last["distiller"])
    best = torch.load(run / "best.pt", weights_only=True)
    assert "distiller_extra" not in best and not any("critic" in k for k in best["model"])
    model, _ = ckpt_mod.model_from_checkpoint(run)  # what export loads: the student alone
    assert not any("critic" in k for k in model.state_dict())
