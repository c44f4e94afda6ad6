"""The ``apd-edge`` command: a thin Click layer over the library.

Each command lives in its own module and is loaded lazily, so ``apd-edge bench`` on an ONNX bundle
never imports torch. ``ApdError`` (bad user input) is printed as one line and exits with status 2; any other
failure (OS errors, bugs) is printed as one line naming its type and exits with status 1. ``--debug`` (or
``APD_EDGE_DEBUG=1``) lets the traceback through instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from .. import __version__
from ..errors import ApdError

# command name -> "module:attribute" (modules under apd_edge.cli)
COMMANDS: dict[str, str] = {
    "build": "apd_edge.cli.build:build",
    "data": "apd_edge.cli.data:data",
    "export": "apd_edge.cli.export:export",
    "models": "apd_edge.cli.models:models",
    "recipe": "apd_edge.cli.recipe:recipe",
    "recipes": "apd_edge.cli.recipe:recipes",
    "bench": "apd_edge.cli.bench:bench",
    "demo": "apd_edge.cli.demo:demo",
    "train": "apd_edge.cli.train:train",
    "distill": "apd_edge.cli.train:distill",
    "eval": "apd_edge.cli.train:eval_cmd",
    "quickstart": "apd_edge.cli.train:quickstart",
    "import": "apd_edge.cli.import_cmd:import_cmd",
    "runs": "apd_edge.cli.runs:runs",
    "qat": "apd_edge.cli.qat:qat",
    "study": "apd_edge.cli.study:study",
}


# packages only the `train` extra installs; a command that needs one says so in one line
TRAIN_ONLY = {"torch", "torchvision", "timm", "onnx", "onnxscript"}


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
        debug = bool(ctx.params.get("debug")) or os.environ.get("APD_EDGE_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except ApdError as exc:
            if debug:
                raise
            click.echo(f"error: {one_line(exc)}", err=True)
            ctx.exit(2)
        except ModuleNotFoundError as exc:  # a torch-free (deployment) install running a training-side command
            if (exc.name or "").split(".")[0] not in TRAIN_ONLY:
                if debug:
                    raise
                click.echo(f"error: {one_line(exc)} (run with --debug or APD_EDGE_DEBUG=1 for the traceback)", err=True)
                ctx.exit(1)
            cmd = ctx.invoked_subcommand or (ctx.protected_args[:1] or ["this command"])[0]
            click.echo(f"error: `apd-edge {cmd}` needs {exc.name}, which this install lacks: "
                       "pip install \"apd-edge[train]\" (deployment commands: build, bench, demo on bundles)", err=True)
            ctx.exit(2)
        except Exception as exc:  # OS errors and bugs: one line naming the cause; --debug shows the traceback
            if debug:
                raise
            click.echo(f"error: {one_line(exc)} (run with --debug or APD_EDGE_DEBUG=1 for the traceback)", err=True)
            ctx.exit(1)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error re-raised from a DataLoader worker carries the worker's
    whole traceback in its message: its last line is the original error."""
    text = str(exc).strip()
    worker = ""
    if "Original Traceback" in text:
        first, *rest = [ln for ln in text.splitlines() if ln.strip()]
        worker = " (in a data loader worker)"
        last = rest[-1].strip() if rest else first
        head, sep, msg = last.partition(": ")
        text = msg if sep and head.split(".")[-1] == "ApdError" else last
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        if exc.filename2:
            text += f" -> {exc.filename2}"
    text = " ".join(text.split()) or type(exc).__name__
    if not isinstance(exc, ApdError):
        text = f"{type(exc).__name__}: {text}"
    return text + worker


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="apd-edge")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also: APD_EDGE_DEBUG=1).")
def cli(debug: bool) -> None:
    """apd-edge: distill segmentation teachers into real-time students, export and benchmark them."""


def main() -> None:
    cli(prog_name="apd-edge")


if __name__ == "__main__":
    sys.exit(main())
