"""``apd-edge demo`` headless: overlay video frames equal the model's predictions blended by the palette."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from apd_edge.demo.capture import FrameSource
from apd_edge.errors import ApdError

ALPHA = 0.5


@pytest.fixture(scope="module")
def bundle(folder_bundle):
    return folder_bundle[0]  # conftest.py: exported once per session


@pytest.fixture(scope="module")
def seg(bundle):
    from apd_edge.runtime import Segmenter

    return Segmenter.from_bundle(bundle, backend="ort", precision="fp32")


def _write_input_video(path, n=10, size=(64, 64)) -> None:
    """A moving pattern, written with MJPG (lossy, but every reader decodes it identically)."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        frame = np.stack([(xx * 4 + i * 20) % 256, (yy * 4) % 256, ((xx + yy) * 2 + i * 7) % 256], -1)
        frame[20 + i:40 + i, 10:30] = (30, 200, 30)
        writer.write(frame.astype(np.uint8))
    writer.release()


def _decode(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def _expected(seg, frames_bgr) -> list[np.ndarray]:
    """The overlay recomputed here from Segmenter.predict, independently of apd_edge.demo.overlay."""
    out = []
    pal = np.asarray(seg.palette, np.float64)
    for f in frames_bgr:
        rgb = cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
        labels = seg.predict(rgb)
        mix = np.rint(rgb * (1 - ALPHA) + pal[labels] * ALPHA).astype(np.uint8)
        out.append(cv2.cvtColor(mix, cv2.COLOR_RGB2BGR))
    return out


def test_demo_video_overlay_matches_predictions(bundle, seg, tmp_path):
    from click.testing import CliRunner

    from apd_edge.cli.main import cli

    src, dst = tmp_path / "in.avi", tmp_path / "out.mkv"  # .mkv: FFV1, lossless
    _write_input_video(src)
    res = CliRunner().invoke(cli, ["demo", str(bundle), "--source", str(src), "--save", str(dst), "--no-show",
                                   "--alpha", str(ALPHA), "--no-legend", "--no-hud"])
    assert res.exit_code == 0, res.output
    inputs, outputs = _decode(src), _decode(dst)
    assert len(inputs) == 10 and len(outputs) == 10
    expected = _expected(seg, inputs)
    labels = np.concatenate([seg.predict(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)).ravel() for f in inputs])
    assert len(np.unique(labels)) >= 2  # the comparison covers more than one class colour
    for got, want in zip(outputs, expected):
        assert np.array_equal(got, want)
    assert "10 frames, 0 dropped" in res.output


def test_demo_with_legend_and_counter_keeps_overlay_elsewhere(bundle, seg, tmp_path):
    from apd_edge.demo.run import run_demo

    src, dst = tmp_path / "in.avi", tmp_path / "out.mkv"
    _write_input_video(src, n=4, size=(96, 128))
    stats = run_demo(bundle, str(src), alpha=ALPHA, save=dst, echo=lambda s: None)
    outputs, expected = _decode(dst), _expected(seg, _decode(src))
    assert stats.frames == 4 and len(outputs) == 4 and stats.mean_latency_ms > 0
    same = np.mean([np.all(g == w, axis=2).mean() for g, w in zip(outputs, expected)])
    assert 0.5 < same < 1.0  # legend and counter cover part of the frame, the overlay the rest


def test_demo_image_folder_every_frame_and_max_frames(bundle, tmp_path):
    from apd_edge.demo.run import run_demo

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((64, 64, 3), 40 * i, np.uint8))
    assert run_demo(bundle, str(folder), save=tmp_path / "a.mkv", echo=lambda s: None).frames == 5
    assert len(_decode(tmp_path / "a.mkv")) == 5
    assert run_demo(bundle, str(folder), max_frames=3, echo=lambda s: None).frames == 3


class InterruptingSource(FrameSource):
    """Yields frames, then raises KeyboardInterrupt as Ctrl-C would inside the loop."""

    def __init__(self, n_before: int):
        self.n, self.closed = n_before, False

    def read(self):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return np.full((64, 64, 3), 90, np.uint8)

    def close(self):
        self.closed = True


def test_ctrl_c_finishes_the_saved_file(bundle, tmp_path):
    from apd_edge.demo.run import run_demo

    src = InterruptingSource(3)
    stats = run_demo(bundle, "unused", save=tmp_path / "c.mkv", frame_source=src, echo=lambda s: None)
    assert stats.interrupted and stats.frames == 3 and src.closed
    assert len(_decode(tmp_path / "c.mkv")) == 3  # writer released: the file is complete and readable


def test_demo_bad_inputs(bundle, tmp_path):
    from apd_edge.demo.run import run_demo

    with pytest.raises(ApdError, match="--alpha"):
        run_demo(bundle, "0", alpha=1.5)
    with pytest.raises(ApdError, match="cannot save video"):
        run_demo(bundle, "0", save=tmp_path / "x.gif")
    with pytest.raises(ApdError, match="cannot open camera 61"):
        run_demo(bundle, "61", echo=lambda s: None)


def test_sigint_ends_cleanly_and_finishes_the_file(bundle, tmp_path):
    """A real SIGINT to ``apd-edge demo``: exit status 0 and a complete, readable video."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((64, 64, 3), i % 256, np.uint8))
    out = tmp_path / "sig.mkv"
    proc = subprocess.Popen([sys.executable, "-m", "apd_edge.cli.main", "demo", str(bundle), "--source", str(folder),
                             "--save", str(out), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text
    assert "interrupted" in text
    n = len(_decode(out))
    assert 1 <= n < 400 and f"demo: {n} frames" in text
