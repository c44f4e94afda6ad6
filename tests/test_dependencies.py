"""Declared dependencies = what apd_edge imports: the core (torch-free) modules import only the core
dependencies, every extra's package is imported somewhere, and an undeclared import is guarded."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "apd_edge"

# import name -> the distributions that provide it
DISTS = {"numpy": {"numpy"}, "cv2": {"opencv-python-headless"}, "click": {"click"}, "yaml": {"pyyaml"},
         "onnxruntime": {"onnxruntime"}, "tqdm": {"tqdm"}, "torch": {"torch"}, "timm": {"timm"},
         "onnx": {"onnx"}, "matplotlib": {"matplotlib"}, "tensorrt": {"tensorrt-cu12", "tensorrt-cu13"},
         "cuda": {"cuda-python"}}
# the training side: modules that may import the `train` extra at module level; everything else is the
# torch-free core that a plain `pip install apd-edge` runs (runtime, bench, demo, data, cli, recipes)
TRAIN_SIDE = ("models/", "distill/", "engine/", "export/", "data/loader.py", "guard.py")


def _requirements() -> tuple[set[str], dict[str, set[str]]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        out = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in reqs}
        return out - {"apd-edge"}

    return names(project["dependencies"]), {k: names(v) for k, v in project["optional-dependencies"].items()}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a ``try`` whose handlers catch ImportError (or ModuleNotFoundError)."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                if any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types):
                    return True
    return False


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``if TYPE_CHECKING:`` (for annotations only: never executed)."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.If) and child in node.body:
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                return True
    return False


def scan_imports(pkg: Path = PKG) -> list[tuple[str, str, bool, bool]]:
    """(module path, top-level third-party name, at module level, guarded) for every import in ``pkg``."""
    std = set(sys.stdlib_module_names)
    found = []
    for path in sorted(pkg.rglob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {ch: node for node in ast.walk(tree) for ch in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if _type_checking_only(node, parents):
                continue
            up, module_level = node, True
            while up in parents:
                up = parents[up]
                if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    module_level = False
            for name in names:
                top = name.split(".")[0]
                if top not in std and top != pkg.name:
                    found.append((path.relative_to(pkg).as_posix(), top, module_level, _guarded(node, parents)))
    return found


def _train_side(rel: str) -> bool:
    return rel.startswith(TRAIN_SIDE)


def test_scanner_sees_guards_and_levels(tmp_path: Path) -> None:
    pkg = tmp_path / "apd_edge"
    pkg.mkdir()
    (pkg / "m.py").write_text("import os\nimport numpy as np\nfrom . import x\ndef f():\n    import torch\n"
                              "    try:\n        import rich.table\n    except ImportError:\n        pass\n"
                              "if TYPE_CHECKING:\n    import onnx\n")
    assert scan_imports(pkg) == [("m.py", "numpy", True, False), ("m.py", "torch", False, False),
                                 ("m.py", "rich", False, True)]


def test_unguarded_imports_are_declared() -> None:
    core, extras = _requirements()
    declared = core.union(*extras.values())
    bad = sorted({(rel, top) for rel, top, _, guarded in scan_imports()
                  if not guarded and not (DISTS.get(top, set()) & declared)})
    assert not bad, f"imported but not declared in pyproject.toml (or not in DISTS here): {bad}"


def test_core_modules_import_only_core_dependencies() -> None:
    core, _ = _requirements()
    bad = sorted({(rel, top) for rel, top, module_level, guarded in scan_imports()
                  if module_level and not guarded and not _train_side(rel) and not DISTS.get(top, set()) & core})
    assert not bad, f"core (torch-free) modules importing a non-core package at import time: {bad}"


def test_train_side_imports_at_module_level_are_core_or_train() -> None:
    core, extras = _requirements()
    allowed = core | extras["train"]
    bad = sorted({(rel, top) for rel, top, module_level, guarded in scan_imports()
                  if module_level and not guarded and not DISTS.get(top, set()) & allowed})
    assert not bad, bad


def test_every_declared_dependency_is_imported() -> None:
    """No declared package that nothing imports (torchvision and onnxscript were); the dev extra holds tools."""
    core, extras = _requirements()
    imported = {top for _, top, _, _ in scan_imports()}
    provided = set().union(*(DISTS[t] for t in imported if t in DISTS))
    core_imported = {top for rel, top, _, _ in scan_imports() if not _train_side(rel)}
    core_provided = set().union(*(DISTS[t] for t in core_imported if t in DISTS))
    assert core <= core_provided, f"core dependencies no core module imports: {sorted(core - core_provided)}"
    for name, reqs in extras.items():
        if name != "dev":
            assert reqs <= provided, f"extra [{name}] declares packages nothing imports: {sorted(reqs - provided)}"
    assert {"pytest", "ruff"} <= extras["dev"]


def test_onnx_export_needs_no_onnxscript(tmp_path: Path) -> None:
    """The export uses torch's TorchScript exporter (dynamo=False), which runs without onnxscript."""
    pytest.importorskip("torch")
    code = ("import sys\nsys.modules['onnxscript'] = None  # importing it now raises ImportError\n"
            "from apd_edge.models import build_model\nfrom apd_edge.export.onnx import export_onnx\n"
            f"export_onnx(build_model('espnet', num_classes=3).eval(), {str(tmp_path / 'm.onnx')!r}, (32, 32))\n"
            "import onnx\nprint(len(onnx.load(" + repr(str(tmp_path / "m.onnx")) + ").graph.node) > 10)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "True"


# -- layering: lower rooms never import higher ones (docs: the layout's "flow, one way through the house") ------
# package (or top-level module) -> apd_edge packages it must not import, at any depth (a lazy import counts:
# it is still a dependency)
ABOVE_RUNTIME = ("models", "distill", "engine", "data", "export", "bench", "demo", "cli", "pipeline", "config")
FORBIDDEN = {
    "runtime": ABOVE_RUNTIME,
    "models": ("distill", "engine", "export", "bench", "demo", "cli", "pipeline"),
    "distill": ("engine", "export", "bench", "demo", "cli", "pipeline"),
    "data": ("engine", "distill", "models", "export", "bench", "demo", "cli", "pipeline"),
    "checkpoint": ("engine", "distill", "export", "runtime", "bench", "cli", "pipeline"),
    "guard": ("engine", "distill", "export", "runtime", "bench", "cli", "pipeline"),
    "targets": ("engine", "distill", "models", "data", "export", "runtime", "bench", "cli", "pipeline"),
}


def package_imports(pkg: Path = PKG) -> list[tuple[str, str, int]]:
    """(module path, imported ``apd_edge...`` module, line) for every import of the package by itself,
    relative imports resolved; ``if TYPE_CHECKING:`` imports left out (they never run)."""
    found = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        here = [pkg.name, *rel.parent.parts]  # the package a relative import starts from
        tree = ast.parse(path.read_text())
        parents = {ch: node for node in ast.walk(tree) for ch in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                    # ``from . import x`` / ``from .. import x``: x may be a module of that package
                    names = [stem] if node.module else [f"{stem}.{a.name}" for a in node.names]
                else:
                    names = [node.module or ""]
            else:
                continue
            if _type_checking_only(node, parents):
                continue
            found += [(rel.as_posix(), n, node.lineno) for n in names if n.split(".")[0] == pkg.name]
    return found


def _room(rel: str) -> str:
    """The package (``runtime``) or top-level module (``checkpoint``) a module path belongs to."""
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".py") else first


def layering_violations(pkg: Path = PKG) -> list[str]:
    bad = []
    for rel, target, line in package_imports(pkg):
        parts = target.split(".")
        room = parts[1] if len(parts) > 1 else ""
        if room in FORBIDDEN.get(_room(rel), ()):
            bad.append(f"{rel}:{line} imports {target}")
    for rel, top, module_level, _ in scan_imports(pkg):
        if _room(rel) == "runtime" and top == "torch" and module_level:
            bad.append(f"{rel} imports torch at module level (the runtime is torch-free; import it where used)")
    return sorted(bad)


def test_layering_scanner_resolves_relative_imports(tmp_path: Path) -> None:
    """The scanner sees every form of import: relative at each depth, absolute, lazy, and skips TYPE_CHECKING."""
    pkg = tmp_path / "apd_edge"
    (pkg / "runtime" / "backends").mkdir(parents=True)
    (pkg / "distill").mkdir()
    (pkg / "runtime" / "backends" / "t.py").write_text(
        "from ...checkpoint import load\nfrom ... import models\ndef f():\n    import torch\n"
        "    from ...engine.trainer import Trainer\n")
    (pkg / "runtime" / "m.py").write_text("from typing import TYPE_CHECKING\nimport torch\n"
                                          "if TYPE_CHECKING:\n    from ..engine import x\n")
    (pkg / "distill" / "k.py").write_text("import apd_edge.engine.checkpoint\nfrom .base import D\n")
    assert sorted((r, t) for r, t, _ in package_imports(pkg)) == [
        ("distill/k.py", "apd_edge.distill.base"), ("distill/k.py", "apd_edge.engine.checkpoint"),
        ("runtime/backends/t.py", "apd_edge.checkpoint"), ("runtime/backends/t.py", "apd_edge.engine.trainer"),
        ("runtime/backends/t.py", "apd_edge.models")]
    assert layering_violations(pkg) == [
        "distill/k.py:1 imports apd_edge.engine.checkpoint", "runtime/backends/t.py:2 imports apd_edge.models",
        "runtime/backends/t.py:5 imports apd_edge.engine.trainer",
        "runtime/m.py imports torch at module level (the runtime is torch-free; import it where used)"]


def test_lower_rooms_never_import_higher_ones() -> None:
    """No engine from distill, runtime, models, data or the checkpoint module; the runtime imports nothing from
    models, distill, engine (or any room above it) and no torch at module level."""
    bad = layering_violations()
    assert not bad, "layering broken:\n" + "\n".join(bad)
