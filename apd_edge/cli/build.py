"""``apd-edge build``: TensorRT engines from an exported bundle, on the target GPU (no torch, no dataset)."""

from __future__ import annotations

import sys

import click

from ..targets import ONNX_PRECISIONS


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("build")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--precisions", default=None, metavar="LIST",
              help=f"Comma list of {', '.join(ONNX_PRECISIONS)} (default: every ONNX precision in the bundle).")
@click.option("--workspace-gb", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="TensorRT builder workspace limit.")
@click.option("--max-batch", type=click.IntRange(1), default=1, show_default=True,
              help="Largest batch of the optimization profile (dynamic bundles only).")
@click.option("--dry-run", is_flag=True,
              help="Check the bundle and print the engine plan; build nothing (works without TensorRT or a GPU).")
@click.option("--trt-version", default=None, metavar="X.Y",
              help="With --dry-run: plan for this TensorRT version (default: the installed one, else 10 and 11).")
def build(bundle, precisions, workspace_gb, max_batch, dry_run, trt_version) -> None:
    """Build TensorRT engines for BUNDLE from its ONNX files and record them (with parity) in its manifest.

    Engines are specific to the GPU model and TensorRT version: run this on the target (Jetson, edge PC).
    """
    from ..export.build import build_bundle

    def log(s: str) -> None:
        click.echo(s, err=not dry_run)

    build_bundle(bundle, _csv(precisions), workspace_gb=workspace_gb, max_batch=max_batch, dry_run=dry_run,
                 trt_version=trt_version, log=log)
    if not dry_run:
        click.echo(str(bundle))
    sys.stdout.flush()
