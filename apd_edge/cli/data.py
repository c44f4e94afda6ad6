"""``apd-edge data``: check a dataset, write the synthetic one, list formats."""

from __future__ import annotations

import click

from ..errors import ApdError


@click.group()
def data() -> None:
    """Inspect and generate datasets."""


@data.command("list")
def list_cmd() -> None:
    """List the dataset formats."""
    from ..data import list_datasets

    for name in list_datasets():
        click.echo(name)


@data.command("check")
@click.argument("spec")
@click.option("--split", "splits", multiple=True, help="Split to check (repeatable); default: the train and val splits.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--max-errors", default=50, show_default=True, type=click.IntRange(1),
              help="List at most this many bad files (all are counted).")
def check(spec: str, splits: tuple[str, ...], no_progress: bool, max_errors: int) -> None:
    """Read and validate every file of SPEC: a recipe file or DATASET:ROOT (e.g. camvid:data/camvid)."""
    from ..data.check import check_dataset

    report = check_dataset(spec, list(splits) or None, progress=not no_progress, max_errors=max_errors)
    click.echo(report.table())
    if report.bad_count:
        click.echo(f"{report.bad_count} bad file{'s' if report.bad_count > 1 else ''}:")
        for line in report.bad_lines():
            click.echo(line)
    report.raise_if_bad()


def _size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise ApdError(f"--size: expected HxW, e.g. 128x256, got {value!r}") from None
    if h < 64 or w < 64:
        raise ApdError(f"--size: {value} is too small (each side >= 64)")
    return h, w


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--num-train", default=400, show_default=True, type=click.IntRange(0))
@click.option("--num-val", default=100, show_default=True, type=click.IntRange(0))
@click.option("--size", default="128x256", show_default=True, help="Image size HxW (each side >= 64).")
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out: str, num_train: int, num_val: int, size: str, seed: int) -> None:
    """Write the synthetic street scenes to OUT as a `folder` dataset (images/<split>/, masks/<split>/, classes.yaml)."""
    from ..data.synthetic import write_synthetic

    path = write_synthetic(out, num_train, num_val, _size(size), seed)
    click.echo(f"wrote {num_train} train + {num_val} val images to {path} "
               f"(use: data.dataset=folder data.root={path})")
