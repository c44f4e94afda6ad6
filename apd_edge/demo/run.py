"""``run_demo``: frames in, segmentation overlay out (window, video file, or both), Ctrl-C safe."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import ApdError
from .capture import FrameSource, open_source, redact_url
from ..runtime.manifest import int8_gate
from .overlay import hud_text, render
from .writer import VideoSink

WINDOW = "apd-edge demo"
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc


def gui_available() -> bool:
    """Whether this OpenCV build can open windows (opencv-python-headless cannot)."""
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("NONE", "")
    return hasattr(cv2, "imshow")


@dataclass
class DemoStats:
    frames: int = 0
    dropped: int = 0
    mean_latency_ms: float = 0.0
    fps: float = 0.0
    interrupted: bool = False
    saved: str | None = None
    source: str = ""


@contextmanager
def _graceful_sigint():
    """Within the block, a first Ctrl-C or SIGTERM sets the returned event (the loop finishes its frame and
    stops, and the video file is finalised); a second one raises KeyboardInterrupt. Outside the main thread,
    signals stay as they are."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def run_demo(bundle: str | Path, source: str | int, backend: str = "ort", precision: str = "fp32",
             device: str = "cpu", alpha: float = 0.5, show: bool = False, save: str | Path | None = None,
             max_frames: int | None = None, fourcc: str | None = None, legend: bool = True, hud: bool = True,
             threads: int | None = None, reconnect_s: float = 10.0, segmenter=None, loop: bool = False,
             frame_source: FrameSource | None = None, echo: Callable[[str], None] = print) -> DemoStats:
    """Segment every frame of ``source`` (newest-frame for cameras/streams) and show and/or save the overlay.

    Returns counts and timings. Ctrl-C stops the loop, closes the source and finishes the saved file.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ApdError(f"--alpha must be within [0, 1], got {alpha}")
    if max_frames is not None and max_frames < 1:
        raise ApdError(f"--max-frames must be >= 1, got {max_frames}")
    if show and not gui_available():
        raise ApdError("--show needs OpenCV with GUI support, but this OpenCV build has none "
                       "(opencv-python-headless); install opencv-python, or run headless with --save out.mp4")
    if save is not None:
        from .writer import fourcc_for

        fourcc_for(save, fourcc)  # reject a bad extension before opening camera and model
    if segmenter is None:
        from ..runtime import Segmenter

        segmenter = Segmenter.from_bundle(bundle, backend=backend, precision=precision, device=device,
                                          threads=threads)
    src = frame_source or open_source(source, reconnect_s=reconnect_s, loop=loop)
    stats = DemoStats(source=redact_url(str(src.name)))
    sink = VideoSink(save, fps=src.fps, fourcc=fourcc) if save is not None else None
    latencies: list[float] = []
    echo(f"demo: {stats.source} -> {segmenter!r}" + (f", saving {save}" if save else ""))
    gate = int8_gate(segmenter.manifest) if getattr(segmenter, "precision", None) == "int8" else None
    if gate:
        echo(f"demo: warning: {gate}")
    fps_ema = 0.0
    try:
        with _graceful_sigint() as stop:
            fps_ema = _loop(src, segmenter, sink, stats, latencies, max_frames, alpha, legend, hud, show, stop)
        if stop.is_set():
            stats.interrupted = True
            echo("demo: interrupted, finishing up")
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread
        stats.interrupted = True
        echo("demo: interrupted, finishing up")
    finally:
        src.close()
        if sink is not None:
            sink.close()
            stats.saved = str(save) if sink.frames else None
        if show:
            try:
                cv2.destroyWindow(WINDOW)
            except cv2.error:
                pass
    stats.dropped = src.dropped
    if sink is not None:
        stats.frames = sink.frames  # what the file holds, even if an interrupt fell between write and count
    if latencies:
        stats.mean_latency_ms = float(np.mean(latencies))
        stats.fps = fps_ema
    echo(f"demo: {stats.frames} frames, {stats.dropped} dropped, mean latency {stats.mean_latency_ms:.1f} ms"
         + (f", wrote {save}" if stats.saved else ""))
    return stats


def _loop(src: FrameSource, segmenter, sink, stats: DemoStats, latencies: list[float], max_frames: int | None,
          alpha: float, legend: bool, hud: bool, show: bool, stop: threading.Event) -> float:
    """Read, segment, draw, write/show until the source ends, ``max_frames``, a quit key or ``stop``.

    Returns the smoothed FPS."""
    fps_ema = 0.0
    t_prev = time.perf_counter()
    while (max_frames is None or stats.frames < max_frames) and not stop.is_set():
        frame = src.read()
        if frame is None:
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        labels = segmenter.predict(rgb)
        lat = (time.perf_counter() - t0) * 1000.0
        latencies.append(lat)
        now = time.perf_counter()
        inst = 1.0 / max(now - t_prev, 1e-6)
        t_prev = now
        fps_ema = inst if fps_ema == 0.0 else 0.9 * fps_ema + 0.1 * inst
        text = hud_text(fps_ema, lat, src.dropped if src.live else None) if hud else None
        if text and getattr(segmenter, "precision", None) == "int8" and int8_gate(segmenter.manifest):
            text += " | INT8 below target"
        out, _ = render(rgb, np.asarray(labels), segmenter.palette, alpha, segmenter.classes if legend else None,
                        hud=text, legend=legend)
        bgr = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
        if sink is not None:
            sink.write(bgr)
        stats.frames += 1
        if show:
            cv2.imshow(WINDOW, bgr)
            if (cv2.waitKey(1) & 0xFF) in QUIT_KEYS:
                break
    return fps_ema
