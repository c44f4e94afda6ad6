"""The recipes that ship with apd-edge: look one up by name, list them with a one-line description.

The top-level ``recipes/`` folder of the source tree is their one source. A wheel carries the same files as
``apd_edge/recipes/`` (pyproject's package-dir mapping); a source checkout (an editable install, or the
package on PYTHONPATH) reads ``recipes/`` next to the package. Paths inside a recipe (``teacher.checkpoint``,
``data.root``) stay relative to the working folder, wherever the recipe file itself lives.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ApdError, suggest, unknown_name

SUFFIXES = (".yaml", ".yml")


def recipes_dir() -> Path:
    """The folder holding the packaged recipes (installed package first, then the source tree)."""
    pkg = Path(__file__).resolve().parent
    candidates = (pkg / "recipes", pkg.parent / "recipes")
    for cand in candidates:
        if cand.is_dir() and any(p.suffix in SUFFIXES for p in cand.iterdir()):
            return cand
    raise ApdError(f"no packaged recipes found in {' or '.join(map(str, candidates))}; reinstall apd-edge")


def packaged_recipes() -> dict[str, Path]:
    """Recipe name (file stem) -> file, sorted by name."""
    return {p.stem: p for p in sorted(recipes_dir().iterdir()) if p.suffix in SUFFIXES and p.is_file()}


def packaged_recipe(name: str) -> Path:
    """The packaged recipe called ``name``; an unknown name raises ApdError with a suggestion."""
    known = packaged_recipes()
    if name not in known:
        raise unknown_name("recipe", name, known)
    return known[name]


def resolve_recipe(arg: str | Path) -> Path:
    """A recipe argument as a file. An existing file wins (``recipes/bisenet_cityscapes.yaml`` from a clone);
    otherwise a bare name (``bisenet_cityscapes``, with or without ``.yaml``) is a packaged recipe."""
    from .config import RecipeError  # lazy: config calls this module

    path = Path(arg)
    if path.is_file():
        return path
    has_suffix = path.suffix.lower() in SUFFIXES
    name = path.stem if has_suffix else path.name
    if len(path.parts) > 1:  # a path with a folder part is always a file argument
        known = packaged_recipes()
        hint = f"; to use the packaged recipe of that name, pass `{name}`" if name in known else ""
        raise RecipeError(f"recipe file not found: {arg}{hint}")
    known = packaged_recipes()
    if name in known:
        return known[name]
    if has_suffix:
        raise RecipeError(f"recipe file not found: {arg}, and no packaged recipe is named '{name}'"
                       f"{suggest(name, known)} (`apd-edge recipes` lists them)")
    raise RecipeError(str(unknown_name("recipe", name, known)))


def describe(path: Path) -> str:
    """A recipe's one-line description: its first comment line, else its ``name``, else the file stem."""
    text = path.read_text()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            return line.lstrip("#").strip()
        break
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return str(data.get("name") or path.stem) if isinstance(data, dict) else path.stem


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of every packaged recipe."""
    return [(name, describe(path)) for name, path in packaged_recipes().items()]
