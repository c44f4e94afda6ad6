"""``apd-edge runs``: the training runs under an output folder with their best val mIoU."""

from __future__ import annotations

import math

import click


@click.command("runs")
@click.argument("output_dir", default="runs", type=click.Path(file_okay=False))
@click.option("--sort", "sort_by", type=click.Choice(["name", "miou", "time"]), default="time", show_default=True,
              help="Order: by name, by best mIoU (highest last), or by last change (newest last).")
def runs(output_dir: str, sort_by: str) -> None:
    """List the runs in OUTPUT_DIR (default: runs): model, method, steps, best and final val mIoU."""
    from ..engine.report import list_runs, runs_table

    rows = list_runs(output_dir)
    if not rows:
        click.echo(f"no runs in {output_dir}")
        return
    if sort_by == "miou":
        rows.sort(key=lambda r: -math.inf if r.get("best_miou") is None else float(r["best_miou"]))
    elif sort_by == "time":
        rows.sort(key=lambda r: r["modified"])
    click.echo(runs_table(rows))
