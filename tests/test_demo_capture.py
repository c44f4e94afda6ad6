"""Demo sources: URL redaction, source kinds, failures that name the problem, newest-frame queue."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from apd_edge.demo.capture import (ImageFolderSource, LiveSource, VideoFileSource, classify_source, open_source,
                                   redact_url)
from apd_edge.errors import ApdError


@pytest.mark.parametrize("text,expected", [
    ("rtsp://user:pass@host/stream", "rtsp://***@host/stream"),
    ("rtsp://admin:p@ss@10.0.0.2:554/h264", "rtsp://***@10.0.0.2:554/h264"),
    ("http://user@cam.local/video", "http://***@cam.local/video"),
    ("https://cam/video.mjpg?user=admin&password=hunter2&fps=5", "https://cam/video.mjpg?user=***&password=***&fps=5"),
    ("rtsp://host:554/stream", "rtsp://host:554/stream"),
    ("cannot open rtsp://u:p@h/x and http://a:b@c/d", "cannot open rtsp://***@h/x and http://***@c/d"),
    ("video.mp4", "video.mp4"),
])
def test_redact_url(text, expected):
    out = redact_url(text)
    assert out == expected
    assert "pass" not in out.replace("password=", "") and "hunter2" not in out


def test_classify_sources(tmp_path):
    assert classify_source("0") == ("camera", 0)
    assert classify_source(2) == ("camera", 2)
    assert classify_source("rtsp://u:p@h/x") == ("url", "rtsp://u:p@h/x")
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "v.mp4").write_bytes(b"")
    assert classify_source(str(tmp_path)) == ("folder", tmp_path)
    assert classify_source(str(tmp_path / "a.png"))[0] == "image"
    assert classify_source(str(tmp_path / "v.mp4"))[0] == "video"
    with pytest.raises(ApdError, match="no such file"):
        classify_source(str(tmp_path / "missing.mp4"))


def test_camera_that_cannot_be_opened_fails_fast():
    t0 = time.monotonic()
    with pytest.raises(ApdError, match=r"cannot open camera 63: no such device"):
        open_source("63")
    assert time.monotonic() - t0 < 5


def test_unreachable_stream_is_bounded_and_redacted():
    t0 = time.monotonic()
    with pytest.raises(ApdError) as exc:
        open_source("rtsp://admin:s3cret@127.0.0.1:9/live", reconnect_s=0.6)
    msg = str(exc.value)
    assert "s3cret" not in msg and "admin" not in msg and "rtsp://***@127.0.0.1:9/live" in msg
    assert "attempts" in msg and time.monotonic() - t0 < 8


def test_image_folder_natural_order_and_empty(tmp_path):
    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 8, 3), i, np.uint8))
    src = ImageFolderSource(tmp_path)
    vals = []
    while (f := src.read()) is not None:
        vals.append(int(f[0, 0, 0]))
    assert vals == [1, 2, 10]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ApdError, match="no images"):
        ImageFolderSource(empty)


def test_bad_video_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ApdError, match="cannot open video"):
        VideoFileSource(bad)


class FakeCap:
    """A capture yielding numbered frames quickly, then failing after ``n`` frames."""

    def __init__(self, n: int, delay: float = 0.002):
        self.i, self.n, self.delay = 0, n, delay
        self.released = False

    def isOpened(self):
        return True

    def get(self, prop):
        return 25.0

    def read(self):
        time.sleep(self.delay)
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, np.full((4, 4, 3), self.i % 256, np.uint8)

    def release(self):
        self.released = True


def test_live_source_keeps_newest_frame_and_counts_drops():
    cap = FakeCap(n=200)
    src = LiveSource(0, _opener=lambda target, timeout: cap, frame_timeout_s=2.0)
    time.sleep(0.3)  # the consumer is slow: the producer must replace frames, not queue them
    first = src.read()
    assert first is not None and src.dropped > 10
    seen = [int(first[0, 0, 0])]
    with pytest.raises(ApdError, match="camera stopped delivering"):
        while True:
            seen.append(int(src.read()[0, 0, 0]))
    assert seen == sorted(seen)  # newest-first never goes back in time
    src.close()
    assert cap.released


def test_dropped_stream_reconnects_then_gives_up():
    opened = []

    def opener(target, timeout):
        opened.append(1)
        return FakeCap(n=3 if len(opened) == 1 else 0)  # first connection delivers 3 frames, later ones none

    src = LiveSource("rtsp://u:pw@cam/x", reconnect_s=0.5, frame_timeout_s=0.1, _opener=opener)
    t0 = time.monotonic()
    with pytest.raises(ApdError) as exc:
        while True:
            src.read()
    src.close()
    assert "stream dropped" in str(exc.value) and "pw" not in str(exc.value)
    assert len(opened) >= 2 and time.monotonic() - t0 < 6  # retried, and bounded by time
    assert not any(t.name == "apd-capture" and t.is_alive() for t in threading.enumerate())


def test_image_folder_recursive_natural_order(tmp_path):
    for folder, frame, v in (("seq10", "f1", 5), ("seq2", "f10", 4), ("seq2", "f9", 3), (".hidden", "f1", 9),
                             ("", "a1", 1), ("seq1", "f1", 2)):
        (tmp_path / folder).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / folder / f"{frame}.png"), np.full((8, 8, 3), v, np.uint8))
    src = ImageFolderSource(tmp_path)
    vals = []
    while (f := src.read()) is not None:
        vals.append(int(f[0, 0, 0]))
    assert vals == [1, 2, 3, 4, 5]  # a1, seq1/f1, seq2/f9, seq2/f10, seq10/f1; hidden folders skipped
