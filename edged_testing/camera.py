"""A stand-in for the camera hardware: ``FakePicamera2`` mimics the picamera2 calls edged uses
(the list in ``edged.camera.backend``'s docstring) and produces real JPEGs.

The Pi camera cannot exist on a development machine, so this is the one test double in the
voice path. It behaves as picamera2 does where edged depends on it: ``Picamera2(n)`` raises
``IndexError`` for a camera number that is not connected and a chained ``RuntimeError``
("Device or resource busy") for a camera another process holds; ``capture_file(...,
format="jpeg", wait=s)`` encodes at ``options["quality"]`` and the configured size, and raises
``TimeoutError`` when the camera was unplugged (what a request that never completes does with
``wait``). A :class:`CameraBench` is the "hardware": which cameras are plugged in, held or
unplugged, and what they see; tests change it while the daemon runs.

The scene is drawn with Pillow (a realistic amount of detail, so JPEG sizes are plausible): a
shop shelf with a price sign, «OFERTA 3,50 €», the question the demo asks about.
"""

from __future__ import annotations

import io
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIGN_TEXT = ("OFERTA", "3,50 EUR")
# Put this on PYTHONPATH and a daemon subprocess imports the stand-in ``picamera2`` there.
STUBS_DIR = Path(__file__).resolve().parent / "stubs"


def scene(width: int, height: int, frame: int = 0) -> Image.Image:
    """A deterministic photo-like scene (texture, shapes, a sign) at ``width x height``."""
    rng = random.Random(1234)
    img = Image.new("RGB", (width, height), (196, 188, 170))
    d = ImageDraw.Draw(img)
    # shelves with products of assorted colours
    for row in range(4):
        y0 = int(height * (0.08 + row * 0.23))
        d.rectangle([0, y0 + int(height * 0.18), width, y0 + int(height * 0.2)],
                    fill=(110, 80, 50))
        x = 0
        while x < width:
            w = rng.randint(width // 14, width // 7)
            h = rng.randint(int(height * 0.08), int(height * 0.17))
            colour = tuple(rng.randint(30, 230) for _ in range(3))
            d.rectangle([x + 3, y0 + int(height * 0.18) - h, x + w - 3, y0 + int(height * 0.18)],
                        fill=colour, outline=(20, 20, 20))
            x += w
    # the price sign in the middle
    sx0, sy0, sx1, sy1 = width * 0.25, height * 0.38, width * 0.75, height * 0.62
    d.rectangle([sx0, sy0, sx1, sy1], fill=(250, 210, 40), outline=(180, 20, 20), width=6)
    font = ImageFont.load_default(size=max(12, height // 12))
    for i, line in enumerate(SIGN_TEXT):
        d.text((width / 2, sy0 + (sy1 - sy0) * (0.3 + 0.4 * i)), line, fill=(180, 20, 20),
               font=font, anchor="mm")
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    # sensor noise, different per frame as on a real camera
    noise = Image.effect_noise((width, height), 18 + frame % 3).convert("RGB")
    return Image.blend(img, noise, 0.12)


@dataclass
class CameraBench:
    """The cameras a test has "plugged in". ``cameras`` are picamera2's global_camera_info()
    entries (CSI first, USB after); ``held`` camera numbers are in use by another program;
    ``unplugged`` ones vanish mid-stream (captures time out, re-opening raises IndexError)."""

    cameras: list[dict[str, Any]] = field(default_factory=lambda: [
        {"Model": "imx708", "Location": 2, "Rotation": 180,
         "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a", "Num": 0}])
    held: set[int] = field(default_factory=set)
    unplugged: set[int] = field(default_factory=set)
    opened: list[FakePicamera2] = field(default_factory=list)
    captures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def factory(self, camera_num: int = 0) -> FakePicamera2:
        """What ``Picamera2(camera_num)`` is for edged (``Camera(factory=bench.factory)``)."""
        return FakePicamera2(camera_num, self)

    def unplug(self, num: int = 0) -> None:
        self.unplugged.add(num)

    def replug(self, num: int = 0) -> None:
        self.unplugged.discard(num)


class FakePicamera2:
    """The subset of ``picamera2.Picamera2`` edged uses, with the same call shapes."""

    def __init__(self, camera_num: int = 0, bench: CameraBench | None = None) -> None:
        self.bench = bench or CameraBench()
        infos = [c for c in self.bench.cameras if c["Num"] not in self.bench.unplugged]
        self.camera_idx = infos[camera_num]["Num"]      # IndexError, as picamera2 raises
        if self.camera_idx in self.bench.held:
            try:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            except RuntimeError as e:
                raise RuntimeError("Camera __init__ sequence did not complete.") from e
        self.options: dict[str, Any] = {"quality": 90}
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.is_open = True
        self.frame = 0
        self.bench.opened.append(self)

    def create_still_configuration(self, main: dict[str, Any] | None = None,
                                   **kwargs: Any) -> dict[str, Any]:
        size = (main or {}).get("size", (4608, 2592))
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")
        return {"use_case": "still", "buffer_count": 1,
                "main": {"format": "BGR888", "preserve_ar": True, **(main or {})}}

    def configure(self, camera_config: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.camera_config = camera_config

    def start(self, config: Any = None, show_preview: bool = False) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def _next_frame(self, wait: Any) -> None:
        if not self.started:
            raise RuntimeError("Camera is not started")   # picamera2 would wait forever
        if self.camera_idx in self.bench.unplugged:
            raise TimeoutError()       # Job.get_result(timeout=wait): no frame ever completes
        self.frame += 1

    def capture_metadata(self, wait: Any = None, signal_function: Any = None) -> dict[str, Any]:
        self._next_frame(wait)
        return {"FrameNumber": self.frame, "ExposureTime": 10000}

    def capture_file(self, file_output: Any, name: str = "main", format: str | None = None,
                     wait: Any = None, signal_function: Any = None,
                     exif_data: Any = None) -> dict[str, Any]:
        self._next_frame(wait)
        assert self.camera_config is not None
        w, h = self.camera_config["main"]["size"]
        img = scene(w, h, self.frame)
        buf = file_output if isinstance(file_output, io.BytesIO) else open(file_output, "wb")  # noqa: SIM115
        img.save(buf, format=(format or "jpeg").upper().replace("JPG", "JPEG"),
                 quality=self.options.get("quality", 90))
        with self.bench.lock:
            self.bench.captures += 1
        return {"FrameNumber": self.frame}

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.stop()
        self.is_open = False
