"""``apd-edge import``: turn published weights into an apd-edge run folder (parse, call the importer, print)."""

from __future__ import annotations

import click


@click.command("import")
@click.argument("weights", metavar="WEIGHTS_FILE", type=click.Path(dir_okay=False))
@click.option("--format", "-f", "fmt", default=None, metavar="NAME",
              help="Importer name (default: detected from the keys; known: espnet_authors), or "
                   "package.module:function for your own (docs/checkpoint-format.md).")
@click.option("--name", default=None, help="Run folder name (default: the importer's, e.g. espnet_camvid_authors).")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder that receives the run folder.")
@click.option("--data-root", default=None, metavar="DIR",
              help="Dataset folder recorded as the recipe's data.root (default data/<dataset>).")
@click.option("--dataset", default=None, help="Dataset the weights were trained for, when the format does not say.")
@click.option("--force", is_flag=True, help="Overwrite an existing run folder's best.pt.")
def import_cmd(weights: str, fmt: str | None, name: str | None, out: str, data_root: str | None,
               dataset: str | None, force: bool) -> None:
    """Import outside weights (e.g. the ESPNet authors' CamVid model) as runs/NAME/best.pt + recipe.yaml.

    The result works with `apd-edge eval`, `export` and `bench` like a trained run.
    """
    import json

    from ..engine.importers import import_weights

    run_dir = import_weights(weights, fmt, out=out, name=name, data_root=data_root, dataset=dataset, force=force)
    s = json.loads((run_dir / "summary.json").read_text())
    extra = f" ({len(s['extra_classes'])} not scored: {', '.join(s['extra_classes'])})" if s["extra_classes"] else ""
    click.echo(f"imported {weights} ({s['imported']['format']}) -> {run_dir / 'best.pt'}")
    click.echo(f"model     {s['model']} ({s['params'] / 1e6:.3f} M params), {s['num_classes']} outputs{extra}")
    click.echo(f"dataset   {s['dataset']} at {json.dumps(_data_root(run_dir))} (change with --data-root)")
    click.echo(f"next      apd-edge eval {run_dir}    apd-edge export {run_dir} --int8")


def _data_root(run_dir) -> str | None:
    import yaml

    return (yaml.safe_load((run_dir / "recipe.yaml").read_text()).get("data") or {}).get("root")
