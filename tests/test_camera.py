"""The camera component against the picamera2 double: stills, the policy, mute, the recovery
loop (absent, busy, unplugged and re-plugged), and the look tool's answers."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edged.camera.component import Camera, StillRefused
from edged.camera.jpeg import jpeg_size
from edged.camera.policy import automatic_reason, refusal
from edged.camera.tool import make_look_tool
from edged.config import CameraSettings
from edged.events import (
    CameraStill,
    DeviceChanged,
    EventBus,
    MuteChanged,
    VoiceStateChanged,
    WakeWordDetected,
)
from edged.tools import ToolRegistry
from edged_testing.camera import CameraBench, FakePicamera2

WAIT_S = 30.0


class Sink:
    """Where a test's stills go instead of the Live session."""

    def __init__(self, connected: bool = True) -> None:
        self.images: list[bytes] = []
        self.connected = connected

    async def send_image(self, jpeg: bytes) -> bool:
        if self.connected:
            self.images.append(jpeg)
        return self.connected


async def until(cond: Callable[[], bool], bus: EventBus) -> None:
    """Wait for ``cond`` to hold, re-checking at every camera event (the thread's changes
    arrive as DeviceChanged), with a generous bound for loaded machines."""
    q = bus.subscribe()
    try:
        async with asyncio.timeout(WAIT_S):
            while not cond():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.get(), 0.2)
    finally:
        bus.unsubscribe(q)


@contextlib.asynccontextmanager
async def running(bench: CameraBench, **kw: Any) -> AsyncIterator[tuple[Camera, EventBus, Sink]]:
    settings = CameraSettings(**{"enabled": True, "retry_base_s": 0.05, "retry_cap_s": 0.2,
                                 "capture_timeout_s": 2.0, **kw})
    bus = EventBus()
    cam = Camera(settings, bus, factory=bench.factory)
    sink = Sink()
    cam.attach(sink)
    task = asyncio.create_task(cam.run())
    try:
        yield cam, bus, sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_jpeg_size_reads_the_frame_header() -> None:
    cam = FakePicamera2(0, CameraBench())
    cam.configure(cam.create_still_configuration(main={"size": (640, 480)}))
    cam.start()

    buf = io.BytesIO()
    cam.capture_file(buf, format="jpeg")
    assert jpeg_size(buf.getvalue()) == (640, 480)
    assert jpeg_size(b"\x89PNG\r\n\x1a\n....") is None
    assert jpeg_size(buf.getvalue()[:20]) is None            # cut before the frame header


def test_refusal_order_and_messages() -> None:
    ok = {"enabled": True, "muted": False, "device_state": "running", "unavailable": None,
          "busy": False, "since_last_s": None, "min_interval_s": 1.0}
    assert refusal(**ok) is None
    assert refusal(**{**ok, "enabled": False, "muted": True}).code == "disabled"  # type: ignore
    muted = refusal(**{**ok, "muted": True, "device_state": "retrying"})  # type: ignore[arg-type]
    assert muted is not None and muted.code == "muted" and "privacy" in muted.message
    absent = refusal(**{**ok, "device_state": "retrying", "unavailable": "absent"})  # type: ignore
    assert absent is not None
    assert absent.message == "no camera: no camera is connected to the device"
    assert refusal(**{**ok, "device_state": "retrying",  # type: ignore[arg-type]
                      "unavailable": "busy"}).code == "busy"
    assert refusal(**{**ok, "busy": True}).code == "busy"  # type: ignore[union-attr]
    limited = refusal(**{**ok, "since_last_s": 0.4})  # type: ignore[arg-type]
    assert limited is not None and limited.code == "rate_limited"
    assert "0.4 s ago" in limited.message
    assert refusal(**{**ok, "since_last_s": 0.4, "rate_limited": False}) is None  # type: ignore


def test_automatic_reasons_follow_send_on() -> None:
    wake = WakeWordDetected("okay_nabu", 0.9)
    listening = VoiceStateChanged("listening", "idle")
    assert automatic_reason("wake", wake) == "wake"
    assert automatic_reason("wake", listening) is None
    assert automatic_reason("speech_start", listening) == "speech_start"
    assert automatic_reason("speech_start", VoiceStateChanged("thinking", "listening")) is None
    assert automatic_reason("tool", wake) is None and automatic_reason("tool", listening) is None


def test_settings_reject_odd_sizes() -> None:
    with pytest.raises(ValueError, match="must be even"):
        CameraSettings(width=767)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        CameraSettings(min_interval_s=0.2)


async def test_still_is_a_real_jpeg_at_the_configured_size_and_quality() -> None:
    bench = CameraBench()
    async with running(bench, width=640, height=480, jpeg_quality=40) as (cam, bus, sink):
        await until(lambda: cam.health.state == "running", bus)
        still = await cam.send("tool")
        assert (still.width, still.height) == (640, 480)
        assert sink.images == [still.jpeg] and still.jpeg.startswith(b"\xff\xd8\xff")
        assert bench.opened[-1].options["quality"] == 40
        st = cam.status()
        assert st["state"] == "running" and st["stills"]["sent"] == 1
        assert st["last_still"]["bytes"] == len(still.jpeg) and st["streaming"]


async def test_rate_limit_one_still_per_interval_for_the_model_only() -> None:
    async with running(CameraBench(), min_interval_s=60) as (cam, bus, sink):
        await until(lambda: cam.health.state == "running", bus)
        await cam.send("tool")
        with pytest.raises(StillRefused, match="rate limited") as e:
            await cam.send("tool")
        assert e.value.refusal.code == "rate_limited"
        assert len(sink.images) == 1
        await cam.take("edgectl")                     # framing checks are not rate-limited
        assert cam.status()["stills"] == {"sent": 1, "saved": 1, "refused": 1, "failed": 0}


async def test_mute_blocks_capture_and_stops_the_stream() -> None:
    bench = CameraBench()
    async with running(bench) as (cam, bus, sink):
        await until(lambda: cam.health.state == "running", bus)
        await cam.take("edgectl")
        assert cam.status()["streaming"]
        captures = bench.captures
        bus.publish(MuteChanged(True, 1000))
        await until(lambda: not cam.status()["streaming"], bus)
        for reason in ("tool", "edgectl"):
            with pytest.raises(StillRefused, match="privacy: the device is muted"):
                await (cam.send(reason) if reason == "tool" else cam.take(reason))
        bus.publish(WakeWordDetected("okay_nabu", 0.9))          # no automatic still either
        assert bench.captures == captures and sink.images == []
        assert cam.status()["state"] == "muted"
        bus.publish(MuteChanged(False, 1000))
        await cam.send("tool")
        assert len(sink.images) == 1


async def test_absent_camera_is_retried_and_found_when_plugged_in() -> None:
    bench = CameraBench(cameras=[])
    async with running(bench) as (cam, bus, _):
        devices = bus.subscribe(DeviceChanged)
        await until(lambda: cam.health.state == "retrying", bus)
        st = cam.status()
        assert st["unavailable"] == "absent" and "no camera number 0" in st["detail"]
        with pytest.raises(StillRefused, match=r"^no camera: ") as e:
            await cam.send("tool")
        assert e.value.refusal.code == "absent"
        bench.cameras.append({"Model": "uvc", "Id": "/base/usb@1/uvc", "Num": 0})
        await until(lambda: cam.health.state == "running", bus)
        ev = devices.get_nowait()
        assert ev.role == "camera" and ev.device == "picamera2 #0"
        assert (await cam.take("edgectl")).jpeg


async def test_unplugged_mid_stream_then_replugged_recovers() -> None:
    bench = CameraBench()
    async with running(bench) as (cam, bus, sink):
        await until(lambda: cam.health.state == "running", bus)
        await cam.take("edgectl")
        bench.unplug(0)
        with pytest.raises(StillRefused, match=r"camera failed: .*capture failed: TimeoutError"):
            await cam.take("edgectl")
        await until(lambda: cam.health.state == "retrying"
                    and cam.status()["unavailable"] == "absent", bus)
        assert bench.opened[0].is_open is False              # the failed handle was closed
        bench.replug(0)
        await until(lambda: cam.health.state == "running", bus)
        assert cam.status()["reopens"] == 1
        assert (await cam.send("tool")).jpeg == sink.images[-1]


async def test_camera_held_by_another_program_is_busy() -> None:
    bench = CameraBench(held={0})
    async with running(bench) as (cam, bus, _):
        await until(lambda: cam.status()["unavailable"] == "busy", bus)
        assert "Device or resource busy" in cam.status()["detail"]      # the owner's detail
        with pytest.raises(StillRefused, match="camera busy: another program is using the camera"):
            await cam.send("tool")


async def test_missing_picamera2_says_what_to_install() -> None:
    bus = EventBus()
    cam = Camera(CameraSettings(enabled=True, retry_base_s=0.05), bus)  # the real import
    task = asyncio.create_task(cam.run())
    try:
        await until(lambda: cam.health.error is not None, bus)
        assert "sudo apt install python3-picamera2" in cam.status()["detail"]
        assert cam.status()["unavailable"] == "absent"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_disabled_is_never_opened_and_enabling_opens_without_restart() -> None:
    bench = CameraBench()
    async with running(bench, enabled=False) as (cam, bus, _):
        with pytest.raises(StillRefused, match="privacy: the camera is switched off"):
            await cam.send("tool")
        assert bench.opened == [] and cam.status()["state"] == "disabled"
        assert cam.apply_settings(cam.settings.model_copy(update={"enabled": True})) == []
        await until(lambda: cam.health.state == "running", bus)
        cam.apply_settings(cam.settings.model_copy(update={"enabled": False}))
        await until(lambda: cam.health.state == "stopped", bus)
        assert not bench.opened[-1].is_open                  # privacy: closed at once


async def test_idle_camera_stops_streaming() -> None:
    async with running(CameraBench(), idle_stop_s=0.01) as (cam, bus, _):
        await until(lambda: cam.health.state == "running", bus)
        await cam.take("edgectl")
        await until(lambda: not cam.status()["streaming"], bus)
        assert (await cam.take("edgectl")).jpeg                # starts again on demand


async def test_automatic_stills_on_wake_and_speech_start() -> None:
    for send_on, event in (("wake", WakeWordDetected("okay_nabu", 0.9)),
                           ("speech_start", VoiceStateChanged("listening", "idle"))):
        async with running(CameraBench(), send_on=send_on) as (cam, bus, sink):
            await until(lambda: cam.health.state == "running", bus)
            stills = bus.subscribe(CameraStill)
            bus.publish(event)
            ev = await asyncio.wait_for(stills.get(), WAIT_S)
            assert (ev.reason, ev.outcome) == (send_on, "sent") and len(sink.images) == 1
            bus.publish(WakeWordDetected("okay_nabu", 0.9) if send_on == "speech_start"
                        else VoiceStateChanged("listening", "idle"))   # the other: ignored
            assert stills.empty()


async def test_look_tool_answers_with_what_was_sent_or_why_not() -> None:
    async with running(CameraBench(), min_interval_s=60) as (cam, bus, sink):
        await until(lambda: cam.health.state == "running", bus)
        tools = ToolRegistry(8.0)
        tools.register(make_look_tool(cam))
        ok = await tools.call("look", {})
        assert ok.ok and ok.response["sent"] is True
        assert (ok.response["width"], ok.response["height"]) == (768, 768)
        assert ok.response["bytes"] == len(sink.images[0])
        again = await tools.call("look", {})
        assert not again.ok and again.response["error"].startswith("look: rate limited")
        bad = await tools.call("look", {"zoom": 2})
        assert not bad.ok and "invalid arguments" in bad.response["error"]
    async with running(CameraBench()) as (cam, bus, sink):
        await until(lambda: cam.health.state == "running", bus)
        sink.connected = False
        tools = ToolRegistry(8.0)
        tools.register(make_look_tool(cam))
        lost = await tools.call("look", {})
        assert lost.response == {"error": "look: not sent: the Live session is not connected"}
        assert cam.status()["stills"]["failed"] == 1
