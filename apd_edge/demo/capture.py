"""Frame sources for the demo: camera index, video file, image folder, or stream URL.

Files and folders are read in order, every frame (so an output video has as many frames as the input).
Cameras and streams are read on their own thread into a one-slot queue that always holds the newest
frame: the consumer never falls behind, and replaced frames are counted as ``dropped``. Streams that
stop delivering are reopened with back-off until ``reconnect_s`` has passed without a good frame, then
an ``ApdError`` is raised; nothing waits forever. Every message names sources through
:func:`redact_url`, so credentials in URLs are never printed.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.base import IMAGE_EXTS
from ..errors import ApdError

# FFmpeg's own log lines can quote a stream URL, credentials included: keep FFmpeg quiet (AV_LOG_QUIET)
# unless the user asked otherwise. Read by OpenCV when its FFmpeg backend starts.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "tcp", "srt")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://\S+")
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:user(?:name)?|pass(?:word|wd)?|pwd|token|access_token|auth|key|api_?key|secret|sig(?:nature)?)=)"
    r"(?P<value>[^&#\s]*)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """Hide credentials in any URL inside ``text``.

    ``rtsp://user:pass@host/x`` -> ``rtsp://***@host/x``; secret-looking query values
    (``?user=..&password=..&token=..``) become ``***``. Text without URLs is returned unchanged.
    A URL runs to the next whitespace and its credentials to the *last* ``@`` in it, so a password holding
    ``#``, ``/``, ``?`` or ``@`` is hidden whole (an ``@`` in a path hides the host too: safe rather than sorry).
    """
    def one(m: re.Match) -> str:
        scheme, rest = m.group(0).split("://", 1)
        at = rest.rfind("@")
        if at >= 0:
            rest = "***" + rest[at:]
        return _SECRET_PARAM.sub(lambda q: f"{q.group('key')}***", f"{scheme}://{rest}")

    return _URL.sub(one, str(text))


def classify_source(source: str | int) -> tuple[str, Any]:
    """``("camera", index) | ("url", str) | ("video", Path) | ("folder", Path) | ("image", Path)``."""
    s = str(source).strip()
    if s.isdigit():
        return "camera", int(s)
    if "://" in s:
        return "url", s
    p = Path(s).expanduser()
    if p.is_dir():
        return "folder", p
    if p.is_file():
        return ("image" if p.suffix.lower() in IMAGE_EXTS else "video"), p
    if s.startswith("/dev/video"):
        return "camera", s
    raise ApdError(f"--source {redact_url(s)}: no such file, folder or camera (use 0 for the first camera, "
                   "a video file, an image folder or an rtsp/http URL)")


def _natural_key(p: Path | str) -> list:
    """``seq2/frame10`` after ``seq2/frame9`` and ``seq10`` after ``seq2`` (folder by folder)."""
    text = p if isinstance(p, str) else p.name
    return [[int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", part)] for part in text.split("/")]


class FrameSource:
    """Iterate BGR uint8 frames with ``read()`` (None at the end); always ``close()``."""

    live = False
    name = "?"
    fps = 30.0
    dropped = 0

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageFolderSource(FrameSource):
    """Every image of a folder and its subfolders in natural order (``2.png`` before ``10.png``), or one image."""

    def __init__(self, path: Path, fps: float = 10.0) -> None:
        self.name = str(path)
        self.fps = fps
        if path.is_dir():
            found = (f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()
                     and not any(part.startswith(".") for part in f.relative_to(path).parts))
            self.files = sorted(found, key=lambda f: _natural_key(f.relative_to(path).as_posix()))
        else:
            self.files = [path]
        if not self.files:
            raise ApdError(f"--source {path}: folder has no images ({', '.join(IMAGE_EXTS)})")
        self._i = 0

    def __len__(self) -> int:
        return len(self.files)

    def read(self) -> np.ndarray | None:
        if self._i >= len(self.files):
            return None
        f = self.files[self._i]
        self._i += 1
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise ApdError(f"cannot read image {f}")
        return img


class VideoFileSource(FrameSource):
    """A video file read frame by frame; no frame is skipped."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise ApdError(f"cannot open video {path}: not a video file or its codec is not supported by OpenCV")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 30.0
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        self.cap.release()


def open_capture(target: int | str, timeout_s: float = 5.0) -> cv2.VideoCapture:
    """A ``cv2.VideoCapture`` for a camera or URL; URLs get FFmpeg open/read timeouts so nothing hangs."""
    if isinstance(target, str) and "://" in target:
        ms = int(timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        log = getattr(getattr(cv2, "utils", None), "logging", None)
        old = log.getLogLevel() if log else None
        if log:  # OpenCV's warnings may quote the URL too
            log.setLogLevel(log.LOG_LEVEL_ERROR)
        try:
            return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        finally:
            if log:
                log.setLogLevel(old)
    return cv2.VideoCapture(target)


class LiveSource(FrameSource):
    """A camera or stream read on a background thread into a one-slot queue (newest frame wins).

    ``reconnect_s``: for URLs, how long to keep reopening (with back-off) after the stream stops; cameras
    fail at once. ``frame_timeout_s``: how long ``read`` waits for a frame before giving up.
    A URL whose stream reports a frame count (a video file served over HTTP, not a live feed) ends there:
    ``read`` returns None, unless ``loop``, which reopens it from the start.
    """

    live = True

    def __init__(self, target: int | str, reconnect_s: float = 10.0, frame_timeout_s: float = 10.0,
                 open_timeout_s: float = 5.0, _opener=open_capture, loop: bool = False) -> None:
        self.target = target
        self.is_url = isinstance(target, str) and "://" in target
        self.name = redact_url(str(target)) if self.is_url else f"camera {target}"
        self.reconnect_s = reconnect_s
        self.frame_timeout_s = max(frame_timeout_s, reconnect_s + open_timeout_s if self.is_url else 0)
        self.open_timeout_s = open_timeout_s
        self._opener = _opener
        self.dropped = 0
        self.frames = 0
        self.reconnects = 0
        self.error: ApdError | None = None
        self.loop = loop
        self.ended = False
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self.cap = self._open_with_retry()
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        scheme = str(target).split("://", 1)[0].lower() if self.is_url else ""
        # live feeds report 0 or -1 frames; streaming protocols are treated as live whatever they report
        self.finite = bool(self.is_url and scheme not in LIVE_SCHEMES and count and 0 < count < 1e9)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 30.0
        self._thread = threading.Thread(target=self._loop, name="apd-capture", daemon=True)
        self._thread.start()

    def _open_once(self) -> cv2.VideoCapture | None:
        cap = self._opener(self.target, self.open_timeout_s)
        if cap is not None and cap.isOpened():
            return cap
        if cap is not None:
            cap.release()
        return None

    def _open_with_retry(self) -> cv2.VideoCapture:
        deadline = time.monotonic() + (self.reconnect_s if self.is_url else 0.0)
        delay = 0.25
        while True:
            cap = self._open_once()
            if cap is not None:
                return cap
            if time.monotonic() + delay > deadline or self._stop.is_set():
                break
            self.reconnects += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if self.is_url:
            raise ApdError(f"cannot open stream {self.name} (gave up after {self.reconnects + 1} attempts in "
                           f"{self.reconnect_s:g} s; check the address, port and credentials)")
        raise ApdError(f"cannot open {self.name}: no such device, busy, or no permission "
                       "(check /dev/video*, that no other program uses it, and the 'video' group)")

    def _put(self, frame: np.ndarray) -> None:
        try:
            self._q.put_nowait(frame)
        except queue.Full:
            try:
                self._q.get_nowait()  # throw away the stale frame: the consumer only wants the newest
                self.dropped += 1
            except queue.Empty:
                pass
            self._q.put_nowait(frame)

    def _loop(self) -> None:
        try:
            self._read_frames()
        finally:
            self.cap.release()  # released by the thread that reads, never while a read is in flight

    def _read_frames(self) -> None:
        last_good = time.monotonic()
        delay = 0.25
        while not self._stop.is_set():
            ok, frame = self.cap.read()
            if ok and frame is not None:
                self.frames += 1
                last_good, delay = time.monotonic(), 0.25
                self._put(frame)
                continue
            if self._stop.is_set():
                break
            if self.finite and not self.loop and self.frames:
                self.ended = True  # the end of a finite video, not a dropped stream
                break
            if not self.is_url or time.monotonic() - last_good > self.reconnect_s:
                what = "stream dropped" if self.is_url else "camera stopped delivering frames"
                self.error = ApdError(f"{self.name}: {what}"
                                      + (f" and {self.reconnects} reconnect attempts within "
                                         f"{self.reconnect_s:g} s failed"
                                         if self.is_url else ""))
                break
            # Stream hiccup: reopen with back-off, bounded by reconnect_s since the last good frame.
            self.cap.release()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            self.reconnects += 1
            cap = self._open_once()
            if cap is not None:
                self.cap = cap
            else:
                self.cap = cv2.VideoCapture()  # unopened: read() fails at once and we retry

    def read(self) -> np.ndarray | None:
        """The newest frame; raises ApdError when the source failed or sent nothing for too long."""
        deadline = time.monotonic() + self.frame_timeout_s
        while True:
            try:
                return self._q.get(timeout=0.05)
            except queue.Empty:
                pass
            if self.error is not None:
                raise self.error
            if self.ended and self._q.empty():
                return None
            if not self._thread.is_alive() and self._q.empty():
                raise ApdError(f"{self.name}: capture stopped")
            if time.monotonic() > deadline:
                raise ApdError(f"{self.name}: no frame for {self.frame_timeout_s:g} s")

    def close(self) -> None:
        self._stop.set()
        # A read blocked inside the driver ends within its timeout; the daemon thread then releases.
        self._thread.join(timeout=self.open_timeout_s + 1.0)


def open_source(source: str | int, reconnect_s: float = 10.0, frame_timeout_s: float = 10.0,
                loop: bool = False) -> FrameSource:
    """The right :class:`FrameSource` for ``--source`` (``loop``: replay a finite network video)."""
    kind, target = classify_source(source)
    if kind in ("folder", "image"):
        return ImageFolderSource(target)
    if kind == "video":
        return VideoFileSource(target)
    return LiveSource(target, reconnect_s=reconnect_s, frame_timeout_s=frame_timeout_s, loop=loop)
