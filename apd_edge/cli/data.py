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
@click.option("--split", "splits", multiple=True,
              help="Split to check (repeatable); default: the train and val splits.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when there are warnings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a data value, e.g. --set data.options.img_suffix=_image.jpg (repeatable).")
@click.option("--max-errors", default=50, show_default=True, type=click.IntRange(1),
              help="List at most this many bad files (all are counted).")
def check(spec: str, splits: tuple[str, ...], no_progress: bool, strict: bool, overrides: tuple[str, ...],
          max_errors: int) -> None:
    """Read and validate every file of SPEC: a recipe (file or packaged name) or DATASET:ROOT (e.g. camvid:data/camvid).

    Prints one class-pixel table per split and warns about splits that are mostly void (> 50 %),
    entirely void images and classes without pixels; lists every bad file (up to --max-errors).
    """
    from ..data.check import check_dataset

    report = check_dataset(spec, list(splits) or None, progress=not no_progress, overrides=overrides,
                           max_errors=max_errors)
    click.echo(report.table())
    if report.bad_count:
        click.echo(f"{report.bad_count} bad file{'s' if report.bad_count > 1 else ''}:")
        for line in report.bad_lines():
            click.echo(line)
    report.raise_if_bad()
    if strict and report.warnings():
        raise SystemExit(1)


@data.command("init")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--no-write", is_flag=True, help="Do not write a classes.yaml template when there is none.")
def init(root: str, no_write: bool) -> None:
    """Find how ROOT's images and masks are laid out; print the recipe's data section for the folder format.

    Masks are the one-channel PNGs; folders and file-name endings (e.g. _image.jpg / _label.png) are
    read from the files, and the result is checked by pairing every image of the train and val splits.
    """
    from ..data.detect import init_folder

    _, lines = init_folder(root, write_classes=not no_write)
    for line in lines:
        click.echo(line)


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
    """Write the synthetic street scenes to OUT as a `folder` dataset
    (images/<split>/, masks/<split>/, classes.yaml)."""
    from ..data.synthetic import write_synthetic

    path = write_synthetic(out, num_train, num_val, _size(size), seed)
    click.echo(f"wrote {num_train} train + {num_val} val images to {path} "
               f"(use: data.dataset=folder data.root={path})")
