"""`apd-edge data check|synth|list` through Click's runner."""

from __future__ import annotations

from click.testing import CliRunner

from apd_edge.cli.main import cli
from helpers.data import camvid, mask_from, png


def test_check_ok_and_bad(tmp_path):
    root = camvid(tmp_path / "cv")
    res = CliRunner().invoke(cli, ["data", "check", f"camvid:{root}", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "train: 2 images, all readable" in res.output and "val: 1 images" in res.output
    train_table = res.output.split("split train")[1].split("split val")[0]
    road = next(line for line in train_table.splitlines() if line.split()[:2] == ["3", "Road"])
    assert road.split()[2] == str(2 * 24 * 8)  # one 8-px stripe per image, 2 train images
    png(root / "valannot" / "img0.png", mask_from([0, 42]))
    res = CliRunner().invoke(cli, ["data", "check", f"camvid:{root}", "--no-progress"])
    assert res.exit_code == 2
    assert "error: mask value 42" in res.output and "valannot/img0.png" in res.output


def test_check_bad_spec(tmp_path):
    res = CliRunner().invoke(cli, ["data", "check", "camvid"])
    assert res.exit_code == 2 and "expected DATASET:ROOT" in res.output
    res = CliRunner().invoke(cli, ["data", "check", f"citiscapes:{tmp_path}"])
    assert res.exit_code == 2 and "did you mean 'cityscapes'" in res.output


def test_synth_then_check(tmp_path):
    out = tmp_path / "syn"
    res = CliRunner().invoke(cli, ["data", "synth", str(out), "--num-train", "3", "--num-val", "2", "--size", "64x96"])
    assert res.exit_code == 0, res.output
    assert (out / "classes.yaml").is_file() and len(list((out / "masks" / "val").iterdir())) == 2
    res = CliRunner().invoke(cli, ["data", "check", f"folder:{out}", "--no-progress"])
    assert res.exit_code == 0 and "train: 3 images" in res.output and "96x64" not in res.output
    assert "sizes (H x W) 64x96 (3)" in res.output
    res = CliRunner().invoke(cli, ["data", "synth", str(out), "--size", "32x32"])
    assert res.exit_code == 2 and "too small" in res.output


def test_list():
    res = CliRunner().invoke(cli, ["data", "list"])
    assert res.exit_code == 0 and res.output.split() == ["ade20k", "camvid", "cityscapes", "folder",
                                                         "pascal_context", "synthetic"]
