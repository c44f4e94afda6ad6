"""QAT: fake quantization against hand-computed Q/DQ, straight-through gradients, the fine-tuning run
(export passes check_qdq, distillation KL decreases, resume is exact), option validation and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from onnx import numpy_helper
from torch import nn

from apd_edge.cli.main import cli
from apd_edge.config import RecipeError
from apd_edge.checkpoint import load_checkpoint, model_from_checkpoint
from apd_edge.engine.fakequant import (ActQuant, QATConv, fake_quant_act, fake_quant_weight, fp32_state_dict,
                                       insert_fake_quant, quantizable_convs, remove_fake_quant)
from apd_edge.engine.qat import QATConfig, QATRun, parse_qat_overrides, pixel_kl, run_qat
from apd_edge.errors import ApdError
from apd_edge.export.qat import module_of_node
from helpers.training import TINY, tiny_recipe


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny steps run on one torch thread


def _ref_qdq(x: np.ndarray, scale) -> np.ndarray:
    """QuantizeLinear (round half to even, int8 [-127, 127], zero point 0) then DequantizeLinear."""
    return np.clip(np.rint(x / scale), -127, 127) * scale


@pytest.mark.parametrize("kind", ["conv", "convtranspose"])
def test_weight_fake_quant_is_per_output_channel_qdq(kind):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3) if kind == "conv" else nn.ConvTranspose2d(3, 4, 2, 2)
    with torch.no_grad():  # channels of very different magnitude: a wrong axis gives a different grid
        shape = [1, 1, 1, 1]
        axis = 0 if kind == "conv" else 1
        shape[axis] = 4
        conv.weight.mul_(torch.tensor([0.01, 0.1, 1.0, 10.0]).reshape(shape))
    w = conv.weight.detach().numpy()
    other = tuple(d for d in range(4) if d != axis)
    scale = np.abs(w).max(axis=other, keepdims=True) / 127
    expected = _ref_qdq(w, scale)
    got = fake_quant_weight(conv.weight, axis).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(w).max())
    wrong = fake_quant_weight(conv.weight, 1 - axis).detach().numpy()
    assert np.abs(wrong - expected).max() > 1e-3  # the axis matters on this weight

    # the wrapped module: input QDQ per tensor, then the conv on QDQ weights
    q = QATConv(conv)
    x = torch.randn(2, 3, 6, 6)
    q.act.observe = True
    q(x)
    q.act.observe = False
    amax = float(x.abs().max())
    assert float(q.act.scale) == pytest.approx(amax / 127, rel=1e-6)
    xq = torch.from_numpy(_ref_qdq(x.numpy(), amax / 127).astype(np.float32))
    wq = torch.from_numpy(expected.astype(np.float32))
    ref = F.conv2d(xq, wq, conv.bias) if kind == "conv" else F.conv_transpose2d(xq, wq, conv.bias, stride=2)
    torch.testing.assert_close(q(x), ref, rtol=1e-4, atol=1e-4)


def test_activation_fake_quant_values_and_straight_through_gradient():
    scale = torch.tensor(0.1)
    x = torch.tensor([-20.0, -12.7, -0.26, -0.05, 0.0, 0.04, 0.15, 0.25, 3.333, 12.69, 12.8, 50.0], requires_grad=True)
    y = fake_quant_act(x, scale)
    np.testing.assert_allclose(y.detach().numpy(), _ref_qdq(x.detach().numpy(), 0.1), atol=1e-6)
    # clamped to +-127 steps
    assert float(y[0].detach()) == pytest.approx(-12.7) and float(y[-1].detach()) == pytest.approx(12.7)
    y.sum().backward()
    inside = (x.detach().abs() <= 12.7 + 1e-6).float()
    assert torch.equal(x.grad, inside)  # 1 inside the range, 0 outside
    assert x.grad[0] == 0 and x.grad[-1] == 0 and x.grad[3] == 1

    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    fake_quant_weight(w, 0).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # the max|w| scale never clips a weight

    obs = ActQuant(momentum=0.5)
    obs.observe = True
    out = obs(torch.tensor([1.0, -4.0]))
    assert torch.equal(out, torch.tensor([1.0, -4.0]))  # observing passes through
    obs(torch.tensor([2.0]))
    assert float(obs.amax) == pytest.approx(0.5 * 4 + 0.5 * 2)  # EMA of per-batch max|x|


def test_swap_keeps_parameters_and_strips_back_to_the_plain_model():
    from apd_edge.models import build_model

    torch.manual_seed(0)
    model = build_model("espnet", 5, **TINY).eval()
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    names, cls = quantizable_convs(model, x)
    assert cls == "up1" and "level1.0" in names and "up3" in names and "up2.0" in names
    wrapped = insert_fake_quant(model, names)
    assert isinstance(model.get_submodule("up3"), QATConv) and model.get_submodule("up3").axis == 1
    assert not isinstance(model.get_submodule("up1"), QATConv)
    sd = fp32_state_dict(model)
    assert sd.keys() == plain.keys() and all(torch.equal(sd[k], plain[k]) for k in sd)
    assert len(wrapped) == len(names)
    remove_fake_quant(model)
    assert model.state_dict().keys() == plain.keys()


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def _recipe(tmp_path) -> dict:
    r = tiny_recipe(tmp_path, "tiny", num_train=12, num_val=3, iterations=30, warmup_iters=0, log_interval=10,
                    eval_interval=30, ckpt_interval=30)
    return {**r, "eval": {"batch_size": 3}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ESPNet trained for a few steps on synthetic data (a run folder)."""
    from apd_edge.config import recipe_from_dict
    from apd_edge.engine.trainer import train

    torch.set_num_threads(1)
    return train(recipe_from_dict(_recipe(tmp_path_factory.mktemp("qat"))), progress=False)


def _cfg(**kw) -> QATConfig:
    base = {"iterations": 6, "batch_size": 4, "calib_images": 4, "log_interval": 2, "ckpt_interval": 2,
            "device": "cpu"}
    base.update(kw)
    return QATConfig(**base)


def test_qat_run_loads_as_plain_model_and_exports_a_valid_qdq_graph(trained, tmp_path):
    from apd_edge.export import export_bundle
    from apd_edge.export.quantize import check_qdq, classifier_nodes

    run = run_qat(trained, _cfg(), output_dir=tmp_path, progress=False)
    assert run == tmp_path / "tiny_qat"
    for f in ("best.pt", "last.pt", "recipe.yaml", "qat.yaml", "metrics.jsonl", "summary.json"):
        assert (run / f).is_file(), f
    model, ckpt = model_from_checkpoint(run / "last.pt")
    src, _ = model_from_checkpoint(trained / "best.pt")
    assert model.state_dict().keys() == src.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    q = ckpt["qat"]
    assert q["classifier"] == "up1" and set(q["act_scales"]) == set(q["quantized"]) and len(q["quantized"]) > 20
    assert all(v > 0 for v in q["act_scales"].values())
    assert q["config"]["iterations"] == 6 and q["loss"]["kd_weight"] == 1.0 and q["start"]["calib_images"] == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["method"] == "qat" and summary["fp32_miou"] is not None
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["type"] == "train"] == [2, 4, 6]
    assert [r["step"] for r in recs if r["type"] == "eval"] == [0, 6]

    bundle = export_bundle(run, tmp_path / "bundle", precisions=["fp32", "int8"], calib_images=4, parity_images=2,
                           progress=False, int8_target=None, int8_sensitivity=False)
    fp32 = onnx.load(str(bundle / "model.onnx"))
    int8 = onnx.load(str(bundle / "model_int8.onnx"))
    report = check_qdq(int8, classifier=classifier_nodes(fp32)[:1])
    assert report["problems"] == [] and report["quantized_convs"] > 20

    # the conv inputs carry the QAT ranges, not freshly calibrated ones
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["quantization"]["range_overrides"] > 10
    # only where QAT emulated Q/DQ: the `all` scheme is not even a candidate
    assert manifest["quantization"]["scheme"] == "weighted"
    assert {v["scheme"] for v in manifest["quantization"]["method_scores"].values()} == {"weighted"}
    inits = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    prod = {o: n for n in int8.graph.node for o in n.output}
    checked = 0
    for node in int8.graph.node:
        name = module_of_node(node.name)
        if node.op_type in ("Conv", "ConvTranspose") and name in q["act_scales"]:
            dq = prod[node.input[0]]
            assert dq.op_type == "DequantizeLinear"
            # the TensorRT graph carries FP16 scales: equal up to FP16 rounding (2^-11 relative)
            assert float(inits[dq.input[1]]) == pytest.approx(q["act_scales"][name], rel=2 ** -11), name
            checked += 1
    assert checked == len(q["quantized"])


def test_module_of_node_reads_the_exporters_scope_names():
    assert module_of_node("/level2/level2.0/reduce/Conv") == "level2.0.reduce"
    assert module_of_node("/level2_0/branches.0/Conv") == "level2_0.branches.0"
    assert module_of_node("/level1/level1.0/Conv") == "level1.0"
    assert module_of_node("/up1/ConvTranspose") == "up1"
    assert module_of_node("Conv_12") == ""


def test_qat_lowers_the_kl_to_the_fp32_model(trained, tmp_path):
    from apd_edge.data import build_loader

    torch.manual_seed(0)
    run = QATRun(trained, _cfg(iterations=20, ce_weight=0.0, optimizer="sgd", lr=3e-3, ckpt_interval=20),
                 output_dir=tmp_path, progress=False)
    run.calibrate()
    images = next(iter(build_loader(run.recipe, "train", train=False, batch_size=12)))[0][:, :, :64, :96]

    def kl() -> float:  # KL(FP32 || fake-quant student) on the 12 whole training images
        with torch.no_grad():
            ref = run.reference.forward_dict(images, with_aux=False)["out"]
            return float(pixel_kl(ref, run.student.forward_dict(images, with_aux=False)["out"]))

    before = kl()
    run.resume = True  # calibration done above; fit() skips it and the start evaluation
    run.fit()
    after = kl()
    assert before > 0 and after < 0.97 * before, (before, after)


def test_resume_after_interruption_gives_identical_weights(trained, tmp_path):
    cfg = _cfg(iterations=6, ckpt_interval=2)
    full = run_qat(trained, cfg, output_dir=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def stop_at(step):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        run_qat(trained, cfg, output_dir=tmp_path / "b", progress=False, on_step=stop_at)
    assert load_checkpoint(tmp_path / "b" / "tiny_qat" / "last.pt")["step"] == 2
    with pytest.raises(ApdError, match="--resume"):
        run_qat(trained, cfg, output_dir=tmp_path / "b", progress=False)
    resumed = run_qat(trained, cfg, output_dir=tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["qat"]["act_scales"] == b["qat"]["act_scales"]
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == [2, 4, 6]


def test_teacher_distillation_term(trained, tmp_path):
    from apd_edge.checkpoint import save_checkpoint

    ckpt = load_checkpoint(trained / "best.pt")
    ckpt["recipe"]["teacher"]["checkpoint"] = str(trained / "best.pt")  # the teacher is the FP32 student itself
    save_checkpoint(ckpt, tmp_path / "src" / "best.pt")
    run = run_qat(tmp_path / "src", _cfg(iterations=1, teacher=True, teacher_weight=0.5, log_interval=1),
                  name="t_qat", output_dir=tmp_path, progress=False)
    rec = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x)
    assert rec["teacher_kd"] == pytest.approx(rec["kd"], rel=1e-5) and rec["kd"] > 0
    assert rec["loss"] == pytest.approx(rec["ce"] + 1.5 * rec["kd"], rel=1e-5)
    assert load_checkpoint(run / "last.pt")["qat"]["loss"]["teacher_weight"] == 0.5


def test_options_are_validated_with_one_line_errors():
    assert parse_qat_overrides(["lr=5e-4", "qat.temperature=2", "crop=[64,96]"]).lr == 5e-4
    with pytest.raises(RecipeError, match="unknown QAT option 'qat.temprature'.*temperature"):
        parse_qat_overrides(["temprature=2"])
    with pytest.raises(RecipeError, match="qat.crop"):
        parse_qat_overrides(["crop=[60,96]"])
    with pytest.raises(RecipeError, match="qat.schedule"):
        parse_qat_overrides(["schedule=step"])
    with pytest.raises(RecipeError, match="loss weight"):
        parse_qat_overrides(["kd_weight=0", "ce_weight=0"])
    with pytest.raises(RecipeError, match="qat.iterations"):
        parse_qat_overrides(["iterations=0"])


def test_cli_qat_and_errors(trained, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["qat", str(tmp_path / "nope"), "--quiet"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "checkpoint not found" in res.output
    res = runner.invoke(cli, ["qat", str(trained), "--set", "lr_rate=1", "--quiet"])
    assert res.exit_code == 2 and "unknown QAT option 'qat.lr_rate'" in res.output
    res = runner.invoke(cli, ["qat", str(trained), "--teacher", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 2 and "teacher" in res.output
    res = runner.invoke(cli, ["qat", str(trained), "--out", str(tmp_path), "--name", "cli_qat", "--iterations", "2",
                              "--threads", "1", "--set", "calib_images=2", "--set", "device=cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "fake-quant start" in res.output and "apd-edge export" in res.output
    assert load_checkpoint(tmp_path / "cli_qat" / "last.pt")["qat"]["config"]["iterations"] == 2


def test_imported_extra_class_survives_qat(trained, tmp_path):
    """An imported model with a trailing output the dataset does not label (the ESPNet authors' void): QAT keeps
    the declaration (so eval/export score it as an error) and scores its own val mIoU the same way."""
    from apd_edge.checkpoint import load_checkpoint, save_checkpoint
    from apd_edge.models import build_model

    ckpt = load_checkpoint(trained / "best.pt")
    k = int(ckpt["num_classes"])
    model = build_model(ckpt["model_name"], num_classes=k + 1, **(ckpt.get("model_kwargs") or {}))
    ckpt.update(num_classes=k + 1, model=model.state_dict(), extra_classes=["void"],
                classes=list(ckpt.get("classes") or [f"c{i}" for i in range(k)]) + ["void"])
    src = tmp_path / "imported" / "best.pt"
    save_checkpoint(ckpt, src)
    run = run_qat(src, _cfg(iterations=2), output_dir=tmp_path, name="imp_qat", progress=False)
    out = load_checkpoint(run / "best.pt")
    assert out["extra_classes"] == ["void"] and out["num_classes"] == k + 1
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert start["type"] == "start" and 0.0 <= start["fp32_miou"] <= 1.0
