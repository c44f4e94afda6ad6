"""``apd-edge qat``: quantization-aware fine-tuning of a trained run, then ``apd-edge export RUN --int8``."""

from __future__ import annotations

import click


@click.command("qat")
@click.argument("source", metavar="RUN_OR_CHECKPOINT", type=click.Path())
@click.option("--name", help="Name of the new run folder (default: <source run name>_qat).")
@click.option("--out", "output_dir", type=click.Path(file_okay=False),
              help="Folder the new run goes in (default: next to the source run).")
@click.option("--iterations", type=click.IntRange(1), help="Fine-tuning steps (default 300).")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              help="Learning rate (default 1e-5 with AdamW, cosine decay).")
@click.option("--batch-size", type=click.IntRange(1), help="Batch size (default 8).")
@click.option("--teacher/--no-teacher", default=None, help="Also distill from the source recipe's teacher.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any QAT option, e.g. --set kd_weight=2 --set temperature=2 --set crop=[384,480] (repeatable).")
@click.option("--data-root", type=click.Path(), help="Override the recipe's data.root.")
@click.option("--resume", is_flag=True, help="Continue an interrupted QAT run from its last.pt.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for PyTorch (default: PyTorch's choice).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def qat(source, name, output_dir, iterations, lr, batch_size, teacher, overrides, data_root, resume, threads,
        quiet) -> None:
    """Fine-tune SOURCE with fake INT8 quantization, distilling from its own FP32 weights.

    Writes a new run folder whose best.pt exports (`apd-edge export RUN --int8`) to the same Q/DQ graph.
    """
    import torch

    from ..engine.qat import format_qat_summary, parse_qat_overrides, read_summary, run_qat

    if threads:
        torch.set_num_threads(threads)
    base = {k: v for k, v in (("iterations", iterations), ("lr", lr), ("batch_size", batch_size),
                              ("teacher", teacher)) if v is not None}
    cfg = parse_qat_overrides(overrides, base)
    run_dir = run_qat(source, cfg, name=name, output_dir=output_dir, resume=resume, data_root=data_root,
                      progress=not quiet)
    click.echo(format_qat_summary(read_summary(run_dir)))
