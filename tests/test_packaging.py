"""The package as shipped: recipes inside the wheel and addressable by name, the package list complete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from apd_edge.cli.main import cli
from apd_edge.config import load_recipe
from apd_edge.errors import ApdError
from apd_edge.recipebook import describe, list_recipes, packaged_recipe, packaged_recipes, resolve_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {p.stem for p in (ROOT / "recipes").glob("*.yaml")}


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_list_names_every_package_and_maps_the_recipes() -> None:
    st = _pyproject()["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "apd_edge").rglob("__init__.py")}
    assert set(st["packages"]) == found | {"apd_edge.recipes"}
    assert st["package-dir"] == {"apd_edge.recipes": "recipes"}
    assert st["package-data"]["apd_edge.recipes"] == ["*.yaml"]
    assert not (ROOT / "apd_edge" / "recipes").exists()  # one source: no second copy inside the package


def test_packaged_recipes_are_the_source_folder() -> None:
    assert set(packaged_recipes()) == SHIPPED
    assert packaged_recipe("bisenet_cityscapes") == ROOT / "recipes" / "bisenet_cityscapes.yaml"
    lines = dict(list_recipes())
    assert lines["quickstart"].startswith("Quickstart, step 2")
    assert lines["pspnet_r50_camvid"].startswith("Teacher: PSPNet")


def test_describe_falls_back_to_the_name(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("\nname: city_run\nmodel: {name: bisenetv2}\n")
    assert describe(plain) == "city_run"
    (tmp_path / "bare.yaml").write_text("model: {name: bisenetv2}\n")
    assert describe(tmp_path / "bare.yaml") == "bare"


def test_resolve_recipe_paths_win_then_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    packaged = ROOT / "recipes" / "bisenet_cityscapes.yaml"
    assert resolve_recipe("bisenet_cityscapes") == packaged
    assert resolve_recipe("bisenet_cityscapes.yaml") == packaged
    # a file in the working folder wins over the packaged recipe of the same name
    (tmp_path / "bisenet_cityscapes.yaml").write_text("name: mine\n")
    assert resolve_recipe("bisenet_cityscapes.yaml") == Path("bisenet_cityscapes.yaml")
    assert load_recipe("bisenet_cityscapes.yaml").name == "mine"
    assert load_recipe("bisenet_cityscapes").name == "bisenet_cityscapes"  # no file called exactly that here
    # a clone's path form keeps working
    assert resolve_recipe(packaged) == packaged
    with pytest.raises(ApdError, match=r"unknown recipe 'bisenet_cityscape' \(did you mean 'bisenet_cityscapes'\?\)"):
        resolve_recipe("bisenet_cityscape")
    with pytest.raises(ApdError, match=r"recipe file not found: recipes/bisenet_cityscapes.yaml; to use the packaged "
                                       r"recipe of that name, pass `bisenet_cityscapes`"):
        resolve_recipe("recipes/bisenet_cityscapes.yaml")
    with pytest.raises(ApdError, match=r"recipe file not found: espnet_cityscape.yaml, and no packaged recipe is "
                                       r"named 'espnet_cityscape' \(did you mean 'espnet_cityscapes'\?\)"):
        resolve_recipe("espnet_cityscape.yaml")


def test_recipe_paths_inside_stay_relative_to_the_working_folder(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = load_recipe("bisenet_camvid")
    assert r.teacher.checkpoint == "runs/pspnet_r50_camvid/best.pt" and r.data.root == "data/camvid"


def test_cli_takes_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["recipes"])
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.stdout.splitlines() if ln]
    assert [ln.split()[0] for ln in rows] == sorted(SHIPPED)
    res = runner.invoke(cli, ["recipe", "check", "quickstart", "--set", "train.lr=0.02"])
    assert res.exit_code == 0, res.output
    assert "lr: 0.02" in res.stdout and "# quickstart: valid" in res.stderr
    res = runner.invoke(cli, ["distill", "quickstrat"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: unknown recipe 'quickstrat' (did you mean 'quickstart'?)")
    assert len(res.stderr.strip().splitlines()) == 1
    from apd_edge.data.check import parse_spec  # `apd-edge data check NAME` checks the recipe's data section

    assert parse_spec("bisenet_camvid").root == "data/camvid" and parse_spec("camvid:x").root == "x"


def test_quickstart_reads_the_packaged_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from apd_edge.engine.quickstart import _recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("name: not_this_one\n")  # the working folder does not matter
    assert _recipe("quickstart", []).name == "quickstart"


def test_wheel_ships_the_recipes(tmp_path: Path) -> None:
    """Build the wheel from a copy of the source, install it with --no-deps into a target folder and run the
    CLI from an empty folder against that install alone."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("apd_edge", "recipes"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), str(src)],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=180)
    (wheel,) = (tmp_path / "whl").glob("apd_edge-*.whl")
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=180)
    assert sorted(p.stem for p in (site / "apd_edge" / "recipes").glob("*.yaml")) == sorted(SHIPPED)

    empty = tmp_path / "empty"
    empty.mkdir()
    env["PYTHONPATH"] = str(site)

    def apd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "apd_edge.cli.main", *args], env=env, cwd=empty,
                              capture_output=True, text=True, timeout=120)

    res = apd("recipes")
    assert res.returncode == 0, res.stderr
    names = [ln.split()[0] for ln in res.stdout.splitlines() if ln.strip()]
    assert names == sorted(SHIPPED)
    assert f"in {site / 'apd_edge' / 'recipes'}" in res.stderr  # the installed copy, not this checkout's
    res = apd("recipe", "check", "bisenet_cityscapes")
    assert res.returncode == 0, res.stderr
    assert "bisenetv2" in res.stdout and "# bisenet_cityscapes: valid" in res.stderr
    res = apd("recipe", "check", "bisenet_cityscape")
    assert res.returncode == 2 and "did you mean 'bisenet_cityscapes'" in res.stderr
    # the quick start takes its two recipes from the install, whatever the working folder holds
    res = subprocess.run([sys.executable, "-c", "from apd_edge.engine.quickstart import _recipe\n"
                          "for n in ('quickstart_teacher', 'quickstart'): print(_recipe(n, []).name)\n"
                          "from apd_edge.recipebook import packaged_recipe; print(packaged_recipe('quickstart'))"],
                         env=env, cwd=empty, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["quickstart_teacher", "quickstart",
                                  str(site / "apd_edge" / "recipes" / "quickstart.yaml")]
    assert list(empty.iterdir()) == []
