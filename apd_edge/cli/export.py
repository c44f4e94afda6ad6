"""``apd-edge export``: a checkpoint or run folder -> a deployable bundle (ONNX, FP16, INT8, engines)."""

from __future__ import annotations

import click

from ..errors import ApdError


def _parse_size(value: str | None) -> list[int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        size = [int(p) for p in parts]
    except ValueError:
        raise ApdError(f"--size {value!r}: expected HxW, e.g. 384x480") from None
    if len(size) != 2:
        raise ApdError(f"--size {value!r}: expected HxW, e.g. 384x480")
    return size


@click.command("export")
@click.argument("source", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Bundle folder (default: export/<name>).")
@click.option("--name", help="Bundle name (default: the run's recipe name).")
@click.option("--size", help="Network input HxW, multiples of 32 (default: dataset image size rounded up to /32).")
@click.option("--dynamic", is_flag=True, help="Dynamic batch, height and width.")
@click.option("--argmax", is_flag=True, help="Add a 'labels' output (int64 argmax) next to the logits.")
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (FP32 I/O, sensitive ops in FP32).")
@click.option("--int8", is_flag=True, help="Also write model_int8.onnx (Q/DQ, calibrated on real training images).")
@click.option("--calib-images", default=128, show_default=True, type=click.IntRange(1), help="INT8 calibration images.")
@click.option("--calib-method", default="auto", show_default=True,
              type=click.Choice(["auto", "entropy", "minmax", "percentile", "mse"]),
              help="INT8 calibration; auto tries each and keeps the one with the lowest measured error.")
@click.option("--int8-target", default=0.5, show_default=True, type=click.FloatRange(0),
              help="Largest INT8 mIoU drop (points vs FP32 on the parity images) before layers stay float.")
@click.option("--plain-int8", is_flag=True, help="No mixed precision: quantize every layer, whatever the drop.")
@click.option("--int8-max-float", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="Most quantizable groups (fraction) that mixed precision may keep in float.")
@click.option("--no-sensitivity", is_flag=True, help="Skip the per-layer INT8 sensitivity analysis.")
@click.option("--int8-scheme", default="auto", show_default=True, type=click.Choice(["auto", "all", "weighted"]),
              help="Q/DQ on every quantizable op, or on the inputs of weighted layers only; auto measures both.")
@click.option("--int8-float", default="auto", show_default=True, type=click.Choice(["auto", "fp16", "fp32"]),
              help="Precision of the INT8 graph's non-INT8 layers on TensorRT; auto: FP16 unless it costs the "
                   "INT8 target.")
@click.option("--parity-images", default=128, show_default=True, type=click.IntRange(1),
              help="Val images for the ONNX-vs-PyTorch parity check and mIoU.")
@click.option("--trt", is_flag=True, help="Build TensorRT engines on this machine's GPU.")
@click.option("--data-root", type=click.Path(), help="Override the recipe's data.root (for calibration and parity).")
@click.option("--opset", type=click.IntRange(17), help="ONNX opset (default: recipe export.opset, 17).")
@click.option("--preprocess", type=click.Choice(["pad", "resize"]), help="Fit images by pad-and-crop or resize.")
@click.option("--exclude-node", "exclude", multiple=True, metavar="NAME",
              help="ONNX node to keep in float when quantizing (repeatable; the classifier always is).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for torch and ONNX Runtime (default: the cores not already busy).")
def export(source, out_dir, name, size, dynamic, argmax, fp16, int8, calib_images, calib_method, int8_target,
           plain_int8, int8_max_float, no_sensitivity, int8_scheme, int8_float, threads, parity_images, trt, data_root,
           opset, preprocess, exclude) -> None:
    """Export SOURCE (a checkpoint or run folder; default runs/latest) into a bundle.

    Given a bundle folder with --trt, builds its engines as `apd-edge build` does (no torch needed).
    """
    from pathlib import Path

    if source is not None and (Path(source) / "manifest.json").is_file():
        if not trt:
            raise ApdError(f"{source} is already a bundle; build its TensorRT engines with `apd-edge build {source}`")
        from ..export.build import build_bundle

        build_bundle(source, ["fp32"] + (["fp16"] if fp16 else []) + (["int8"] if int8 else []),
                     log=lambda s: click.echo(s, err=True))
        click.echo(str(source))
        return
    from ..export import export_bundle
    from ..threads import setup_threads

    threads = setup_threads(threads)

    precisions = ["fp32"] + (["fp16"] if fp16 else []) + (["int8"] if int8 else [])
    out = export_bundle(source, out_dir, name=name, input_size=_parse_size(size), precisions=precisions,
                        dynamic=dynamic, argmax=argmax, calib_images=calib_images, calib_method=calib_method,
                        trt=trt, data_root=data_root, parity_images=parity_images, opset=opset,
                        preprocess=preprocess, nodes_to_exclude=list(exclude) or None,
                        int8_target=None if plain_int8 else int8_target, int8_max_float=int8_max_float,
                        int8_sensitivity=not no_sensitivity, int8_scheme=int8_scheme, int8_float=int8_float,
                        threads=threads)
    click.echo(str(out))
