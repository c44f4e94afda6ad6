"""The ``apd-edge`` command: a thin Click layer over the library.

Each command lives in its own module and is loaded lazily, so ``apd-edge bench`` on an ONNX bundle
never imports torch. ``ApdError`` (bad user input) is printed as one line and exits with status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import ApdError

# command name -> "module:attribute" (modules under apd_edge.cli)
COMMANDS: dict[str, str] = {
    "data": "apd_edge.cli.data:data",
    "export": "apd_edge.cli.export:export",
    "models": "apd_edge.cli.models:models",
    "recipe": "apd_edge.cli.recipe:recipe",
    "bench": "apd_edge.cli.bench:bench",
    "demo": "apd_edge.cli.demo:demo",
    "train": "apd_edge.cli.train:train",
    "distill": "apd_edge.cli.train:distill",
    "eval": "apd_edge.cli.train:eval_cmd",
    "quickstart": "apd_edge.cli.train:quickstart",
    "study": "apd_edge.cli.study:study",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and name not in COMMANDS and not name.startswith("-"):
            from ..errors import suggest

            ctx.fail(f"no such command '{name}'{suggest(name, COMMANDS)}")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApdError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="apd-edge")
def cli() -> None:
    """apd-edge: distill segmentation teachers into real-time students, export and benchmark them."""


def main() -> None:
    cli(prog_name="apd-edge")


if __name__ == "__main__":
    sys.exit(main())
