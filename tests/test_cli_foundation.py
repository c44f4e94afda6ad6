"""The CLI shell: --version, --help, `models`, and `recipe check` errors (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from apd_edge import __version__
from apd_edge.cli.main import cli
from apd_edge.models import list_models

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_version_and_help(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0 and "models" in res.output and "recipe" in res.output


def test_models_lists_every_model(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["models", "--size", "64x64"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in list_models():
        row = next(line for line in lines if line.split() and line.split()[0] == name)
        assert row.split()[1] in ("student", "teacher")
    bise = next(line for line in lines if line.startswith("bisenetv2")).split()
    assert bise[2] == "3.36" and bise[4:] == ["128", "8"]  # params (M), feat channels, feat stride
    assert "GMACs @64x64" in lines[0]


def test_models_role_and_classes(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["models", "--size", "64x64", "--role", "student", "--classes", "11"])
    assert res.exit_code == 0, res.output
    assert "espnet" in res.output and "pspnet" not in res.output and "11 classes" in res.output


def test_models_bad_size(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["models", "--size", "big"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: --size: expected HxW with both >= 32, e.g. 360x480, got 'big'"]


def _check(runner: CliRunner, tmp_path: Path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return runner.invoke(cli, ["recipe", "check", str(path)])


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_recipe_check_unknown_key(runner: CliRunner, tmp_path: Path) -> None:
    line = _one_error_line(_check(runner, tmp_path, "train:\n  lrr: 0.1\n"))
    assert "unknown recipe key 'train.lrr'" in line and "did you mean 'train.lr'" in line


def test_recipe_check_wrong_type(runner: CliRunner, tmp_path: Path) -> None:
    line = _one_error_line(_check(runner, tmp_path, "train:\n  iterations: many\n"))
    assert "train.iterations" in line and "expected an integer" in line and "'many'" in line


def test_recipe_check_misspelt_model(runner: CliRunner, tmp_path: Path) -> None:
    line = _one_error_line(_check(runner, tmp_path, "model:\n  name: bisenet_v2\n"))
    assert "model.name" in line and "'bisenet_v2'" in line and "did you mean 'bisenetv2'" in line


def test_recipe_check_misspelt_teacher_via_set(runner: CliRunner) -> None:
    recipe = str(RECIPES / "bisenet_camvid.yaml")
    res = runner.invoke(cli, ["recipe", "check", recipe, "--set", "teacher.name=pspnet50"])
    line = _one_error_line(res)
    assert "teacher.name" in line and "pspnet50" in line


def test_recipe_check_valid_shipped(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["recipe", "check", str(RECIPES / "quickstart.yaml")])
    assert res.exit_code == 0, res.output
    assert "name: bisenetv2" in res.output and "valid" in res.output
