"""Overlay drawing and the video writer's codec choice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from apd_edge.demo.overlay import blend, colorize, draw_hud, draw_legend, render
from apd_edge.demo.run import gui_available, run_demo
from apd_edge.demo.writer import VideoSink, fourcc_for
from apd_edge.errors import ApdError

PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_blend_is_exact_weighted_mix():
    frame = np.full((4, 5, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2, 0, 255]] * 4, np.uint8)
    out = blend(frame, labels, PALETTE, 0.25)
    assert out[0, 0].tolist() == [139, 75, 75]  # 0.75*100 + 0.25*255 = 138.75 -> 139
    assert out[0, 2].tolist() == [75, 75, 139]
    assert out[0, 4].tolist() == [75, 75, 75]  # void (255) is black
    assert np.array_equal(blend(frame, labels, PALETTE, 0.0), frame)
    assert np.array_equal(blend(frame, labels, PALETTE, 1.0), colorize(labels, PALETTE))


def test_legend_and_hud_stay_inside_their_boxes():
    img = np.full((120, 160, 3), 50, np.uint8)
    before = img.copy()
    box = draw_legend(img, ["road", "car", "sky"], PALETTE)
    x0, y0, x1, y1 = box
    changed = np.any(img != before, axis=2)
    assert changed[y0:y1, x0:x1].any() and not changed[:, :x0].any() and not changed[y1:, :].any()
    img2 = before.copy()
    hx0, hy0, hx1, hy1 = draw_hud(img2, "30.0 FPS  12.0 ms")
    changed = np.any(img2 != before, axis=2)
    assert changed.any() and not changed[hy1:, :].any() and not changed[:, hx1:].any()


def test_render_boxes_cover_every_non_overlay_pixel():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (96, 128)).astype(np.uint8)
    out, boxes = render(frame, labels, PALETTE, 0.5, ["a", "b", "c"], hud="10.0 FPS", legend=True)
    mask = np.ones((96, 128), bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = False
    assert len(boxes) == 2 and mask.sum() > 0.5 * mask.size
    assert np.array_equal(out[mask], blend(frame, labels, PALETTE, 0.5)[mask])


def test_fourcc_by_extension():
    assert fourcc_for("a.mp4") == "mp4v" and fourcc_for("a.MKV") == "FFV1" and fourcc_for("a.avi") == "MJPG"
    assert fourcc_for("a.avi", "FFV1") == "FFV1"
    with pytest.raises(ApdError, match="cannot save video"):
        fourcc_for("a.gif")
    with pytest.raises(ApdError, match="four characters"):
        fourcc_for("a.mp4", "h264x")


def test_sink_writes_lossless_mkv(tmp_path):
    frames = [np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8) for i in range(4)]
    with VideoSink(tmp_path / "o.mkv", fps=5) as sink:
        for f in frames:
            sink.write(f)
    cap = cv2.VideoCapture(str(tmp_path / "o.mkv"))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    assert len(got) == 4 and all(np.array_equal(a, b) for a, b in zip(frames, got))


def test_show_without_gui_is_a_clear_error():
    if gui_available():
        pytest.skip("this OpenCV build has a GUI")
    with pytest.raises(ApdError, match="--show needs OpenCV with GUI support"):
        run_demo("unused", "0", show=True)


def test_legend_scales_to_the_frame():
    """On a 320-pixel-wide frame the legend takes at most a fifth of the width, names shortened if need be."""
    names = ["road", "sidewalk", "vegetation", "traffic sign", "motorcycle", "person", "sky"]
    pal = [[i * 30, 255 - i * 30, 100] for i in range(7)]
    for h, w in ((240, 320), (180, 320), (720, 1280)):
        img = np.zeros((h, w, 3), np.uint8)
        box = draw_legend(img, names, pal)
        assert box is not None
        x0, y0, x1, y1 = box
        assert x1 - x0 <= int(0.2 * w), (h, w, box)
    tiny = draw_legend(np.zeros((64, 96, 3), np.uint8), names, pal)  # shortened names, or none at all
    assert tiny is None or tiny[2] - tiny[0] <= 40
    big = draw_legend(np.zeros((720, 1280, 3), np.uint8), names, pal)
    small = draw_legend(np.zeros((240, 320, 3), np.uint8), names, pal)
    assert (big[3] - big[1]) > 2 * (small[3] - small[1])  # rows grow with the frame
