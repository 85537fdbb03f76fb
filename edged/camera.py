"""Pi camera stills (optional): picamera2 is imported lazily and used from a worker thread.

picamera2/libcamera come from apt on a Pi (``python3-picamera2``, visible through the venv's
``--system-site-packages``), never from PyPI, so on other machines the import fails and the
camera is simply reported as unavailable - the rest of the daemon does not care.

``Camera.open()`` configures a still stream at ``camera.width x camera.height`` once; each
``capture_jpeg()`` then takes one JPEG (quality ``camera.jpeg_quality`` via picamera2's
``options["quality"]``) without re-negotiating the sensor mode, which is what makes a still on
speech onset affordable. ``min_interval_s`` rate-limits stills so a chatty user does not
upload a photo per sentence.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edged.config import CameraSettings

log = logging.getLogger(__name__)


def _import_picamera2() -> Callable[[], Any]:
    from picamera2 import Picamera2  # type: ignore[import-not-found]
    return Picamera2


class CameraUnavailable(RuntimeError):
    """The camera cannot be used; the message says why and what to install or check."""


class Camera:
    def __init__(self, settings: CameraSettings,
                 factory: Callable[[], Any] | None = None) -> None:
        """``factory`` creates the Picamera2 object (default: the real one, imported lazily)."""
        self.settings = settings
        self._factory = factory
        self._cam: Any = None
        self._lock = threading.Lock()
        self.state = "disabled" if not settings.enabled else "closed"
        self.detail = ""
        self.stills = 0
        self._last_still = 0.0

    def status(self) -> dict[str, Any]:
        return {"enabled": self.settings.enabled, "state": self.state, "detail": self.detail,
                "size": f"{self.settings.width}x{self.settings.height}", "stills": self.stills}

    def _open_blocking(self) -> None:
        try:
            factory = self._factory or _import_picamera2()
        except ImportError as e:
            raise CameraUnavailable(
                f"picamera2 is not installed ({e}); on Raspberry Pi OS: "
                "`sudo apt install python3-picamera2` (the venv uses system site-packages)"
            ) from None
        try:
            cam = factory()
            config = cam.create_still_configuration(
                main={"size": (self.settings.width, self.settings.height)})
            cam.configure(config)
            cam.options["quality"] = self.settings.jpeg_quality
            cam.start()
        except Exception as e:   # libcamera raises RuntimeError/IndexError for "no camera"
            raise CameraUnavailable(f"camera not found or busy: {type(e).__name__}: {e}") from e
        self._cam = cam

    async def open(self) -> None:
        """Open the camera if enabled; on failure record why (status) and re-raise."""
        if not self.settings.enabled:
            return
        try:
            await asyncio.to_thread(self._open_blocking)
        except CameraUnavailable as e:
            self.state, self.detail = "unavailable", str(e)
            raise
        self.state, self.detail = "ok", ""

    def _capture_blocking(self) -> bytes:
        with self._lock:
            if self._cam is None:
                raise CameraUnavailable("camera is not open")
            buf = io.BytesIO()
            self._cam.capture_file(buf, format="jpeg")
            return buf.getvalue()

    async def capture_jpeg(self, force: bool = False) -> bytes | None:
        """One JPEG still, or ``None`` when rate-limited by ``camera.min_interval_s``."""
        now = time.monotonic()
        if not force and now - self._last_still < self.settings.min_interval_s:
            return None
        jpeg = await asyncio.to_thread(self._capture_blocking)
        self._last_still = now
        self.stills += 1
        return jpeg

    async def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            def _close() -> None:
                with self._lock:
                    cam.stop()
                    cam.close()
            await asyncio.to_thread(_close)
        if self.settings.enabled:
            self.state = "closed"
