"""Backends and precisions are defined once (apd_edge/targets.py); every other module derives its choices."""

from __future__ import annotations

import ast
from pathlib import Path

from apd_edge import targets

PKG = Path(__file__).resolve().parents[1] / "apd_edge"


def literal_definitions(pkg: Path = PKG) -> list[str]:
    """Assignments of a literal tuple/list/set of strings to a name ending in BACKENDS or PRECISIONS."""
    found = []
    for path in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                names = [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                         if isinstance(t, ast.Name)]
                value = node.value
                if (any(n.endswith(("BACKENDS", "PRECISIONS")) for n in names)
                        and isinstance(value, (ast.Tuple, ast.List, ast.Set))
                        and any(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts)):
                    found.append(f"{path.relative_to(pkg).as_posix()}:{node.lineno} {', '.join(names)}")
    return found


def test_one_definition_of_backends_and_precisions(tmp_path):
    found = literal_definitions()
    assert {f.split(":")[0] for f in found} == {"targets.py"}, found
    assert [f.split(" ")[1] for f in found] == ["BACKENDS", "ONNX_PRECISIONS", "PRECISIONS", "TORCH_PRECISIONS"]
    (tmp_path / "m.py").write_text('PRECISIONS = ("fp32", "fp16")\nBACKENDS = list(x)\n')
    assert literal_definitions(tmp_path) == ["m.py:1 PRECISIONS"]


def test_users_take_the_canonical_names():
    from apd_edge.bench import run as bench_run
    from apd_edge.cli.demo import demo
    from apd_edge.export import build, bundle
    from apd_edge.runtime import segmenter

    assert targets.PRECISIONS == ("fp32", "fp16", "int8", "fp32_trtfp16")
    assert bench_run.BACKENDS is segmenter.BACKENDS is targets.BACKENDS
    assert bench_run.PRECISIONS is targets.PRECISIONS
    assert bundle.PRECISIONS is build.ONNX_PRECISIONS is targets.ONNX_PRECISIONS == tuple(bundle.ONNX_FILES)
    choices = {p.name: tuple(p.type.choices) for p in demo.params if p.name in ("backend", "precision")}
    assert choices == {"backend": targets.BACKENDS, "precision": targets.PRECISIONS}
