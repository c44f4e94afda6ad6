"""Model zoo: output contract, gradients, sizes, ONNX parity, padding helper, registry errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from apd_edge.distill.base import task_loss
from apd_edge.errors import ApdError
from apd_edge.models import build_model, list_models
from apd_edge.models.inference import forward_padded
from apd_edge.models.profile import model_profile

STUDENTS = ["bisenetv2", "espnet", "mobilenetv2"]
FAST_TEACHERS = ["pspnet_r18", "deeplabv3_r18"]  # r50/r101 are only constructed (see the size tests)
C = 5


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics/affines, so eval-mode logits have a realistic range (not ~0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def test_registry_roles() -> None:
    assert list_models("student") == sorted(STUDENTS)
    assert set(list_models("teacher")) == {f"{k}_{d}" for k in ("pspnet", "deeplabv3") for d in ("r18", "r50", "r101")}
    assert set(list_models()) == set(list_models("student")) | set(list_models("teacher"))


# BN -> conv -> BN in train mode cancels a constant shift: the first BN's bias gets an exactly zero
# gradient in training (it matters only at inference, through the running statistics)
BATCH_CANCELLED = {"semantic.ce.bn.bias"}


@pytest.mark.parametrize("name", STUDENTS + FAST_TEACHERS)
def test_contract_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    # randomize_bn: timm zero-inits each residual block's last BN, which would zero whole branches' gradients
    model = randomize_bn(build_model(name, C))
    x = torch.randn(2, 3, 64, 96)
    labels = torch.randint(0, C, (2, 64, 96))
    labels[0, :8] = 255  # void pixels are ignored
    model.train()
    out = model(x)
    assert set(out) == {"out", "aux", "feat"}
    assert out["out"].shape == (2, C, 64, 96)
    assert len(out["aux"]) == len(model.default_aux_weights)
    for a in out["aux"]:
        assert a.shape[:2] == (2, C)
    s = model.feat_stride
    assert out["feat"].shape == (2, model.feat_channels, 64 // s, 96 // s)

    # the training loss (CE on out + weighted CE on each aux head) reaches every trainable parameter
    loss, parts = task_loss(out, labels, model.default_aux_weights)
    loss.backward()
    assert torch.isfinite(loss)
    assert ("aux" in parts) == bool(model.default_aux_weights)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [n for n, p in model.named_parameters()
            if p.grad is not None and not p.grad.abs().sum() > 0 and n not in BATCH_CANCELLED]
    assert not missing, f"no gradient for {missing[:5]}"
    assert not zero, f"all-zero gradient for {zero[:5]}"

    model.eval()
    with torch.no_grad():
        logits = model(x[:1])
        d = model.forward_dict(x[:1])
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, C, 64, 96)
    assert d["aux"] == [] and d["feat"].shape[1:] == out["feat"].shape[1:]  # eval: aux heads skipped, feat kept
    assert torch.allclose(d["out"], logits)


def test_param_counts_pinned() -> None:
    bise, esp = build_model("bisenetv2", 19), build_model("espnet", 19)
    assert abs(bise.num_params() / 3.36e6 - 1) < 0.05  # inference graph, 1024-wide head
    assert bise.num_params(inference=False) > bise.num_params() + 2e5  # booster heads exist but are not counted
    assert abs(esp.num_params() / 0.36e6 - 1) < 0.05
    assert esp.num_params() == esp.num_params(inference=False)
    wide = build_model("bisenetv2", 19, head_channels=256)
    assert wide.num_params() < bise.num_params() - 8e5


def test_teacher_sizes_on_meta() -> None:
    with torch.device("meta"):  # shapes only: builds R101 without allocating or initialising weights
        psp101 = build_model("pspnet_r101", 19)
        psp50 = build_model("pspnet_r50", 19)
    assert abs(psp101.num_params() / 65.7e6 - 1) < 0.05
    assert psp50.feat_channels == 512 and psp50.backbone.feature_info.channels() == [1024, 2048]


# state_dict keys and shapes (num_classes 19), pinned: checkpoints written by earlier versions must keep loading.
# Recorded before ASPP moved from models/mobilenetv2.py to models/common.py (issue 17); a module move or a
# renamed attribute changes a fingerprint. (timm's backbone key names are part of it.)
STATE_DICT_FINGERPRINTS = {
    "bisenetv2": (359, "0be22a3ff133c172"),
    "deeplabv3_r101": (688, "10a01baa4828c076"),
    "deeplabv3_r18": (184, "9d353bc1f1152236"),
    "deeplabv3_r50": (382, "6b58e8c99b9d9681"),
    "espnet": (210, "ca156a205a58d410"),
    "mobilenetv2": (358, "e31a55209f94f93c"),
    "pspnet_r101": (676, "bf1515c9f56c45b5"),
    "pspnet_r18": (172, "a4df14b58474ab32"),
    "pspnet_r50": (370, "0861949e4c106e8a"),
}


def _state_dict_fingerprint(model: nn.Module) -> tuple[int, str]:
    import hashlib

    sd = model.state_dict()
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
    return len(sd), hashlib.sha256(text.encode()).hexdigest()[:16]


def test_state_dict_keys_pinned() -> None:
    assert sorted(STATE_DICT_FINGERPRINTS) == list_models()
    for name, expected in STATE_DICT_FINGERPRINTS.items():
        with torch.device("meta"):  # keys and shapes only
            model = build_model(name, 19)
        assert _state_dict_fingerprint(model) == expected, name


def test_teachers_share_blocks_from_common_not_from_students() -> None:
    """Teachers and students share blocks through models/common.py; a teacher never imports a student module."""
    import ast
    import inspect

    from apd_edge.models import common, mobilenetv2, teachers

    tree = ast.parse(inspect.getsource(teachers))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"bisenetv2", "espnet", "mobilenetv2"}, imported
    assert teachers.ASPP is common.ASPP and mobilenetv2.ASPP is common.ASPP
    dl = build_model("deeplabv3_r18", C)
    assert type(dl.aspp) is common.ASPP
    assert [b[0].dilation for b in dl.aspp.branches] == [(1, 1), (12, 12), (24, 24), (36, 36)]


@pytest.mark.parametrize("name", FAST_TEACHERS)
def test_teacher_output_stride_16(name: str) -> None:
    """OS16 halves the feature map, keeps full-size logits and the same weights (only dilation changes)."""
    torch.manual_seed(0)
    os8 = build_model(name, C).eval()
    os16 = build_model(name, C, output_stride=16).eval()
    assert os16.feat_stride == 16 and os8.feat_stride == 8
    assert set(os16.state_dict()) == set(os8.state_dict())
    x = torch.randn(2, 3, 64, 96)  # batch 2: training-mode BN on the 1x1 pooled branch needs > 1 value
    out = os16.train()(x)
    assert out["out"].shape[-2:] == (64, 96) and out["feat"].shape[-2:] == (4, 6)
    assert os8.train()(x)["feat"].shape[-2:] == (8, 12)
    with pytest.raises(ApdError, match="output_stride must be 8 or 16"):
        build_model(name, C, output_stride=32)


def test_r50_teacher_constructs() -> None:
    model = build_model("deeplabv3_r50", 19)
    assert model.feat_channels == 256 and model.default_aux_weights == [0.4]
    assert 38e6 < model.num_params() < 42e6
    groups = model.lr_groups()
    assert groups["backbone"] and groups["head"]
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def test_profile_macs() -> None:
    bise = model_profile("bisenetv2", 19, (512, 1024))
    esp = model_profile("espnet", 19, (512, 1024))
    assert abs(bise["gmacs"] / 24.6 - 1) < 0.05  # the reimplementation's count
    assert abs(esp["gmacs"] / 4.7 - 1) < 0.05  # the paper's count
    assert bise["role"] == "student" and bise["feat_channels"] == 128 and bise["params"] == 3358627
    small = model_profile("bisenetv2", 19, (256, 512))
    assert abs(bise["macs"] / small["macs"] - 4) < 0.1  # conv MACs scale with pixels


def test_lr_groups_from_scratch_students_use_base_lr() -> None:
    model = build_model("bisenetv2", 3)
    assert model.lr_groups()["head"] == [] and len(model.lr_groups()["backbone"]) == len(list(model.parameters()))
    mnv2 = build_model("mobilenetv2", 3).lr_groups()
    assert mnv2["backbone"] and mnv2["head"]


def test_espnet_alpha_and_tiny_class_counts() -> None:
    small = build_model("espnet", 2, alpha2=1, alpha3=2)
    assert small.num_params() < build_model("espnet", 2).num_params()
    small.eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def _export(model: nn.Module, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter: fast and exact here; the dynamo exporter takes ~40 s per model and
        # fails its opset-17 down-conversion on these graphs (torch 2.14)
        torch.onnx.export(model, (torch.randn(1, 3, *size),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"}})
    return buf.getvalue()


@pytest.mark.parametrize("name", STUDENTS)
def test_onnx_export_matches_pytorch(name: str) -> None:
    import onnxruntime as ort  # a core dependency: its absence is a broken install, not a skip
    torch.manual_seed(1)
    model = randomize_bn(build_model(name, 19)).eval()
    sess = ort.InferenceSession(_export(model, (64, 96)), providers=["CPUExecutionProvider"])
    for size in [(64, 96), (96, 128)]:  # the second size runs the dynamic-shape graph
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == ref.shape == (1, 19, *size)
        spread = float(ref.max() - ref.min())
        assert spread > 0.1  # logits are not degenerate, so the tolerance means something
        assert float(np.abs(got - ref).max()) < 1e-4 * spread


def test_forward_padded_crops_back() -> None:
    torch.manual_seed(0)
    model = randomize_bn(build_model("espnet", 4)).eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        out = forward_padded(model, x)
        padded = torch.nn.functional.pad(x, (0, 26, 0, 14), mode="reflect")
        ref = model(padded)[..., :50, :70]
        same = torch.randn(1, 3, 64, 96)
        assert torch.equal(forward_padded(model, same), model(same))  # already a multiple: untouched
        tiny = forward_padded(model, torch.randn(1, 3, 9, 20))  # pad larger than the image: replicate
    assert out.shape == (1, 4, 50, 70)
    assert torch.allclose(out, ref)
    assert tiny.shape == (1, 4, 9, 20)
    model.train()
    assert forward_padded(model, torch.randn(2, 3, 40, 40)).shape == (2, 4, 40, 40)  # dict output in train mode


def test_unknown_model_name_suggests() -> None:
    with pytest.raises(ApdError, match=r"unknown model 'bisenet'.*did you mean 'bisenetv2'"):
        build_model("bisenet", 19)
    with pytest.raises(ApdError, match="pspnet_r50"):
        build_model("pspnet_r05", 19)


def test_pretrained_offline_error_is_one_clear_line(monkeypatch) -> None:
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ApdError) as exc:
        build_model("pspnet_r50", 19, pretrained=True)
    msg = str(exc.value)
    assert "\n" not in msg and "resnet50d" in msg and "offline" in msg and "model.pretrained: false" in msg
    assert exc.value.__suppress_context__  # no chained traceback
    with pytest.raises(ApdError, match="mobilenetv2_100"):
        build_model("mobilenetv2", 19, pretrained=True)
    assert build_model("pspnet_r18", 3, pretrained=False).feat_channels == 512  # always works offline


def test_scratch_students_refuse_pretrained() -> None:
    with pytest.raises(ApdError, match="model.pretrained: false"):
        build_model("bisenetv2", 19, pretrained=True)


def test_pretrained_offline_fails_fast(monkeypatch):
    """No network and no cached weights: one quick probe, then a one-line error (no minute of retries)."""
    import socket
    import time

    from apd_edge.models import common

    calls = []

    def refuse(addr, timeout=None):
        calls.append((addr, timeout))
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(common, "weights_cached", lambda arch: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.monotonic()
    with pytest.raises(ApdError, match=r"mobilenetv2_100 are not cached and the model hub is unreachable"):
        common.timm_backbone("mobilenetv2_100", True, out_indices=(3, 4))
    assert time.monotonic() - t0 < 2 and len(calls) == 1 and calls[0][1] <= 5
    assert calls[0][0][0] == "huggingface.co"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub's own offline switch: no probe at all
    with pytest.raises(ApdError, match="unreachable"):
        common.timm_backbone("mobilenetv2_100", True)
    assert len(calls) == 1
