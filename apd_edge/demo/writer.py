"""Saving the overlaid video with ``cv2.VideoWriter``; the codec follows the file extension.

``.mp4``/``.mov``/``.m4v`` use ``mp4v`` (lossy, plays everywhere); ``.avi`` uses ``MJPG``; ``.mkv``
uses ``FFV1`` (lossless, exact pixels: what the tests use). ``fourcc`` overrides the choice.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import ApdError

FOURCC_BY_EXT = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


def fourcc_for(path: str | Path, fourcc: str | None = None) -> str:
    """The four-character codec code for ``path`` (or the explicit ``fourcc``), validated."""
    if fourcc:
        if len(fourcc) != 4:
            raise ApdError(f"--fourcc must be four characters (e.g. mp4v, MJPG, FFV1), got {fourcc!r}")
        return fourcc
    ext = Path(path).suffix.lower()
    if ext not in FOURCC_BY_EXT:
        raise ApdError(f"cannot save video as '{ext or path}': use one of {', '.join(sorted(FOURCC_BY_EXT))}")
    return FOURCC_BY_EXT[ext]


class VideoSink:
    """Opens on the first frame (size known then); ``write`` takes BGR uint8; ``close`` finishes the file."""

    def __init__(self, path: str | Path, fps: float = 30.0, fourcc: str | None = None) -> None:
        self.path = Path(path)
        self.fourcc = fourcc_for(self.path, fourcc)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._w: cv2.VideoWriter | None = None

    def _open(self, w: int, h: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
        if not writer.isOpened():
            raise ApdError(f"cannot write video {self.path} with codec {self.fourcc} "
                           "(this OpenCV build lacks the encoder; try --save out.mp4 or --fourcc mp4v)")
        self._w, self.size = writer, (w, h)

    def write(self, frame_bgr: np.ndarray) -> None:
        h, w = frame_bgr.shape[:2]
        if self._w is None:
            self._open(w, h)
        elif (w, h) != self.size:  # a stream that changes resolution mid-way: keep the file consistent
            frame_bgr = cv2.resize(frame_bgr, self.size, interpolation=cv2.INTER_LINEAR)
        self._w.write(np.ascontiguousarray(frame_bgr))
        self.frames += 1

    def close(self) -> None:
        if self._w is not None:
            self._w.release()
            self._w = None

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
