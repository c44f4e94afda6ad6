"""``apd-edge recipe check``: validate a recipe and print it resolved; ``apd-edge recipes``: list the packaged ones."""

from __future__ import annotations

import click

from ..config import load_recipe, recipe_to_yaml, validate_names

set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a recipe value, e.g. --set train.lr=0.01 (repeatable).")


@click.group()
def recipe() -> None:
    """Work with recipes."""


@recipe.command("check")
@click.argument("file", metavar="RECIPE", type=click.Path(dir_okay=False))
@set_option
def check(file: str, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE (a YAML file or a packaged recipe's name) with overrides, including model and dataset
    names, and print the resolved recipe."""
    r = load_recipe(file, overrides)
    validate_names(r)
    from ..data.check import describe_splits

    lines = describe_splits(r.data)  # builds the splits when data.root is here: layout errors show now
    click.echo(recipe_to_yaml(r), nl=False)
    for line in lines:
        click.echo(f"# {line}", err=True)
    click.echo(f"# {file}: valid", err=True)


@click.command("recipes")
def recipes() -> None:
    """List the packaged recipes, one line each; pass a name wherever a recipe file goes."""
    from ..recipebook import list_recipes, recipes_dir

    from ..tables import text_table

    items = list_recipes()
    click.echo(text_table(None, items))
    click.echo(f"# {len(items)} recipes in {recipes_dir()}; copy one to edit it, or override values with --set",
               err=True)
