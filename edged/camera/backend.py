"""The camera device through picamera2, used only from the camera thread.

picamera2/libcamera come from apt on a Pi (``python3-picamera2``, visible through the venv's
``--system-site-packages``), never from PyPI, so the import is lazy: elsewhere the camera is
reported as absent and the rest of the daemon does not care.

One library covers both kinds of camera a pair of glasses may carry: CSI camera modules, and
USB (UVC) webcams through libcamera's ``uvcvideo`` pipeline handler (picamera2 lists USB cameras
after the CSI ones, hence ``camera.index``). picamera2's own calls are the contract here, and
``edged_testing.camera.FakePicamera2`` mimics exactly these:

* ``Picamera2(camera_num)`` opens and acquires the camera; a number with no camera raises
  ``IndexError``, a camera another process holds raises ``RuntimeError`` whose cause says
  "Device or resource busy";
* ``create_still_configuration(main={"size": (w, h)})`` + ``configure()`` once per open;
  libcamera's Pi pipeline crops to the requested aspect ratio and scales in the ISP, so a
  768x768 still costs no CPU to resize;
* ``options["quality"]`` is the JPEG quality ``capture_file(..., format="jpeg")`` uses;
* ``start()`` / ``stop()`` start and stop streaming; ``capture_metadata(wait=s)`` waits for a
  frame; ``wait=`` a number makes a capture that never completes (camera unplugged mid-way)
  raise ``TimeoutError`` instead of hanging the thread.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any, Literal

from edged.config import CameraSettings

log = logging.getLogger(__name__)

# After start(), auto exposure and white balance need a few frames to settle; a still taken
# on the first frame is often dark or tinted.
WARMUP_FRAMES = 4

Unavailable = Literal["absent", "busy", "failed"]
Factory = Callable[[int], Any]


class CameraUnavailable(Exception):
    """The camera cannot be used now; ``reason`` is absent, busy or failed, and the message
    says what to check or install."""

    def __init__(self, reason: Unavailable, message: str) -> None:
        super().__init__(message)
        self.reason: Unavailable = reason


def import_picamera2() -> Factory:
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError as e:
        raise CameraUnavailable(
            "absent", f"picamera2 is not installed ({e}); on Raspberry Pi OS: `sudo apt install "
            "python3-picamera2` (the venv uses system site-packages)") from None
    return Picamera2  # type: ignore[no-any-return]


def _chain(e: BaseException) -> str:
    """The error and its causes: picamera2 wraps libcamera's error ("Device or resource
    busy") in a generic "Camera __init__ sequence did not complete"."""
    parts: list[str] = []
    cur: BaseException | None = e
    while cur is not None and len(parts) < 4:
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return " <- ".join(parts)


class Picamera2Backend:
    """One open picamera2 camera configured for stills of ``settings.width x height``."""

    def __init__(self, settings: CameraSettings, factory: Factory | None = None) -> None:
        self.settings = settings
        self._factory = factory
        self._cam: Any = None
        self.streaming = False

    @property
    def name(self) -> str:
        return f"picamera2 camera {self.settings.index}"

    def open(self) -> None:
        factory = self._factory or import_picamera2()
        s = self.settings
        try:
            cam = factory(s.index)
        except IndexError:
            raise CameraUnavailable(
                "absent", f"no camera number {s.index} is connected (check the ribbon cable or "
                "USB plug; `rpicam-hello --list-cameras` lists what libcamera sees)") from None
        except Exception as e:
            chain = _chain(e)
            if "busy" in chain.lower():
                raise CameraUnavailable("busy", f"the camera is in use by another program "
                                        f"({chain})") from e
            if "not found" in chain.lower():
                raise CameraUnavailable("absent", f"no camera found ({chain})") from e
            raise CameraUnavailable("failed", f"cannot open the camera: {chain}") from e
        try:
            cam.configure(cam.create_still_configuration(main={"size": (s.width, s.height)}))
            cam.options["quality"] = s.jpeg_quality
        except Exception as e:
            cam.close()
            raise CameraUnavailable("failed", f"cannot configure {s.width}x{s.height} stills: "
                                    f"{_chain(e)}") from e
        self._cam = cam
        self.streaming = False

    def start(self) -> None:
        """Start streaming and let exposure settle (``WARMUP_FRAMES``)."""
        self._cam.start()
        self.streaming = True
        for _ in range(WARMUP_FRAMES):
            self._cam.capture_metadata(wait=self.settings.capture_timeout_s)

    def capture(self) -> bytes:
        """One JPEG from the running stream; ``TimeoutError`` if no frame arrives in time."""
        if not self.streaming:
            self.start()
        buf = io.BytesIO()
        self._cam.capture_file(buf, format="jpeg", wait=self.settings.capture_timeout_s)
        return buf.getvalue()

    def stop(self) -> None:
        """Stop streaming (the sensor idles; the camera stays open and configured)."""
        if self.streaming:
            self.streaming = False
            self._cam.stop()

    def close(self) -> None:
        cam, self._cam = self._cam, None
        self.streaming = False
        if cam is not None:
            cam.close()          # picamera2's close() stops the camera first
