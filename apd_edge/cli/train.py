"""``apd-edge train | distill | eval | quickstart``: parse, call the engine, print."""

from __future__ import annotations

import click

from ..errors import ApdError
from .recipe import set_option

resume_option = click.option("--resume", is_flag=True,
                             help="Continue the run in runs/<name>/ from its last.pt (same step, optimizer, RNG).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
threads_option = click.option("--threads", type=click.IntRange(1), default=None,
                              help="CPU threads for torch and ONNX Runtime (default: the recipe's 'threads', "
                                   "else the cores not already busy).")


def rerun_options(f):
    """--exist-ok, --increment, --allow-change: deliberate re-runs and resumes with a changed recipe."""
    f = click.option("--allow-change", "allow_changes", multiple=True, metavar="KEY",
                     help="With --resume: accept a recipe value that differs from the run's, e.g. "
                          "train.iterations to extend it (repeatable; a section name allows all its keys).")(f)
    f = click.option("--increment", is_flag=True,
                     help="Use the first free run name of NAME, NAME2, NAME3, ... instead of refusing.")(f)
    f = click.option("--exist-ok", is_flag=True,
                     help="Start again in a run folder that holds a previous run (its files are replaced).")(f)
    return f


def _run(file: str, overrides: tuple[str, ...], resume: bool, distill: bool, quiet: bool,
         threads: int | None = None, exist_ok: bool = False, increment: bool = False,
         allow_changes: tuple[str, ...] = ()) -> None:
    from ..config import load_recipe
    from ..engine.trainer import train as train_fn
    from ..threads import setup_threads

    if allow_changes and not resume:
        raise ApdError("--allow-change only applies with --resume")
    recipe = load_recipe(file, overrides)
    setup_threads(threads, recipe.threads)
    run_dir = train_fn(recipe, resume=resume, distill=distill, progress=not quiet, exist_ok=exist_ok,
                       increment=increment, allow_changes=allow_changes)
    summary = run_dir / "summary.json"
    if summary.is_file():
        import json

        from ..engine.run import format_summary

        click.echo(format_summary(json.loads(summary.read_text())))


@click.command("train")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(dir_okay=False))
@set_option
@resume_option
@quiet_option
@threads_option
@rerun_options
def train(recipe_file: str, overrides: tuple[str, ...], resume: bool, quiet: bool, threads: int | None,
          **rerun) -> None:
    """Train a model alone (a teacher, or a student baseline): distill.method is forced to none.

    RECIPE is a YAML file or the name of a packaged recipe (`apd-edge recipes` lists them)."""
    _run(recipe_file, overrides, resume, distill=False, quiet=quiet, threads=threads, **rerun)


@click.command("distill")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(dir_okay=False))
@set_option
@resume_option
@quiet_option
@threads_option
@rerun_options
def distill(recipe_file: str, overrides: tuple[str, ...], resume: bool, quiet: bool, threads: int | None,
            **rerun) -> None:
    """Distill the recipe's frozen teacher into its student (distill.method: apd, kd, cwd or none).

    RECIPE is a YAML file or the name of a packaged recipe (`apd-edge recipes` lists them)."""
    _run(recipe_file, overrides, resume, distill=True, quiet=quiet, threads=threads, **rerun)


def _parse_scales(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        scales = [float(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise ApdError(f"--scales {value!r}: expected numbers separated by commas, e.g. 0.75,1,1.25") from None
    if not scales or any(s <= 0 for s in scales):
        raise ApdError(f"--scales {value!r}: expected positive numbers, e.g. 0.75,1,1.25")
    return scales


@click.command("eval")
@click.argument("source", metavar="CHECKPOINT_OR_RUN", type=click.Path())
@click.option("--data", metavar="DATASET[:ROOT]", help="Evaluate on another dataset/folder, e.g. camvid:data/camvid.")
@set_option
@click.option("--split", default=None, help="Split to evaluate (default: the recipe's data.val_split).")
@click.option("--flip/--no-flip", default=None, help="Average with the horizontally flipped image.")
@click.option("--scales", default=None, metavar="S1,S2,...", help="Multi-scale evaluation, e.g. 0.75,1,1.25.")
@click.option("--save-vis", type=click.Path(file_okay=False), default=None,
              help="Write image | ground truth | prediction PNGs to this folder.")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Score N images spread evenly over the split (the rule export parity and bench use).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@quiet_option
@threads_option
def eval_cmd(source: str, data: str | None, overrides: tuple[str, ...], split: str | None, flip: bool | None,
             scales: str | None, save_vis: str | None, max_images: int | None, device: str, quiet: bool,
             threads: int | None) -> None:
    """Evaluate a checkpoint (or a run folder: best.pt, else last.pt) and print per-class IoU."""
    from ..engine.evaluate import evaluate_checkpoint
    from ..threads import setup_threads

    setup_threads(threads)

    res = evaluate_checkpoint(source, data=data, overrides=overrides, split=split, flip=flip,
                              scales=_parse_scales(scales), save_vis=save_vis, max_images=max_images,
                              device=device, progress=not quiet)
    click.echo(f"{res['model_name']} (step {res['step']}) on {res['selection']}: {res['images']} scored "
               f"in {res['seconds']:.1f} s")
    click.echo(res["table"])
    click.echo(f"mIoU {100 * res['miou']:.2f}  acc {100 * res['acc']:.2f}  mAcc {100 * res['macc']:.2f}")
    if save_vis:
        click.echo(f"visualisations: {len(res['vis_files'])} PNGs in {save_vis}")


@click.command("quickstart")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the two runs.")
@click.option("--export-dir", default="export", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the student's bundle.")
@click.option("--fast", is_flag=True, help="Fewer iterations (a smoke test, not a result).")
@quiet_option
@threads_option
def quickstart(out: str, export_dir: str, fast: bool, quiet: bool, threads: int | None) -> None:
    """The whole pipeline on synthetic data: teacher, APD student, evaluation, export, benchmark."""
    from ..pipeline import format_pipeline, run_pipeline
    from ..threads import setup_threads

    setup_threads(threads)

    res = run_pipeline(out=out, export_dir=export_dir, fast=fast, progress=not quiet, echo=click.echo)
    click.echo(format_pipeline(res))
