"""A user's own dataset in the layouts people have: every `folder` / `cityscapes` layout option on
fixtures written here, label maps, option validation (also through `recipe check`), stale options after
`--set data.dataset=...`, and the `data check` warnings."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from apd_edge.cli.main import cli
from apd_edge.config import DataConfig, load_recipe
from apd_edge.data import build_dataset
from apd_edge.data.registry import check_options
from apd_edge.errors import ApdError

from helpers.data import image, mask_from, png

SEVEN = ["road", "lane", "car", "person", "sign", "sky", "other"]


def cfg(name: str, root, **options) -> DataConfig:
    return DataConfig(dataset=name, root=str(root), options=options)


def driving(root, frames=("f2", "f10", "f1"), seq="seq01", classes: dict | None = None):
    """The Cityscapes-like layout from issue 14: leftImg8bit/<split>/<seq>/<frame>_image.jpg and
    gtFine/<split>/<seq>/<frame>_label.png, 7 classes, 255 void, plus classes.yaml."""
    for split in ("train", "val"):
        for k, f in enumerate(frames):
            png(root / "leftImg8bit" / split / seq / f"{f}_image.jpg", image(seed=k))
            png(root / "gtFine" / split / seq / f"{f}_label.png", mask_from([k, 6, 255, 2]))
    (root / "classes.yaml").write_text(yaml.safe_dump(classes or {"names": SEVEN}))
    return root


SUFFIXES = {"img_dir": "leftImg8bit", "mask_dir": "gtFine", "img_suffix": "_image.jpg", "mask_suffix": "_label.png"}


def test_folder_cityscapes_like_suffix_layout(tmp_path):
    root = driving(tmp_path)
    ds = build_dataset(cfg("folder", root, **SUFFIXES), "train")
    assert ds.class_names == SEVEN and len(ds) == 3
    # natural order: f1, f2, f10; masks paired by suffix across the nested sequence folder
    assert [p.name for p, _ in ds.samples] == ["f1_image.jpg", "f2_image.jpg", "f10_image.jpg"]
    assert [m.name for _, m in ds.samples] == ["f1_label.png", "f2_label.png", "f10_label.png"]
    img, mask = ds[0]  # f1 was written with k = 2
    assert img.shape == (24, 32, 3)
    np.testing.assert_array_equal(mask, mask_from([2, 6, 255, 2]))
    assert len(build_dataset(cfg("folder", root, **SUFFIXES), "val")) == 3
    # no images/ or masks/ placeholder folders exist, and none were needed
    assert not (root / "images").exists() and not (root / "masks").exists()


def test_folder_missing_mask_names_expected_path(tmp_path):
    root = driving(tmp_path)
    (root / "gtFine" / "val" / "seq01" / "f10_label.png").unlink()
    with pytest.raises(ApdError, match=r"no mask for .*f10_image\.jpg \(expected .*gtFine/val/seq01/f10_label\.png\)"):
        build_dataset(cfg("folder", root, **SUFFIXES), "val")


def test_cityscapes_generic_own_classes(tmp_path):
    root = driving(tmp_path)
    opts = {"img_suffix": "_image.jpg", "mask_suffix": "_label.png", "classes_file": "classes.yaml"}
    ds = build_dataset(cfg("cityscapes", root, **opts), "val")
    assert ds.num_classes == 7 and ds.class_names[2] == "car" and len(ds) == 3
    assert ds.samples[2][0].name == "f10_image.jpg"
    np.testing.assert_array_equal(ds[2][1], mask_from([1, 6, 255, 2]))  # f10 was written with k = 1


def test_cityscapes_generic_label_map(tmp_path):
    """Raw ids mapped to a user's own classes: names, indices, void, and unlisted ids void."""
    root = tmp_path
    png(root / "leftImg8bit" / "train" / "s" / "a_image.png", image())
    png(root / "gtFine" / "train" / "s" / "a_ids.png", mask_from([7, 26, 0, 33, 24]))
    (root / "mine.yaml").write_text(yaml.safe_dump({"names": ["road", "car", "person"], "unmapped": "void",
                                                    "label_map": {7: "road", 26: 1, 24: "person", 33: "void"}}))
    ds = build_dataset(cfg("cityscapes", root, img_suffix="_image.png", mask_suffix="_ids.png",
                           classes_file="mine.yaml"), "train")
    np.testing.assert_array_equal(ds[0][1], mask_from([0, 1, 255, 255, 2]))


def test_cityscapes_defaults_unchanged_with_custom_dirs(tmp_path):
    png(tmp_path / "img" / "train" / "c" / "x_leftImg8bit.png", image())
    png(tmp_path / "gt" / "train" / "c" / "x_gtFine_labelIds.png", mask_from([7, 26, 0]))
    ds = build_dataset(cfg("cityscapes", tmp_path, img_dir="img", mask_dir="gt"), "train")
    assert ds.num_classes == 19
    np.testing.assert_array_equal(ds[0][1], mask_from([0, 13, 255]))


def test_folder_side_by_side_and_split_placeholder(tmp_path):
    root = tmp_path
    (root / "classes.yaml").write_text(yaml.safe_dump(SEVEN))  # a plain list of names works too
    for split in ("train", "val"):
        png(root / split / "data" / "0001_image.jpg", image())
        png(root / split / "data" / "0001_label.png", mask_from([1, 5]))
    ds = build_dataset(cfg("folder", root, img_dir="{split}/data", mask_dir="{split}/data", img_suffix="_image.jpg",
                           mask_suffix="_label.png"), "val")
    assert len(ds) == 1 and ds.samples[0][1].name == "0001_label.png"
    np.testing.assert_array_equal(ds[0][1], mask_from([1, 5]))
    with pytest.raises(ApdError, match=r"split 'test' not found: no .*test/data"):
        build_dataset(cfg("folder", root, img_dir="{split}/data", mask_dir="{split}/data", img_suffix="_image.jpg",
                          mask_suffix="_label.png"), "test")


def test_folder_pair_list_needs_no_folders(tmp_path):
    root = tmp_path
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": SEVEN}))
    png(root / "raw" / "a.jpg", image())
    png(root / "ann" / "a_gt.png", mask_from([3]))
    (root / "train.txt").write_text("raw/a.jpg ann/a_gt.png\n\n")
    ds = build_dataset(cfg("folder", root), "train")
    assert len(ds) == 1 and not (root / "images").exists()
    np.testing.assert_array_equal(ds[0][1], mask_from([3]))
    (root / "val.txt").write_text("raw/a.jpg ann/a_gt.png extra\n")
    with pytest.raises(ApdError, match=r"val\.txt:1: expected 'image' or 'image mask'"):
        build_dataset(cfg("folder", root), "val")


def test_folder_image_list_with_suffixes(tmp_path):
    root = driving(tmp_path)
    (root / "val.txt").write_text("val/seq01/f2\nval/seq01/f10_image.jpg\n")  # the list wins over val/
    ds = build_dataset(cfg("folder", root, **SUFFIXES), "val")
    assert [m.name for _, m in ds.samples] == ["f2_label.png", "f10_label.png"]
    (root / "val.txt").write_text("val/seq01/nope\n")
    with pytest.raises(ApdError, match=r"val\.txt:1: image not found: .*nope_image\.jpg"):
        build_dataset(cfg("folder", root, **SUFFIXES), "val")


def test_folder_label_map_in_classes_file(tmp_path):
    root = tmp_path
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["bg", "fg"], "label_map": {0: "bg", 128: "fg",
                                                                                                  255: "void"}}))
    png(root / "images" / "train" / "a.png", image())
    png(root / "masks" / "train" / "a.png", mask_from([0, 128, 255]))
    png(root / "images" / "val" / "a.png", image())
    png(root / "masks" / "val" / "a.png", mask_from([0, 7]))
    np.testing.assert_array_equal(build_dataset(cfg("folder", root), "train")[0][1], mask_from([0, 1, 255]))
    with pytest.raises(ApdError, match=r"mask value 7 outside"):  # unmapped defaults to error
        build_dataset(cfg("folder", root), "val")[0]


@pytest.mark.parametrize("classes, msg", [
    ({"names": ["a", "a"]}, "distinct"),
    ({"names": ["a"], "label_map": {1: "b"}}, r"label_map 1: 'b' is not a class name"),
    ({"names": ["a"], "label_map": {"x": "a"}}, "not an integer mask value"),
    ({"names": ["a"], "unmapped": "void"}, "only applies with a label_map"),
    ({"names": ["a"], "palete": [[1, 2, 3]]}, r"unknown key 'palete' \(did you mean 'palette'"),
])
def test_bad_classes_file(tmp_path, classes, msg):
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(classes))
    png(tmp_path / "images" / "train" / "a.png", image())
    png(tmp_path / "masks" / "train" / "a.png", mask_from([0]))
    with pytest.raises(ApdError, match=msg):
        build_dataset(cfg("folder", tmp_path), "train")


@pytest.mark.parametrize("name, options, msg", [
    ("folder", {"mask_mode": "colour"}, "mask_mode: 'colour' is not one of"),
    ("folder", {"img_sufix": "_x.jpg"}, "did you mean 'img_suffix'"),
    ("folder", {"val_every": "ten"}, r"val_every: expected an integer"),
    ("folder", {"img_dir": "data", "mask_dir": "data"}, "img_suffix is required when images and masks share"),
    ("folder", {"mask_suffix": "gt/x.png"}, "mask_suffix: expected a file-name ending"),
    ("folder", {"void_color": [1, 2]}, r"void_color: expected \[r, g, b\]"),
    ("cityscapes", {"img_suffix": 3}, "img_suffix: expected a string for dataset 'cityscapes', got 3"),
    ("cityscapes", {"classes": "x.yaml"}, "did you mean 'classes_file'"),
    ("camvid", {"img_suffix": ".png"}, "unknown data.options key 'img_suffix' for dataset 'camvid'; valid: none"),
])
def test_option_validation_without_files(name, options, msg):
    with pytest.raises(ApdError, match=msg):
        check_options(name, options)


def _recipe(tmp_path, data: dict):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "bisenetv2"}, "data": data}))
    return path


def test_recipe_check_catches_bad_dataset_options(tmp_path):
    bad = _recipe(tmp_path, {"dataset": "folder", "root": str(tmp_path / "absent"), "options": {"mask_mode": "rgbb"}})
    res = CliRunner().invoke(cli, ["recipe", "check", str(bad)])
    assert res.exit_code == 2 and "mask_mode: 'rgbb' is not one of" in res.output
    # a layout that does not match the files is caught too when data.root exists here
    root = driving(tmp_path / "d")
    path = _recipe(tmp_path, {"dataset": "folder", "root": str(root), "options": {"img_dir": "leftImg8bit"}})
    res = CliRunner().invoke(cli, ["recipe", "check", str(path)])
    assert res.exit_code == 2 and "folder not found: " in res.output and "masks/train" in res.output
    res = CliRunner().invoke(cli, ["recipe", "check", str(path)]
                             + [f"--set=data.options.{k}={v}" for k, v in SUFFIXES.items()])
    assert res.exit_code == 0, res.output
    assert "# data train: 3 images, 7 classes (folder)" in res.output


def test_switching_dataset_drops_stale_options(tmp_path, capsys):
    path = _recipe(tmp_path, {"dataset": "cityscapes", "root": "x", "options": {"img_suffix": "_image.jpg"}})
    r = load_recipe(path, ["data.dataset=folder"])
    assert r.data.dataset == "folder" and r.data.options == {}
    assert "dropped data.options (img_suffix) of 'cityscapes'" in capsys.readouterr().err
    r = load_recipe(path, ["data.dataset=folder", "data.options.mask_suffix=_label.png"])
    assert r.data.options == {"mask_suffix": "_label.png"}
    r = load_recipe(path, ["data.dataset=cityscapes"])  # same dataset: options kept
    assert r.data.options == {"img_suffix": "_image.jpg"}


def test_data_check_warnings_and_strict(tmp_path):
    root = tmp_path / "d"
    (root).mkdir()
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["road", "car", "tree"]}))
    for k in range(2):
        png(root / "images" / "train" / f"{k}.png", image())
        png(root / "masks" / "train" / f"{k}.png", mask_from([0, 1, 2, 1]))
        png(root / "images" / "val" / f"{k}.png", image())
        png(root / "masks" / "val" / f"{k}.png", mask_from([255, 255, 255, 0]) if k else mask_from([255]))
    res = CliRunner().invoke(cli, ["data", "check", f"folder:{root}", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "split train (2 images)" in out and "split val (2 images)" in out
    assert "warning: val: 87.5% of pixels are void" in out
    assert "warning: val: 1 of 2 images are entirely void" in out
    assert "warning: val: 2 classes with no pixels: car, tree" in out
    assert "warning: train" not in out
    res = CliRunner().invoke(cli, ["data", "check", f"folder:{root}", "--no-progress", "--strict"])
    assert res.exit_code == 1
    res = CliRunner().invoke(cli, ["data", "check", f"folder:{root}", "--no-progress", "--strict", "--split", "train"])
    assert res.exit_code == 0 and "no warnings" in res.output


@pytest.mark.parametrize("doc", ["README.md", "docs/datasets.md"])
def test_documented_classes_file_is_valid(tmp_path, doc):
    """The classes.yaml examples in the docs load, and their label_map means what the comments say."""
    import re
    from pathlib import Path

    from apd_edge.data.layout import load_class_spec

    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("names:"))
    (tmp_path / "classes.yaml").write_text(block)
    spec = load_class_spec(tmp_path / "classes.yaml")
    assert spec.names == SEVEN and len(spec.palette) == 7 and spec.unmapped == "void"
    lut = spec.lut()
    assert lut[7] == 0 and lut[26] == 2 and lut[0] == 255 and lut[3] == 255  # 3 is not listed: void


def test_scored_images_rule():
    from apd_edge.data.scoring import describe_selection, scored_indices

    assert scored_indices(5) == [0, 1, 2, 3, 4] and scored_indices(5, 9) == [0, 1, 2, 3, 4]
    assert scored_indices(101, 3) == [0, 50, 100] and scored_indices(10, 1) == [0]
    assert len(scored_indices(233, 128)) == 128
    assert describe_selection("camvid", "val", 3, 101, 3) == "camvid:val, 3 of 101 images (evenly spaced, max 3)"
    assert describe_selection("camvid", "val", 101, 101) == "camvid:val, all 101 images"
    from apd_edge.export.parity import pick_indices

    assert pick_indices(233, 128) == scored_indices(233, 128)  # export parity scores the same images


def test_data_check_takes_options_on_the_command_line(tmp_path):
    root = driving(tmp_path)
    sets = [a for k, v in SUFFIXES.items() for a in ("--set", f"data.options.{k}={v}")]
    res = CliRunner().invoke(cli, ["data", "check", f"folder:{root}", "--no-progress", *sets])
    assert res.exit_code == 0, res.output
    assert "split train (3 images)" in res.output and "sizes (H x W) 24x32 (3)" in res.output


def test_eval_on_other_dataset_drops_checkpoint_options(capsys):
    from apd_edge.config import Recipe, recipe_to_dict
    from apd_edge.engine.evaluate import recipe_for_eval

    r = Recipe()
    r.data.dataset, r.data.root, r.data.options = "cityscapes", "/cs", {"img_suffix": "_image.jpg"}
    out = recipe_for_eval({"recipe": recipe_to_dict(r)}, data="folder:/mine")
    assert out.data.dataset == "folder" and out.data.root == "/mine" and out.data.options == {}
    assert "--data folder:/mine: dropped data.options (img_suffix) of 'cityscapes'" in capsys.readouterr().err
    out = recipe_for_eval({"recipe": recipe_to_dict(r)}, data="cityscapes:/other")
    assert out.data.options == {"img_suffix": "_image.jpg"}


def test_data_init_detects_the_issue_layout(tmp_path):
    root = driving(tmp_path / "d")
    (root / "classes.yaml").unlink()
    res = CliRunner().invoke(cli, ["data", "init", str(root)])
    assert res.exit_code == 0, res.output
    data = yaml.safe_load(res.output.split("#")[0])["data"]
    assert data["dataset"] == "folder" and data["options"] == SUFFIXES
    assert "pairs found: train 3, val 3 (of 6 images, 6 masks)" in res.output
    names = yaml.safe_load((root / "classes.yaml").read_text())["names"]
    assert names == [f"class_{i}" for i in range(7)]  # labels 0..6 seen; 255 is void
    ds = build_dataset(cfg("folder", root, **data["options"]), "val")
    assert len(ds) == 3 and ds.num_classes == 7


def test_data_init_default_and_side_by_side_layouts(tmp_path):
    from apd_edge.data.detect import detect_layout, png_channels

    a = tmp_path / "a"
    for split in ("train", "val"):
        png(a / "images" / split / "0001.jpg", image())
        png(a / "masks" / split / "0001.png", mask_from([0, 3]))
    found = detect_layout(a)
    assert found["options"] == {"img_dir": "images", "mask_dir": "masks"} and found["splits"] == ["train", "val"]
    assert found["max_label"] == 3 and png_channels(a / "masks" / "val" / "0001.png") == 1
    b = tmp_path / "b"
    for k in range(3):
        png(b / "data" / f"{k}_rgb.png", image(seed=k))  # colour PNG: an image
        png(b / "data" / f"{k}_gt.png", mask_from([k]))
    assert detect_layout(b)["options"] == {"img_dir": "data", "mask_dir": "data", "img_suffix": "_rgb.png",
                                           "mask_suffix": "_gt.png"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ApdError, match="found 0 images and 0 one-channel PNG masks"):
        detect_layout(tmp_path / "empty")
