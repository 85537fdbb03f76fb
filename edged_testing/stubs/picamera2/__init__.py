"""Stand-in for Raspberry Pi OS's ``python3-picamera2`` in a daemon subprocess under test.

Tests that run ``edged run`` as a real process put ``edged_testing/stubs`` on ``PYTHONPATH``
(:data:`edged_testing.camera.STUBS_DIR`), so the daemon's lazy ``from picamera2 import
Picamera2`` finds this module and drives :class:`~edged_testing.camera.FakePicamera2`.
``EDGED_FAKE_CAMERA`` picks the hardware: ``csi`` (default, one camera), ``none`` (nothing
connected) or ``busy`` (held by another program).
"""

from __future__ import annotations

import os
from typing import Any

from edged_testing.camera import CameraBench, FakePicamera2

BENCH = CameraBench()
_mode = os.environ.get("EDGED_FAKE_CAMERA", "csi")
if _mode == "none":
    BENCH.cameras.clear()
elif _mode == "busy":
    BENCH.held.add(0)


class Picamera2(FakePicamera2):
    def __init__(self, camera_num: int = 0, **kwargs: Any) -> None:
        super().__init__(camera_num, BENCH)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in BENCH.cameras if c["Num"] not in BENCH.unplugged]
