"""`apd-edge import`: the ESPNet authors' key mapping (against a forward written here from their Model.py),
scoring with declared extra classes (void), and the command's error paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from apd_edge.cli.main import cli
from apd_edge.checkpoint import model_from_checkpoint
from apd_edge.engine.importers import (ESPNET_CAMVID_BGR_MEAN, ESPNET_CAMVID_BGR_STD, espnet_authors_key_map,
                                       import_weights, remap_keys)
from apd_edge.errors import ApdError
from apd_edge.metrics import ConfusionMatrix, scored_classes
from apd_edge.models import build_model

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("APD_EDGE_WEIGHTS", REPO.parent / "shared" / "weights"))
AUTHORS_FILE = WEIGHTS / "espnet_p2_q8_camvid_authors.pth"


# ------------------------------------------------------------------------------------------------
# An independent forward of the authors' ESPNet (sacmehta/ESPNet train/Model.py) on their raw keys
# ------------------------------------------------------------------------------------------------


def _bn(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-3)


def _br(sd, p, x):  # BR: BatchNorm(eps 1e-3) + PReLU
    return F.prelu(_bn(sd, f"{p}.bn", x), sd[f"{p}.act.weight"])


def _esp(sd, p, x, down: bool, add: bool):
    """DownSamplerB (down) / DilatedParllelResidualBlockB: c1, d1..d16, hierarchical sums, cat, (+x), BR."""
    w = sd[f"{p}.c1.conv.weight"]
    o = F.conv2d(x, w, stride=2 if down else 1, padding=(w.shape[-1] - 1) // 2)
    d = {r: F.conv2d(o, sd[f"{p}.d{r}.conv.weight"], padding=r, dilation=r) for r in (1, 2, 4, 8, 16)}
    a1 = d[2]
    a2 = a1 + d[4]
    a3 = a2 + d[8]
    a4 = a3 + d[16]
    y = torch.cat([d[1], a1, a2, a3, a4], 1)
    if down:
        return F.prelu(_bn(sd, f"{p}.bn", y), sd[f"{p}.act.weight"])
    if add:
        y = x + y
    return _br(sd, f"{p}.bn", y)


def authors_forward(sd: dict, x_bgr_normalised: torch.Tensor, alpha2: int, alpha3: int) -> torch.Tensor:
    x = x_bgr_normalised
    e = "encoder"
    o0 = F.prelu(_bn(sd, f"{e}.level1.bn", F.conv2d(x, sd[f"{e}.level1.conv.weight"], stride=2, padding=1)),
                 sd[f"{e}.level1.act.weight"])
    inp1 = F.avg_pool2d(x, 3, 2, 1)
    inp2 = F.avg_pool2d(inp1, 3, 2, 1)
    o0_cat = _br(sd, f"{e}.b1", torch.cat([o0, inp1], 1))
    o1_0 = _esp(sd, f"{e}.level2_0", o0_cat, True, False)
    o1 = o1_0
    for i in range(alpha2):
        o1 = _esp(sd, f"{e}.level2.{i}", o1, False, True)
    o1_cat = _br(sd, f"{e}.b2", torch.cat([o1, o1_0, inp2], 1))
    o2_0 = _esp(sd, f"{e}.level3_0", o1_cat, True, False)
    o2 = o2_0
    for i in range(alpha3):
        o2 = _esp(sd, f"{e}.level3.{i}", o2, False, True)
    o2_cat = _br(sd, f"{e}.b3", torch.cat([o2_0, o2], 1))
    o2_c = F.conv_transpose2d(_bn(sd, "br", F.conv2d(o2_cat, sd[f"{e}.classifier.conv.weight"])),
                              sd["up_l3.0.weight"], stride=2)
    o1_c = F.conv2d(o1_cat, sd["level3_C.conv.weight"])
    comb = _br(sd, "combine_l2_l3.0", torch.cat([o1_c, o2_c], 1))
    comb = _esp(sd, "combine_l2_l3.1", comb, False, False)
    comb = _br(sd, "up_l2.1", F.conv_transpose2d(comb, sd["up_l2.0.weight"], stride=2))
    feats = torch.cat([comb, o0_cat], 1)
    feats = F.prelu(_bn(sd, "conv.bn", F.conv2d(feats, sd["conv.conv.weight"], padding=1)), sd["conv.act.weight"])
    return F.conv_transpose2d(feats, sd["classifier.weight"], stride=2)


def authors_preprocess(rgb: np.ndarray) -> torch.Tensor:
    """Their loader: OpenCV BGR float, (x - M) / S per channel, then ToTensor's div(255)."""
    bgr = rgb[:, :, ::-1].astype(np.float32)
    bgr = (bgr - np.array(ESPNET_CAMVID_BGR_MEAN, np.float32)) / np.array(ESPNET_CAMVID_BGR_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1))).div(255).unsqueeze(0)


def our_preprocess(rgb: np.ndarray, mean, std) -> torch.Tensor:
    """apd-edge's convention, as the data pipeline and the runtime apply it: (rgb / 255 - mean) / std."""
    x = (rgb.astype(np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).unsqueeze(0)


def synthetic_authors_state(alpha2: int, alpha3: int, classes: int = 12, seed: int = 0) -> dict:
    """Random tensors under the authors' names and shapes, built from our model through the inverse mapping."""
    ours = build_model("espnet", classes, alpha2=alpha2, alpha3=alpha3).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for theirs, mine in espnet_authors_key_map(alpha2, alpha3).items():
        shape = ours[mine].shape
        if mine.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif mine.endswith("running_mean") or mine.endswith("bias"):
            t = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN gamma, PReLU slopes
            t = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        out[theirs] = t
    return out


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rel_diff(model, mean, std, state: dict, alpha2: int, alpha3: int) -> float:
    """Max |our logits - the authors' logits| / max |theirs| on a 64x96 image, each with its own preprocessing."""
    rgb = _image(64, 96)
    with torch.no_grad():
        ref = authors_forward(state, authors_preprocess(rgb), alpha2, alpha3)
        got = model.eval()(our_preprocess(rgb, mean, std))
    assert got.shape == ref.shape == (1, 12, 64, 96)
    assert ref.abs().max() > 1e-2  # not a degenerate all-zero comparison
    return float((got - ref).abs().max() / ref.abs().max().clamp(min=1.0))


def _compare(tmp_path, state: dict, alpha2: int, alpha3: int) -> float:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "authors.pth"
    torch.save(state, src)
    run = import_weights(src, out=tmp_path / "runs", data_root=str(tmp_path / "camvid"))
    model, ckpt = model_from_checkpoint(run / "best.pt")
    assert ckpt["model_kwargs"] == {"alpha2": alpha2, "alpha3": alpha3}
    return _rel_diff(model, ckpt["mean"], ckpt["std"], state, alpha2, alpha3)


def test_key_mapping_covers_our_model_exactly():
    for a2, a3 in ((2, 8), (1, 3)):
        mapping = espnet_authors_key_map(a2, a3)
        ours = {k for k in build_model("espnet", 12, alpha2=a2, alpha3=a3).state_dict()
                if not k.endswith("num_batches_tracked")}
        assert set(mapping.values()) == ours
        assert len(set(mapping.values())) == len(mapping)  # one to one


def test_synthetic_authors_weights_reproduce_their_forward(tmp_path):
    state = synthetic_authors_state(1, 3)
    assert _compare(tmp_path, state, 1, 3) < 1e-4
    # the test can fail: renaming alone, or reversing only the first convolution's channels (the pooled
    # image is also concatenated into the encoder), gives other logits
    _, ckpt = model_from_checkpoint(tmp_path / "runs" / "espnet_camvid_authors")
    naive = remap_keys(state, espnet_authors_key_map(1, 3), "espnet_authors")
    model = build_model("espnet", 12, alpha2=1, alpha3=3)
    model.load_state_dict(naive, strict=False)
    assert _rel_diff(model, ckpt["mean"], ckpt["std"], state, 1, 3) > 1e-3
    naive["level1.0.weight"] = naive["level1.0.weight"].flip(1)
    model.load_state_dict(naive, strict=False)
    assert _rel_diff(model, ckpt["mean"], ckpt["std"], state, 1, 3) > 1e-3


@pytest.mark.skipif(not AUTHORS_FILE.is_file(), reason=f"authors' weights not found at {AUTHORS_FILE} "
                                                       "(set APD_EDGE_WEIGHTS to the folder holding them)")
def test_authors_camvid_model_reproduces_their_logits(tmp_path):
    state = torch.load(AUTHORS_FILE, map_location="cpu", weights_only=True)
    assert _compare(tmp_path, state, 2, 8) < 1e-4
    ckpt = torch.load(tmp_path / "runs" / "espnet_camvid_authors" / "best.pt", weights_only=True)
    assert ckpt["extra_classes"] == ["void"] and ckpt["classes"][-1] == "void" and ckpt["num_classes"] == 12
    assert ckpt["recipe"]["data"]["dataset"] == "camvid"
    assert ckpt["recipe"]["data"]["mean"] == pytest.approx([105.03 / 255, 108.41 / 255, 110.33 / 255])
    assert ckpt["recipe"]["data"]["std"] == pytest.approx([69.90, 72.69, 72.13])


# ------------------------------------------------------------------------------------------------
# Scoring with a declared extra class
# ------------------------------------------------------------------------------------------------


def test_void_predictions_are_errors_and_not_averaged():
    # 2 labelled classes + void (2) as an extra output; 255 is ignored
    target = np.array([0, 0, 0, 0, 1, 1, 1, 1, 255, 255])
    pred = np.array([0, 0, 2, 1, 1, 1, 2, 2, 2, 0])
    cm = ConfusionMatrix(2, extra_classes=1)
    cm.update(pred, target)
    assert cm.mat.tolist() == [[2, 1, 1], [0, 2, 2]]
    r = cm.compute()
    # class 0: tp 2, gt 4, predicted 2 -> 2 / 4; class 1: tp 2, gt 4, predicted 3 -> 2 / 5
    assert r["iou"] == pytest.approx([0.5, 0.4])
    assert r["miou"] == pytest.approx(0.45)
    assert r["acc"] == pytest.approx(4 / 8)
    assert r["extra_share"] == pytest.approx(3 / 8)
    assert "void" in cm.table(["a", "b", "void"]) and "37.50%" in cm.table(["a", "b", "void"])
    # the same through torch tensors
    cmt = ConfusionMatrix(2, extra_classes=1)
    cmt.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert (cmt.mat == cm.mat).all()
    with pytest.raises(ValueError, match="outside 0..2"):
        cm.update(np.array([3]), np.array([0]))


def test_scored_classes_needs_declared_extras():
    assert scored_classes(12, 11, ["void"]) == 11
    assert scored_classes(11, 11) == 11
    with pytest.raises(ApdError, match="declare them as extra_classes"):
        scored_classes(12, 11)
    with pytest.raises(ApdError, match="predicts 10"):
        scored_classes(12, 11, ["void", "other"])
    with pytest.raises(ApdError, match="has 19 classes"):
        scored_classes(12, 19, ["void"])


# ------------------------------------------------------------------------------------------------
# The command, end to end on a tiny CamVid, and its error paths
# ------------------------------------------------------------------------------------------------


def test_cli_import_then_eval_and_export_score_11_classes(tmp_path, monkeypatch):
    from helpers.data import camvid

    from apd_edge.engine.evaluate import evaluate_checkpoint

    monkeypatch.chdir(tmp_path)
    root = camvid(tmp_path / "camvid", n_train=1, n_val=2, values=(0, 3, 10, 11))
    torch.save(synthetic_authors_state(1, 2), tmp_path / "w.pth")
    runner = CliRunner()
    res = runner.invoke(cli, ["import", "w.pth", "--data-root", str(root), "--name", "imp"])
    assert res.exit_code == 0, res.output
    assert "12 outputs (1 not scored: void)" in res.output and "apd-edge eval runs/imp" in res.output
    again = runner.invoke(cli, ["import", "w.pth", "--name", "imp"])
    assert again.exit_code == 2 and "--force" in again.output

    res = runner.invoke(cli, ["eval", "runs/imp", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Bicyclist" in res.output and "not scored" in res.output
    # the printed mIoU is the 11-class mIoU with void predictions counted as errors
    r = evaluate_checkpoint("runs/imp", progress=False)
    model, ckpt = model_from_checkpoint("runs/imp/best.pt")
    from apd_edge.data import build_dataset
    from apd_edge.config import recipe_from_dict

    ds = build_dataset(recipe_from_dict(ckpt["recipe"]).data, "val")
    cm = ConfusionMatrix(11, extra_classes=1)
    with torch.no_grad():
        for i in range(len(ds)):
            img, mask = ds[i]
            x = F.pad(our_preprocess(img, ckpt["mean"], ckpt["std"]), (0, 0, 0, 8), mode="reflect")  # 24 -> 32
            cm.update(model.eval()(x)[0, :, :24].argmax(0).numpy(), mask)
    assert r["miou"] == pytest.approx(cm.compute()["miou"])
    assert np.array_equal(r["confusion"].mat, cm.mat) and cm.mat.shape == (11, 12)

    from apd_edge.export.bundle import export_bundle
    from apd_edge.runtime.manifest import load_manifest

    bundle = export_bundle("runs/imp", tmp_path / "bundle", input_size=(32, 32), progress=False)
    m = load_manifest(bundle)
    assert m["extra_classes"] == ["void"] and m["num_classes"] == 12
    assert m["parity"]["results"]["fp32"]["miou"] == pytest.approx(100 * cm.compute()["miou"], abs=1e-6)

    from apd_edge.bench.accuracy import evaluate_predictor, resolve_eval_data
    from apd_edge.runtime.segmenter import Segmenter

    seg = Segmenter.from_bundle(bundle)
    ev = resolve_eval_data(m)
    acc = evaluate_predictor(seg.predict, ev.dataset, m["num_classes"], extra_classes=m["extra_classes"])
    assert acc["miou"] == pytest.approx(cm.compute()["miou"], abs=1e-6)
    with pytest.raises(ApdError, match="extra_classes"):
        evaluate_predictor(seg.predict, ev.dataset, m["num_classes"])


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def test_cli_import_error_paths(tmp_path):
    runner = CliRunner()
    line = _one_line_error(runner.invoke(cli, ["import", str(tmp_path / "nope.pth")]))
    assert "not found" in line and "nope.pth" in line

    state = synthetic_authors_state(1, 1)
    good = tmp_path / "w.pth"
    torch.save(state, good)
    line = _one_line_error(runner.invoke(cli, ["import", str(good), "--format", "espnet_author"]))
    assert "did you mean 'espnet_authors'" in line

    bad = dict(state)
    bad.pop("encoder.b1.act.weight")
    bad["decoder.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    line = _one_line_error(runner.invoke(cli, ["import", str(tmp_path / "bad.pth"), "-f", "espnet_authors",
                                               "--out", str(tmp_path / "runs")]))
    assert "missing key 'encoder.b1.act.weight'" in line and "unexpected key 'decoder.extra.weight'" in line

    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    line = _one_line_error(runner.invoke(cli, ["import", str(tmp_path / "foreign.pth")]))
    assert "match no known format" in line and "espnet_authors" in line

    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    line = _one_line_error(runner.invoke(cli, ["import", str(tmp_path / "garbage.pth")]))
    assert line.startswith("error: cannot read")

    wrong = dict(state)
    wrong["classifier.weight"] = torch.zeros(12, 12, 3, 3)
    torch.save(wrong, tmp_path / "shape.pth")
    line = _one_line_error(runner.invoke(cli, ["import", str(tmp_path / "shape.pth"), "--out", str(tmp_path / "r")]))
    assert "'up1.weight' has shape (12, 12, 3, 3)" in line


def test_import_unwraps_containers_and_dataparallel(tmp_path):
    state = synthetic_authors_state(1, 1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pth")
    run = import_weights(tmp_path / "w.pth", out=tmp_path / "runs", name="x")
    _, ckpt = model_from_checkpoint(run)
    assert torch.equal(ckpt["model"]["up1.weight"], state["classifier.weight"])
    assert torch.equal(ckpt["model"]["level1.0.weight"], state["encoder.level1.conv.weight"][:, [2, 1, 0]])
    assert torch.equal(ckpt["model"]["bn1.0.weight"][16:], state["encoder.b1.bn.weight"][[18, 17, 16]])
    assert ckpt["recipe"]["data"]["root"] == "data/camvid"
    with pytest.raises(ApdError, match="already an apd-edge checkpoint"):
        import_weights(run / "best.pt", out=tmp_path / "runs", name="y")


def convert_for_test(state):
    """A user importer given as --format tests.module:function: the authors' layout under another name."""
    from apd_edge.engine.importers import IMPORTERS

    imp = IMPORTERS.get("espnet_authors").convert(state)
    imp.run_name = "user_fmt"
    return imp


def test_user_importer_by_module_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    torch.save(synthetic_authors_state(1, 1), tmp_path / "w.pth")
    res = CliRunner().invoke(cli, ["import", str(tmp_path / "w.pth"), "--format", "test_importers:convert_for_test",
                                   "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "user_fmt" / "best.pt").is_file()
    line = _one_line_error(CliRunner().invoke(cli, ["import", str(tmp_path / "w.pth"), "--format", "nope_mod:f"]))
    assert "cannot import" in line
