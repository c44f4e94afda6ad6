"""Each dataset format on tiny fixtures in its real layout, label mapping and bad-input messages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from apd_edge.config import DataConfig
from apd_edge.data import build_dataset, list_datasets
from apd_edge.errors import ApdError

from helpers.data import camvid, image, mask_from, png


def cfg(name: str, root, **kw) -> DataConfig:
    return DataConfig(dataset=name, root=str(root), **kw)


def test_registry_names():
    assert list_datasets() == ["ade20k", "camvid", "cityscapes", "folder", "pascal_context", "synthetic"]


def test_torch_free_import():
    code = ("import sys; import apd_edge.data, apd_edge.metrics, apd_edge.data.check; "
            "from apd_edge.config import DataConfig; from apd_edge.data import build_dataset; "
            "ds = build_dataset(DataConfig(options={'num_train': 2, 'size': [64, 64]}), 'train'); ds[0]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_camvid_folder_pairs_and_void(tmp_path):
    ds = build_dataset(cfg("camvid", camvid(tmp_path)), "train")
    assert len(ds) == 2 and ds.num_classes == 11 and ds.class_names[0] == "Sky"
    assert ds.palette[3] == [128, 64, 128] and ds.palette[10] == [0, 128, 192]
    img, mask = ds[1]
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, image(seed=1))  # decoded as RGB
    np.testing.assert_array_equal(mask, mask_from([0, 3, 10, 255]))
    assert ds.paths(0)[0].name == "img0.png"


def test_camvid_segnet_lists(tmp_path):
    camvid(tmp_path, n_train=3, lists=True)
    (tmp_path / "train.txt").write_text("\n".join((tmp_path / "train.txt").read_text().splitlines()[:2]) + "\n")
    ds = build_dataset(cfg("camvid", tmp_path), "train")
    assert len(ds) == 2  # the list wins over the folder's 3 files
    assert ds.paths(1)[1] == tmp_path / "trainannot" / "img1.png"


def test_cityscapes_label_ids_and_train_ids(tmp_path):
    img_dir, gt_dir = tmp_path / "leftImg8bit" / "train" / "aachen", tmp_path / "gtFine" / "train" / "aachen"
    png(img_dir / "aachen_000000_000019_leftImg8bit.png", image())
    png(gt_dir / "aachen_000000_000019_gtFine_labelIds.png", mask_from([7, 26, 0, 33, 23, 4, 255, 24]))
    png(img_dir / "aachen_000001_000019_leftImg8bit.png", image(seed=2))
    png(gt_dir / "aachen_000001_000019_gtFine_labelIds.png", mask_from([99]))  # ignored: trainIds exist
    png(gt_dir / "aachen_000001_000019_gtFine_labelTrainIds.png", mask_from([0, 18, 255]))
    ds = build_dataset(cfg("cityscapes", tmp_path), "train")
    assert len(ds) == 2 and ds.num_classes == 19 and ds.class_names[13] == "car"
    np.testing.assert_array_equal(ds[0][1], mask_from([0, 13, 255, 18, 10, 255, 255, 11]))
    np.testing.assert_array_equal(ds[1][1], mask_from([0, 18, 255]))
    png(gt_dir / "aachen_000000_000019_gtFine_labelIds.png", mask_from([7, 40]))
    with pytest.raises(ApdError, match=r"mask value 40 .*aachen_000000_000019_gtFine_labelIds\.png"):
        ds[0]


def test_ade20k_shift(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        png(base / "images" / split / f"ADE_{split}_00000001.jpg", image())
        png(base / "annotations" / split / f"ADE_{split}_00000001.png", mask_from([0, 1, 150, 77]))
    ds = build_dataset(cfg("ade20k", tmp_path), "val")
    assert len(ds) == 1 and ds.num_classes == 150 and len(ds.palette) == 150
    assert ds.class_names[0] == "wall" and ds.class_names[149] == "flag"
    np.testing.assert_array_equal(ds[0][1], mask_from([255, 0, 149, 76]))
    assert ds[0][0].shape == (24, 32, 3)


def test_pascal_context_59(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2010"
    for i, ident in enumerate(["2008_000002", "2008_000003"]):
        png(base / "JPEGImages" / f"{ident}.jpg", image(seed=i))
        png(base / "SegmentationClassContext" / f"{ident}.png", mask_from([0, 1, 59, 255]))
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000002\n2008_000003\n")
    ds = build_dataset(cfg("pascal_context", tmp_path), "train")
    assert len(ds) == 2 and ds.num_classes == 59 and ds.class_names[-1] == "wood"
    np.testing.assert_array_equal(ds[1][1], mask_from([255, 0, 58, 255]))
    with pytest.raises(ApdError, match=r"split list not found: .*val\.txt"):
        build_dataset(cfg("pascal_context", tmp_path), "val")


def _folder(root, names=("road", "car", "tree"), palette=None):
    data = {"names": list(names)}
    if palette:
        data["palette"] = palette
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(data))
    return root


def test_folder_index_split_dirs_and_ignore(tmp_path):
    root = _folder(tmp_path)
    png(root / "images" / "train" / "a.jpg", image())
    png(root / "masks" / "train" / "a.png", mask_from([0, 2, 200, 255]))
    ds = build_dataset(cfg("folder", root, options={"ignore_index": 200}), "train")
    assert ds.class_names == ["road", "car", "tree"] and len(ds.palette) == 3
    np.testing.assert_array_equal(ds[0][1], mask_from([0, 2, 255, 255]))


def test_folder_flat_and_lists(tmp_path):
    root = _folder(tmp_path)
    for i in range(5):
        png(root / "images" / f"{i}.png", image(seed=i))
        png(root / "masks" / f"{i}.png", mask_from([i % 3]))
    train = build_dataset(cfg("folder", root, options={"val_every": 5}), "train")
    val = build_dataset(cfg("folder", root, options={"val_every": 5}), "val")
    assert len(train) == 4 and [p.name for p, _ in val.samples] == ["4.png"]
    (root / "val.txt").write_text("0\n3.png\n")
    val = build_dataset(cfg("folder", root), "val")
    assert [p.name for p, _ in val.samples] == ["0.png", "3.png"]
    np.testing.assert_array_equal(val[1][1], mask_from([0]))


def test_folder_rgb_masks(tmp_path):
    pal = [[128, 64, 128], [0, 0, 142], [107, 142, 35]]
    root = _folder(tmp_path, palette=pal)
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :8], rgb[:, 8:16], rgb[:, 16:24], rgb[:, 24:] = pal[2], pal[0], pal[1], (1, 2, 3)
    png(root / "images" / "train" / "a.png", image())
    png(root / "masks" / "train" / "a.png", rgb)
    ds = build_dataset(cfg("folder", root, options={"mask_mode": "rgb", "void_color": [1, 2, 3]}), "train")
    np.testing.assert_array_equal(ds[0][1], mask_from([2, 0, 1, 255]))
    ds = build_dataset(cfg("folder", root, options={"mask_mode": "rgb"}), "train")
    with pytest.raises(ApdError, match=r"mask colour \(1, 2, 3\) is not in the palette.*a\.png"):
        ds[0]


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_folder_names_layout(tmp_path):
    with pytest.raises(ApdError, match=r"camvid: folder not found: .*nowhere.*expected layout: ROOT/<split>/"):
        build_dataset(cfg("camvid", tmp_path / "nowhere"), "train")
    with pytest.raises(ApdError, match=r"folder not found: .*leftImg8bit.*expected layout"):
        build_dataset(cfg("cityscapes", tmp_path), "train")
    camvid(tmp_path)
    with pytest.raises(ApdError, match=r"folder not found: .*test.*expected layout"):
        build_dataset(cfg("camvid", tmp_path), "test")


def test_bad_mask_value_names_file_and_value(tmp_path):
    camvid(tmp_path, values=(0, 12))
    ds = build_dataset(cfg("camvid", tmp_path), "val")
    with pytest.raises(ApdError, match=r"mask value 12 outside classes 0\.\.10 .*valannot/img0\.png"):
        ds[0]


def test_size_mismatch(tmp_path):
    camvid(tmp_path)
    png(tmp_path / "trainannot" / "img1.png", np.zeros((20, 32), np.uint8))
    ds = build_dataset(cfg("camvid", tmp_path), "train")
    with pytest.raises(ApdError, match=r"sizes differ \(H x W\): .*train/img1\.png is 24x32, "
                                       r".*trainannot/img1\.png is 20x32"):
        ds[1]


def test_unreadable_image_and_missing_mask(tmp_path):
    camvid(tmp_path)
    (tmp_path / "train" / "img0.png").write_bytes(b"not a png")
    ds = build_dataset(cfg("camvid", tmp_path), "train")
    with pytest.raises(ApdError, match=r"unreadable image: .*train/img0\.png"):
        ds[0]
    (tmp_path / "trainannot" / "img1.png").unlink()
    with pytest.raises(ApdError, match=r"no mask for .*img1\.png"):
        build_dataset(cfg("camvid", tmp_path), "train")


def test_empty_split(tmp_path):
    camvid(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "testannot").mkdir()
    with pytest.raises(ApdError, match=r"split 'test' is empty .*expected layout"):
        build_dataset(cfg("camvid", tmp_path), "test")


def test_unknown_option_key(tmp_path):
    with pytest.raises(ApdError, match=r"unknown data.options key 'classes_fil' .*did you mean 'classes_file'"):
        build_dataset(cfg("folder", tmp_path, options={"classes_fil": "x.yaml"}), "train")
    with pytest.raises(ApdError, match=r"unknown data.options key 'num_trains'.*did you mean 'num_train'"):
        build_dataset(DataConfig(options={"num_trains": 3}), "train")


def test_mismatched_classes(tmp_path):
    with pytest.raises(ApdError, match=r"mismatched classes: data.num_classes is 19 but dataset 'camvid' has 11"):
        build_dataset(cfg("camvid", camvid(tmp_path), num_classes=19), "train")
    assert build_dataset(cfg("camvid", tmp_path, num_classes=11), "train").num_classes == 11


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(ApdError, match=r"unknown dataset 'camvd' \(did you mean 'camvid'\?\)"):
        build_dataset(cfg("camvd", tmp_path), "train")
    with pytest.raises(ApdError, match=r"data.root is required for dataset 'ade20k'"):
        build_dataset(DataConfig(dataset="ade20k"), "train")
