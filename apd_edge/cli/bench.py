"""``apd-edge bench``: latency, throughput, memory and mIoU per artifact x backend x precision."""

from __future__ import annotations

import click

from ..targets import BACKENDS, PRECISIONS


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command()
@click.argument("artifacts", nargs=-1, type=click.Path())
@click.option("--backends", default="ort", show_default=True, help=f"Comma list of {', '.join(BACKENDS)}.")
@click.option("--precisions", default="fp32", show_default=True,
              help=f"Comma list of {', '.join(PRECISIONS)} (fp32_trtfp16: TensorRT 10's FP32 graph + FP16 flag).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size for the throughput column.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed calls before timing.")
@click.option("--iters", type=int, default=50, show_default=True, help="Timed calls per latency.")
@click.option("--data", default=None, metavar="DATASET:ROOT",
              help="Val data for mIoU (default: the dataset recorded in the bundle).")
@click.option("--split", default=None, help="Split scored for mIoU (default: the bundle's val split).")
@click.option("--max-images", type=click.IntRange(1), default=None,
              help="Score N images spread evenly over the split (the rule eval and export parity use).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads (ORT intra-op / torch); default: the cores not already busy.")
@click.option("--channels-last", is_flag=True, help="torch backend: NHWC memory format.")
@click.option("--cuda-graph", is_flag=True, help="torch backend on CUDA: capture and replay a CUDA graph.")
@click.option("--input-size", type=int, nargs=2, default=None, metavar="H W",
              help="Input size for checkpoints that record none.")
@click.option("--export-dir", default="export", show_default=True, type=click.Path(),
              help="Where to look for the newest bundle when no artifact is given.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for bench.json/csv/png (default: the bundle folder).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of model files.")
def bench(artifacts, backends, precisions, device, batch, warmup, iters, data, split, max_images, threads,
          channels_last, cuda_graph, input_size, export_dir, out, no_verify) -> None:
    """Benchmark ARTIFACTS (bundle folders or checkpoints; default: newest bundle in --export-dir)."""
    from ..bench.run import run_bench
    from ..threads import setup_threads

    threads = setup_threads(threads, torch=False)  # torch only when a torch row imports it

    rows = run_bench(list(artifacts) or None, backends=_csv(backends), precisions=_csv(precisions), device=device,
                     batch=batch, warmup=warmup, iters=iters, data=data, out=out, max_images=max_images,
                     threads=threads, channels_last=channels_last, cuda_graph=cuda_graph,
                     input_size=tuple(input_size) if input_size else None, export_dir=export_dir,
                     verify=not no_verify, echo=click.echo, split=split)
    n_ok = sum(r.ok for r in rows)
    click.echo(f"{n_ok} of {len(rows)} rows measured")
    if n_ok == 0:
        from ..errors import ApdError

        raise ApdError("no benchmark row was measured (each row's reason is in the table above)")
