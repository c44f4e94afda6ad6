"""Shipped recipes: all validate, students point at a shipped teacher recipe's run, names are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apd_edge.config import RecipeError, load_recipe, recipe_from_dict, validate_names
from apd_edge.models.registry import MODEL_ROLES, list_models

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))
EXPECTED = {"bisenet_cityscapes", "espnet_cityscapes", "mobilenetv2_cityscapes", "bisenet_camvid", "espnet_camvid",
            "mobilenetv2_camvid", "pspnet_r101_cityscapes", "pspnet_r50_camvid", "quickstart", "quickstart_teacher",
            "pspnet_r101_ade20k", "bisenet_ade20k", "espnet_ade20k", "mobilenetv2_ade20k",
            "pspnet_r101_pascal_context", "bisenet_pascal_context", "espnet_pascal_context",
            "mobilenetv2_pascal_context"}


def test_expected_recipes_are_shipped() -> None:
    assert EXPECTED <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_recipe_validates(path: Path) -> None:
    r = load_recipe(path)
    validate_names(r)
    assert r.name == path.stem
    assert "#" in path.read_text().splitlines()[0]  # every recipe opens with a comment saying what it is
    list_models()  # registry loaded
    role = MODEL_ROLES[r.model.name]
    if role == "teacher":
        assert r.distill.method == "none" and r.teacher.checkpoint is None
    else:
        # students distill with APD from the checkpoint of a shipped teacher recipe
        assert r.distill.method == "apd"
        teacher_recipe = Path(r.teacher.checkpoint).parent.name
        assert r.teacher.checkpoint == f"runs/{teacher_recipe}/best.pt"
        t = load_recipe(RECIPES / f"{teacher_recipe}.yaml")
        assert MODEL_ROLES[t.model.name] == "teacher" and r.teacher.name == t.model.name
        assert t.data.dataset == r.data.dataset


@pytest.mark.parametrize("stem", ["bisenet_cityscapes", "espnet_cityscapes", "mobilenetv2_cityscapes"])
def test_cityscapes_students_follow_published_crop(stem: str) -> None:
    r = load_recipe(RECIPES / f"{stem}.yaml")
    assert r.train.crop == [512, 1024] and r.data.dataset == "cityscapes"


def test_bisenet_follows_the_paper() -> None:
    r = load_recipe(RECIPES / "bisenet_cityscapes.yaml")
    assert (r.train.lr, r.train.batch_size, r.train.iterations, r.train.optimizer) == (0.05, 16, 150000, "sgd")
    assert r.model.aux_weights == [1.0, 1.0, 1.0, 1.0] and not r.model.pretrained


def test_quickstart_is_tiny_and_offline() -> None:
    t = load_recipe(RECIPES / "quickstart_teacher.yaml")
    s = load_recipe(RECIPES / "quickstart.yaml")
    for r in (t, s):
        assert r.data.dataset == "synthetic" and not r.model.pretrained
        assert r.train.crop[0] * r.train.crop[1] <= 160 * 160 and r.train.iterations <= 300
    assert s.teacher.checkpoint == "runs/quickstart_teacher/best.pt" and s.teacher.name == t.model.name


def test_synthetic_options_are_accepted_by_the_dataset() -> None:
    from apd_edge.data import registry

    assert "synthetic" in registry.list_datasets()
    r = load_recipe(RECIPES / "quickstart.yaml")
    ds = registry.build_dataset(r.data, "val")
    assert len(ds) == r.data.options["num_val"]


def test_camvid_recipes_default_root_and_override() -> None:
    r = load_recipe(RECIPES / "bisenet_camvid.yaml", ["data.root=../shared/data/camvid"])
    assert r.data.root == "../shared/data/camvid"
    assert load_recipe(RECIPES / "bisenet_camvid.yaml").data.root == "data/camvid"


@pytest.mark.parametrize("section,value,match", [
    ({"model": {"name": "bisenet"}}, None, r"model.name: unknown model 'bisenet' \(did you mean 'bisenetv2'\?\)"),
    ({"teacher": {"name": "pspnet_r05"}}, None, r"teacher.name: unknown model 'pspnet_r05'.*pspnet_r50"),
])
def test_validate_names_rejects_misspelt_models(section, value, match) -> None:
    r = recipe_from_dict(section)
    with pytest.raises(RecipeError, match=match):
        validate_names(r)


def test_validate_names_rejects_misspelt_dataset() -> None:
    r = recipe_from_dict({"data": {"dataset": "citscapes"}})
    with pytest.raises(RecipeError, match=r"data.dataset: unknown dataset 'citscapes' \(did you mean 'cityscapes'\?\)"):
        validate_names(r)


def test_recipes_are_plain_yaml_mappings() -> None:
    for p in SHIPPED:
        assert isinstance(yaml.safe_load(p.read_text()), dict)


@pytest.mark.parametrize("dataset,classes", [("ade20k", 150), ("pascal_context", 59)])
def test_ade20k_and_pascal_context_recipes_follow_published_settings(dataset: str, classes: int) -> None:
    from apd_edge.data import ade20k, pascal_context

    names = {"ade20k": ade20k.ADE20K_CLASSES, "pascal_context": pascal_context.CONTEXT59_CLASSES}[dataset]
    assert len(names) == classes
    stems = [f"pspnet_r101_{dataset}"] + [f"{s}_{dataset}" for s in ("bisenet", "espnet", "mobilenetv2")]
    for stem in stems:
        r = load_recipe(RECIPES / f"{stem}.yaml")
        assert r.data.dataset == dataset and r.train.crop == [512, 512] and r.data.num_classes is None
        assert r.data.augment.scale == [0.5, 2.0]
    t = load_recipe(RECIPES / f"pspnet_r101_{dataset}.yaml")
    assert (t.train.lr, t.train.batch_size, t.model.aux_weights) == (
        {"ade20k": 0.01, "pascal_context": 0.004}[dataset], 16, [0.4])
    for stem in stems[1:]:  # students: APD with its released weights, 100 epochs at batch 16
        r = load_recipe(RECIPES / f"{stem}.yaml")
        assert r.distill.method == "apd" and r.distill.kd_weight == 10.0 and r.distill.apd.pk_weight == 10.0
        epochs = r.train.iterations * r.train.batch_size / {"ade20k": 20210, "pascal_context": 4998}[dataset]
        assert 99 <= epochs <= 101
        for method in ("skd", "ifvd"):  # the paper's comparison runs from the same recipe
            assert load_recipe(RECIPES / f"{stem}.yaml", [f"distill.method={method}"]).distill.method == method


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_recipe_check_command_passes(path: Path) -> None:
    from click.testing import CliRunner

    from apd_edge.cli.main import cli

    res = CliRunner().invoke(cli, ["recipe", "check", str(path)])
    assert res.exit_code == 0, res.output
    assert f"{path}: valid" in res.output
