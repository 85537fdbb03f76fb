"""The look tool end to end: the real google-genai SDK, edged's Live session and camera
component (picamera2 double), against edged_testing.sim - call -> capture -> image on the wire
-> tool response -> answer, the rate limit, mute, a missing camera, and the simulator's image
rules."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from google import genai
from google.genai import errors, types

from edged.camera.component import Camera
from edged.camera.jpeg import jpeg_size
from edged.config import Settings
from edged.device_tools import device_tools
from edged.events import LIVE_EVENTS, DeviceChanged, EventBus, MuteChanged, Transcription
from edged.live import LiveSession
from edged.live.reply import Reply as Answer
from edged.live.reply import stream_reply
from edged_testing.camera import CameraBench
from edged_testing.sim import LiveSimulator, Reply, Rule, Scenario, ToolCall

WAIT_S = 60.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


class Tap:
    """The Live session as the camera's sink, keeping a copy of every still it was given."""

    def __init__(self, live: LiveSession) -> None:
        self.live = live
        self.stills: list[bytes] = []

    async def send_image(self, jpeg: bytes) -> bool:
        self.stills.append(jpeg)
        return await self.live.send_image(jpeg)


@dataclass
class Rig:
    sim: LiveSimulator
    bus: EventBus
    live: LiveSession
    camera: Camera
    bench: CameraBench
    tap: Tap

    async def ask(self, text: str) -> Answer:
        q = self.bus.subscribe(*LIVE_EVENTS)
        try:
            await self.live.send_text(text)
            async for item in stream_reply(q, WAIT_S):
                if isinstance(item, Answer):
                    return item
        finally:
            self.bus.unsubscribe(q)
        raise AssertionError("no answer")


@contextlib.asynccontextmanager
async def rig(scenario: Scenario, bench: CameraBench | None = None, modality: str = "TEXT",
              **camera: Any) -> AsyncIterator[Rig]:
    bench = bench if bench is not None else CameraBench()
    async with LiveSimulator(scenario) as sim:
        settings = Settings.model_validate({
            "gemini": {"base_url": sim.base_url, "ca_file": str(sim.ca_file),
                       "api_key": "test-key", "response_modality": modality},
            "camera": {"enabled": True, "retry_base_s": 0.05, "retry_cap_s": 0.2, **camera},
            "knowledge": {"index_dir": "/nonexistent"},
        })
        bus = EventBus()
        cam = Camera(settings.camera, bus, factory=bench.factory)
        live = LiveSession(settings, device_tools(settings, cam), bus)
        tap = Tap(live)
        cam.attach(tap)
        tasks = [asyncio.create_task(live.run()), asyncio.create_task(cam.run())]
        try:
            await live.wait_ready(WAIT_S)
            yield Rig(sim, bus, live, cam, bench, tap)
        finally:
            await live.close()
            tasks[1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def camera_state(r: Rig, state: str) -> None:
    """Wait until the camera thread reports ``state`` (it publishes DeviceChanged)."""
    q = r.bus.subscribe(DeviceChanged)
    try:
        async with asyncio.timeout(WAIT_S):
            while r.camera.health.state != state:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(q.get(), 0.2)
    finally:
        r.bus.unsubscribe(q)


SCRIPTED = Scenario.from_dict({"rules": [{
    "match": "delante", "actions": [
        {"do": "tool_call", "name": "look"},
        {"do": "reply", "text": "Recibí {image_count} imagen de {image_size}, {image_bytes} bytes.",
         "on_tool_error": "Sin imagen: {tool_error}"}]}]})


async def test_look_end_to_end_image_on_the_wire_between_call_and_response() -> None:
    async with rig(SCRIPTED) as r:
        await camera_state(r, "running")
        answer = await r.ask("¿Qué tengo delante?")
        [still] = r.tap.stills
        [image] = r.sim.images()
        assert image.data == still and image.mime_type == "image/jpeg"    # the bytes, unchanged
        assert jpeg_size(image.data) == (768, 768)
        conn = r.sim.connections[0]
        call_id = next(m["toolCall"]["functionCalls"][0]["id"] for m in conn.sent
                       if "toolCall" in m)
        assert image.pending_calls == (call_id,)          # after the call, before its response
        kinds = [next(iter(m)) for m in conn.messages]
        assert kinds.index("realtimeInput") < kinds.index("toolResponse")
        response = next(m["toolResponse"]["functionResponses"][0] for m in conn.messages
                        if "toolResponse" in m)
        assert response["response"]["sent"] is True
        assert response["response"]["bytes"] == len(still)
        assert answer.text == f"Recibí 1 imagen de 768x768, {len(still)} bytes."
        assert answer.tools == ["look"]
        # the setup declared the tool and the media resolution
        setup = conn.setup or {}
        assert setup["generationConfig"]["mediaResolution"] == "MEDIA_RESOLUTION_MEDIUM"
        names = [d["name"] for t in setup["tools"] for d in t["functionDeclarations"]]
        assert "look" in names


async def test_rate_limit_second_look_is_refused_and_nothing_more_is_sent() -> None:
    twice = Scenario(rules=[Rule(match="delante", actions=[
        ToolCall("look"), ToolCall("look"), Reply("Segunda: {tool_error}")])])
    async with rig(twice, min_interval_s=60) as r:
        await camera_state(r, "running")
        answer = await r.ask("¿Qué tengo delante?")
        assert len(r.sim.images()) == 1
        assert answer.text.startswith("Segunda: look: rate limited: a still was sent")
        assert r.sim.errors == []


async def test_mute_blocks_capture_and_the_model_hears_why() -> None:
    async with rig(SCRIPTED) as r:
        await camera_state(r, "running")
        r.bus.publish(MuteChanged(True, 1000))
        answer = await r.ask("¿Qué tengo delante?")
        assert answer.text.startswith("Sin imagen: look: privacy: the device is muted")
        assert r.sim.images() == [] and r.bench.captures == 0


async def test_camera_absent_gets_a_spoken_no_camera_answer_not_silence() -> None:
    """AUDIO, the default assistant: the tool error becomes a spoken sentence."""
    async with rig(Scenario.default(), bench=CameraBench(cameras=[]), modality="AUDIO") as r:
        await camera_state(r, "retrying")
        heard = r.bus.subscribe(Transcription)
        answer = await r.ask("¿Qué tengo delante?")
        assert len(answer.audio) > 24000 * 2 // 2          # more than half a second of speech
        words = ""
        while not heard.empty():
            ev = heard.get_nowait()
            words += ev.text if ev.role == "model" else ""
        assert words == "No puedo verlo: look: no camera: no camera is connected to the device"
        assert r.sim.images() == []


# --- the simulator's image rules, with the raw SDK ------------------------------------------

async def _send_image(sim: LiveSimulator, blob: types.Blob, via: str = "video") -> None:
    client = genai.Client(api_key="k", http_options=types.HttpOptions(
        base_url=sim.base_url, async_client_args={"ssl": sim.client_ssl_context()}))
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    with contextlib.suppress(errors.APIError, websockets.ConnectionClosed):
        async with client.aio.live.connect(model="gemini-3.8-live", config=config) as session:
            await session.send_realtime_input(**{via: blob})
            await sim.wait_for(lambda s: s.connections[0].closed_by is not None
                               or bool(s.connections[0].images), 15)


@pytest.mark.parametrize(("mime", "data", "reason"), [
    ("image/gif", b"GIF89a....", "unsupported mime type 'image/gif'"),
    ("image/jpeg", b"\x89PNG\r\n\x1a\n....", "image data is not a valid image/jpeg"),
    ("image/jpeg", b"\xff\xd8\xff" + bytes(2000), "exceeds the 1000 byte limit"),
])
async def test_simulator_rejects_bad_images_as_the_api_does(
        mime: str, data: bytes, reason: str) -> None:
    async with LiveSimulator(Scenario(max_image_bytes=1000)) as sim:
        await _send_image(sim, types.Blob(data=data, mime_type=mime))
        await sim.wait_for(lambda s: s.connections[0].closed_by is not None, 15)
        rec = sim.connections[0]
        assert rec.close_code == 1007 and reason in (rec.close_reason or "")
        assert rec.images == []


async def test_simulator_accepts_jpeg_and_png_also_as_legacy_media_chunks() -> None:
    png = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (320).to_bytes(4, "big")
           + (240).to_bytes(4, "big") + bytes(20))
    async with LiveSimulator() as sim:
        await _send_image(sim, types.Blob(data=png, mime_type="image/png"), via="media")
        [image] = sim.images()
        assert (image.mime_type, image.size, image.turn) == ("image/png", "320x240", 0)
