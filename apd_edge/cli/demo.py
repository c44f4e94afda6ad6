"""``apd-edge demo``: live or recorded segmentation overlay (window and/or saved video)."""

from __future__ import annotations

import click

from ..targets import BACKENDS, PRECISIONS


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--source", required=True, help="Camera index (0), video file, image folder, or rtsp/http URL.")
@click.option("--backend", default="ort", show_default=True, type=click.Choice(BACKENDS))
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Overlay opacity in [0, 1].")
@click.option("--show/--no-show", default=False, show_default=True, help="Open a window (q or Esc quits).")
@click.option("--save", type=click.Path(dir_okay=False), default=None,
              help="Write the overlay video (.mp4 mp4v, .avi MJPG, .mkv FFV1 lossless).")
@click.option("--fourcc", default=None, help="Override the codec chosen from the --save extension.")
@click.option("--max-frames", type=int, default=None, help="Stop after this many frames.")
@click.option("--legend/--no-legend", default=True, show_default=True)
@click.option("--hud/--no-hud", default=True, show_default=True, help="FPS / latency counter.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="ORT intra-op threads (default: the cores not already busy).")
@click.option("--reconnect", "reconnect_s", type=float, default=10.0, show_default=True,
              help="Seconds to keep reconnecting a dropped stream.")
@click.option("--loop", is_flag=True, help="Replay a finite network video (http://.../clip.mp4) instead of stopping.")
def demo(bundle, source, backend, precision, device, alpha, show, save, fourcc, max_frames, legend, hud, threads,
         reconnect_s, loop) -> None:
    """Segment frames from --source with BUNDLE and draw the class overlay."""
    from ..demo.run import run_demo
    from ..threads import setup_threads

    threads = setup_threads(threads, torch=False)

    stats = run_demo(bundle, source, backend=backend, precision=precision, device=device, alpha=alpha, show=show,
                     save=save, max_frames=max_frames, fourcc=fourcc, legend=legend, hud=hud, threads=threads,
                     reconnect_s=reconnect_s, loop=loop, echo=click.echo)
    if stats.frames == 0:
        click.echo("warning: no frames were processed", err=True)
