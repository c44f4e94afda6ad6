"""``apd-edge study run | report``: paired, teacher-shared studies from a plan file."""

from __future__ import annotations

import click

set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a top-level plan key, e.g. --set seeds=[0,1] (repeatable).")


@click.group()
def study() -> None:
    """Train students x methods x seeds against one shared teacher, and report paired differences."""


@study.command("run")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@set_option
@click.option("--stage", type=click.Choice(["all", "teacher", "students"]), default="all", show_default=True,
              help="teacher: only the plan's teacher run; students: only the student runs (e.g. one process per seed).")
@click.option("--dry-run", is_flag=True, help="Print the equivalent single-run commands and stop.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def run(plan_file: str, overrides: tuple[str, ...], stage: str, dry_run: bool, quiet: bool) -> None:
    """Train the plan's teacher (if it trains one) and every run; continues a killed study where it stopped."""
    from ..engine.study import load_plan, plan_runs, run_study, user_command

    plan = load_plan(plan_file, overrides)
    if dry_run:
        for r in plan_runs(plan):
            click.echo(user_command(r))
        return
    record = run_study(plan, progress=not quiet, stage=stage)
    for label, s in record["streams"].items():
        click.echo(f"{label}: {len(s['runs'])} runs, {s['steps']} steps in {s['wall_s']:.0f} s "
                   f"(teacher {s['teacher_s']:.0f} s, {s['teacher_forwards']} forwards)")
    click.echo(f"study record: {plan.output_dir}/study.json and {plan.output_dir}/streams/")


@study.command("report")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False),
              help="Folder for NAME.md, NAME.json, NAME.png and NAME_plan.yaml.")
@click.option("--name", default=None, help="File stem (default: the plan's name).")
@click.option("--reference", default="apd", show_default=True, help="The method compared against the others.")
@click.option("--header", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A markdown file whose text goes under the title (where it ran, scale, status).")
@click.option("--speedup", "speedup_json", type=click.Path(dir_okay=False), default=None,
              help="JSON written by benchmarks/study_speedup.py, quoted in the report.")
def report(plan_file: str, overrides: tuple[str, ...], out: str, name: str | None, reference: str,
           header: str | None, speedup_json: str | None) -> None:
    """Paired differences per seed, their mean and 95 % t-interval, the verdict, and learning curves."""
    from pathlib import Path

    from ..engine.paired import write_report
    from ..engine.study import load_plan

    plan = load_plan(plan_file, overrides)
    text = Path(header).read_text() if header else None
    paths = write_report(plan, out, name=name, reference=reference, header=text, speedup_json=speedup_json)
    for p in paths:
        click.echo(p)
