"""Recipe schema: types, ranges, unknown keys with suggestions, overrides, round trip."""

from __future__ import annotations

import pytest
import yaml

from apd_edge.config import (
    Recipe,
    RecipeError,
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    save_recipe,
)


def _write(tmp_path, data) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_defaults_and_name_from_file(tmp_path):
    r = load_recipe(_write(tmp_path, {"train": {"lr": 0.05}}))
    assert isinstance(r, Recipe)
    assert r.name == "r"
    assert r.train.lr == 0.05
    assert r.distill.apd.tau == 10.0 and r.distill.apd.prototype_scope == "batch"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"lrr": 0.1}}, "unknown recipe key 'train.lrr' (did you mean 'train.lr'?)"),
        ({"trian": {}}, "unknown recipe key 'trian' (did you mean 'train'?)"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
        ({"train": {"iterations": 1.5}}, "train.iterations: expected an integer"),
        ({"train": {"iterations": 0}}, "train.iterations: 0 is out of range (must be >= 1)"),
        ({"train": {"amp": "fp8"}}, "train.amp: 'fp8' is not one of"),
        ({"train": {"crop": [100, 128]}}, "train.crop: [100, 128] must be multiples of 32"),
        ({"train": {"crop": [128]}}, "train.crop: expected two values"),
        ({"data": {"std": [1, 1, 0]}}, "data.std: values must be > 0"),
        ({"distill": {"apd": {"prototype_scope": "pixel"}}}, "distill.apd.prototype_scope: 'pixel' is not one of"),
        ({"distill": {"method": "apdd"}}, "(did you mean 'apd'?)"),
        ({"model": {"pretrained": "yes"}}, "model.pretrained: expected true or false"),
        ({"data": "camvid"}, "data: expected a mapping (section)"),
        ({"teacher": {"name": "pspnet_r18", "factory": "a:b"}}, "either teacher.name or teacher.factory"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(data)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_overrides_coerce_types(tmp_path):
    path = _write(tmp_path, {"train": {"lr": 0.1}})
    r = load_recipe(path, ["train.lr=1e-3", "train.iterations=7", "train.crop=[64,96]", "name=123",
                           "distill.apd.proj_out=64", "teacher.checkpoint=null", "data.options.size=[64,64]"])
    assert r.train.lr == pytest.approx(1e-3) and isinstance(r.train.lr, float)
    assert r.train.iterations == 7 and r.train.crop == [64, 96]
    assert r.name == "123"  # string fields keep the text as typed
    assert r.distill.apd.proj_out == 64 and r.teacher.checkpoint is None
    assert r.data.options == {"size": [64, 64]}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "--set: unknown recipe key 'train.lrr' (did you mean 'train.lr'?)"),
        ("train.lr", "expected key=value"),
        ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
        ("train.lr.x=1", "'train.lr' is not a section"),
    ],
)
def test_override_errors(tmp_path, override, message):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, {}), [override])
    assert message in str(exc.value)


def test_round_trip(tmp_path):
    r = recipe_from_dict({"model": {"name": "espnet", "kwargs": {"alpha2": 2}}, "train": {"crop": [64, 64]}})
    out = tmp_path / "resolved.yaml"
    save_recipe(r, out)
    assert load_recipe(out) == r
    assert recipe_from_dict(recipe_to_dict(r)) == r


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(lst)


def test_apply_overrides_creates_sections():
    data = apply_overrides({}, ["distill.cwd.weight=2"])
    assert data == {"distill": {"cwd": {"weight": 2}}}
    assert recipe_from_dict(data).distill.cwd.weight == 2.0


def test_scientific_notation_reads_as_float(tmp_path):
    p = tmp_path / "sci.yaml"
    p.write_text("train:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    r = load_recipe(p)
    assert r.train.lr == pytest.approx(1e-3) and r.train.weight_decay == pytest.approx(5e-4)
