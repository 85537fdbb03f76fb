#!/usr/bin/env python3
"""Camera benchmark: capture-to-wire time and bytes per still, at the chosen size and around it.

What runs is the daemon's path - the Camera component (its thread, the picamera2 backend), the
Live session (real google-genai SDK, TLS) and the simulator receiving ``realtimeInput.video`` -
with the camera sensor replaced by edged_testing.camera's double unless picamera2 is importable
(on a Pi with a camera the real one is used, and says so). Per size/quality it measures:

  capture   request -> JPEG in hand, warm (streaming) and cold (stream stopped: start + warm-up)
  to wire   request -> the simulator has the image (capture + base64 + TLS + parse)
  bytes     JPEG bytes per still, and on the wire (base64 adds a third)
  tokens    what the model is charged per still at each camera.media_resolution, and per minute
            at the 1 still/s ceiling (the SDK's MediaResolution documentation: low 64, medium 256,
            high 256 zoomed)

Prints numbers only (p50/p95); never passes or fails. Run alone:
.venv/bin/python scripts/bench_camera.py (about 20 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import platform
import statistics
import time
from typing import Any

from edged.camera.component import Camera
from edged.config import CameraSettings, Settings
from edged.events import DeviceChanged, EventBus
from edged.live import LiveSession
from edged.tools import ToolRegistry
from edged_testing.camera import CameraBench
from edged_testing.sim import LiveSimulator
from edged_testing.voice_rig import poll_until

N = 15
COLD = 3
SIZES = [(512, 512, 75), (768, 768, 60), (768, 768, 75), (768, 768, 90), (1024, 1024, 75)]
CHOSEN = (768, 768, 75)
TOKENS = {"low": 64, "medium": 256, "high": 256}


def pct(values: list[float]) -> str:
    vals = sorted(values)
    p95 = vals[min(len(vals) - 1, round(0.95 * (len(vals) - 1)))]
    return f"p50 {statistics.median(vals):7.1f}  p95 {p95:7.1f}"


async def running(cam: Camera, bus: EventBus) -> None:
    q = bus.subscribe(DeviceChanged)
    async with asyncio.timeout(30):
        while cam.health.state != "running":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(q.get(), 0.2)
    bus.unsubscribe(q)


async def measure(sim: LiveSimulator, live: LiveSession, bus: EventBus, factory: Any,
                  w: int, h: int, q: int) -> dict[str, list[float]]:
    cam = Camera(CameraSettings(enabled=True, width=w, height=h, jpeg_quality=q), bus,
                 factory=factory)
    task = asyncio.create_task(cam.run())
    out: dict[str, list[float]] = {"warm": [], "cold": [], "wire": [], "bytes": []}
    try:
        await running(cam, bus)
        for i in range(N + COLD):
            cold = i < COLD
            if cold:                                   # measure a start from a stopped stream
                cam.standby()
                await poll_until(lambda: not cam.status()["streaming"], 30)
            before = len(sim.images())
            t0 = time.time()
            still = await cam.take("bench")
            await live.send_image(still.jpeg)
            await sim.wait_for(lambda s, n=before: len(s.images()) > n, 30)
            out["cold" if cold else "warm"].append(still.capture_ms)
            if not cold:
                out["wire"].append((sim.images()[-1].received_at - t0) * 1000)
                out["bytes"].append(len(still.jpeg))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return out


async def main() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    real = importlib.util.find_spec("picamera2") is not None
    factory = None if real else CameraBench().factory
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    print("camera: " + ("picamera2 (real)" if real else "edged_testing FakePicamera2 (Pillow draws "
                        "and encodes a synthetic shelf scene: not a Pi ISP)"))
    async with LiveSimulator() as sim:
        settings = Settings.model_validate({"gemini": {
            "base_url": sim.base_url, "ca_file": str(sim.ca_file), "api_key": "bench",
            "response_modality": "TEXT"}})
        bus = EventBus()
        live = LiveSession(settings, ToolRegistry(8.0), bus)
        live_task = asyncio.create_task(live.run())
        await live.wait_ready(30)
        print(f"\n{'size':>10} {'q':>3} | {'capture warm ms':^27} | {'capture cold ms':^27} | "
              f"{'request -> wire ms':^27} | {'bytes/still':>11} {'on wire':>9}")
        chosen: dict[str, list[float]] = {}
        for w, h, q in SIZES:
            r = await measure(sim, live, bus, factory, w, h, q)
            if (w, h, q) == CHOSEN:
                chosen = r
            b = statistics.median(r["bytes"])
            print(f"{w:>4}x{h:<5} {q:>3} | {pct(r['warm']):>27} | {pct(r['cold']):>27} | "
                  f"{pct(r['wire']):>27} | {b:>11,.0f} {b * 4 / 3:>9,.0f}"
                  f"{'   <- chosen' if (w, h, q) == CHOSEN else ''}")
        b = statistics.median(chosen["bytes"])
        print(f"\nchosen {CHOSEN[0]}x{CHOSEN[1]} q{CHOSEN[2]}: {b / 1024:.0f} KiB per still, "
              f"{b * 4 / 3 * 60 / 2**20:.1f} MiB/min uplink at the 1 still/s ceiling")
        for res, tok in TOKENS.items():
            print(f"media_resolution {res:<6}: {tok:>3} tokens per still, {tok * 60:>6,} per "
                  "minute at 1 still/s")
        await live.close()
        await asyncio.wait_for(live_task, 15)


if __name__ == "__main__":
    asyncio.run(main())
