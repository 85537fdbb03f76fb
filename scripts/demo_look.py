#!/usr/bin/env python3
"""Demo section "look": «¿qué tengo delante?» spoken into the microphone; the model calls the
camera tool and the still that was sent is shown.

Everything the daemon runs is real - VoiceLoop (virtual ALSA microphone fed at real time with
espeak-ng speech, webrtcvad, speaker), LiveSession (the real google-genai SDK, TLS), the Camera
component and the ``look`` tool - except the camera sensor (edged_testing.camera's picamera2
double, which photographs a shop shelf with a price sign) and Gemini (edged_testing.sim, whose
assistant calls ``look`` and answers from the image that reached it; it does not interpret
images).

Part 1: the question, the tool call, the still on the wire (saved as demo-out/look-sent.jpg,
with a terminal thumbnail), the spoken answer. Part 2: the camera is unplugged; the same
question gets a spoken "I cannot see" answer instead of silence. Exit 0 when both behaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

from PIL import Image

from edged.camera.component import Camera
from edged.camera.tool import make_look_tool
from edged.config import CameraSettings
from edged.events import (
    CameraStill,
    DeviceChanged,
    Event,
    EventBus,
    ToolCallFinished,
    ToolCallStarted,
    Transcription,
    TurnRecord,
)
from edged.formats import REPLY_RATE, seconds, write_wav
from edged_testing import material as m
from edged_testing.camera import CameraBench
from edged_testing.sim import Scenario
from edged_testing.voice_rig import VoiceRig, voice_rig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
Q_LOOK = "¿Qué tengo delante?"
WAIT_S = 120.0
SHADES = " .:-=+*#%@"


class DemoFailed(Exception):
    pass


def thumbnail(jpeg: bytes, cols: int = 48) -> str:
    """The still as terminal art (characters for brightness), to see it was a real photo."""
    img = Image.open(io.BytesIO(jpeg)).convert("L")
    rows = max(1, round(cols * img.height / img.width / 2))
    small = img.resize((cols, rows))
    px = small.tobytes()                       # one byte per pixel in mode "L"
    lines = ["".join(SHADES[p * (len(SHADES) - 1) // 255] for p in px[r * cols:(r + 1) * cols])
             for r in range(rows)]
    return "\n".join("    " + line for line in lines)


async def narrate(rig: VoiceRig) -> None:
    pending = ""
    while True:
        ev = await rig.events.get()
        if isinstance(ev, Transcription) and ev.role == "user":
            pending += ev.text
            if ev.finished:
                print(f"  user > {pending.strip()}", flush=True)
                pending = ""
        elif isinstance(ev, ToolCallStarted):
            print(f"  tool > {ev.name}({ev.args})", flush=True)
        elif isinstance(ev, ToolCallFinished):
            r = ev.result or {}
            print(f"  tool < {ev.name} " + (f"sent {r.get('width')}x{r.get('height')}, "
                  f"{r.get('bytes')} bytes, captured in {r.get('capture_ms')} ms"
                  if ev.ok else f"error: {ev.error}"), flush=True)


async def ask(workdir: Path, bench: CameraBench, title: str, wav: Path) -> tuple[
        TurnRecord, VoiceRig]:
    print(f"\n--- {title} ---", flush=True)
    question = m.silence(600) + m.say(Q_LOOK, "es") + m.silence(1200)
    bus = EventBus()          # the camera exists before the session that declares its tool
    camera = Camera(CameraSettings(enabled=True, retry_base_s=0.05, retry_cap_s=0.5), bus,
                    factory=bench.factory)
    seen: set[tuple[str, str | None]] = set()

    def device(ev: Event) -> None:
        assert isinstance(ev, DeviceChanged)
        if ev.role == "camera" and ev.state in ("running", "retrying") \
                and (ev.state, ev.error) not in seen:
            seen.add((ev.state, ev.error))
            print(f"  camera: {ev.state}{' (' + ev.error + ')' if ev.error else ''}", flush=True)

    bus.observe(device, DeviceChanged)
    async with contextlib.AsyncExitStack() as stack:
        rig = await stack.enter_async_context(voice_rig(
            workdir, Scenario.default(transcripts=[Q_LOOK]), speed=1.0,
            tools=[make_look_tool(camera)], extra={"camera": {"enabled": True}}, bus=bus))
        camera.attach(rig.live)
        cam_task = asyncio.create_task(camera.run())
        stack.push_async_callback(lambda: asyncio.gather(cam_task, return_exceptions=True))
        stack.callback(cam_task.cancel)
        stills = bus.subscribe(CameraStill)
        narrator = asyncio.create_task(narrate(rig))
        try:
            rig.mic.play(question)
            turn = await rig.next_turn(WAIT_S)
        finally:
            narrator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await narrator
        print(f"  model> {turn.model_text.strip()}", flush=True)
        write_wav(wav, rig.speaker.data(), REPLY_RATE)
        print(f"  speaker: {seconds(len(rig.speaker.data()), REPLY_RATE):.1f} s written to "
              f"{wav.relative_to(ROOT)}", flush=True)
        while not stills.empty():
            ev = stills.get_nowait()
            print(f"  still: {ev.reason} -> {ev.outcome}"
                  f"{' ' + ev.detail if ev.detail else ''}", flush=True)
        return turn, rig


async def main_async() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-demo-look-") as d:
        workdir = Path(d)
        turn, rig = await ask(workdir / "a", CameraBench(),
                              "«¿qué tengo delante?» with the camera on", OUT / "speaker-look.wav")
        images = rig.sim.images()
        if turn.tools != ["look"] or len(images) != 1:
            raise DemoFailed(f"expected one look call and one image, got {turn.tools} and "
                             f"{len(images)} images")
        image = images[0]
        sent = OUT / "look-sent.jpg"
        sent.write_bytes(image.data)
        conn = rig.sim.connections[0]
        call = next(x["toolCall"]["functionCalls"][0]["id"] for x in conn.sent if "toolCall" in x)
        if image.pending_calls != (call,):
            raise DemoFailed("the image did not arrive between the tool call and its response")
        print(f"  wire: toolCall {call} -> realtimeInput.video {image.mime_type} {image.size}, "
              f"{len(image.data)} bytes (while the call was pending) -> toolResponse -> answer")
        print(f"  the still that was sent ({sent.relative_to(ROOT)}):")
        print(thumbnail(image.data), flush=True)
        if "Veo la foto" not in turn.model_text:
            raise DemoFailed(f"the answer did not come from the image: {turn.model_text!r}")

        unplugged = CameraBench(cameras=[])
        turn, rig = await ask(workdir / "b", unplugged, "the same question, camera unplugged",
                              OUT / "speaker-no-camera.wav")
        if rig.sim.images() or "No puedo verlo" not in turn.model_text or not turn.reply_bytes:
            raise DemoFailed(f"expected a spoken 'cannot see' answer and no image, got "
                             f"{turn.model_text!r}")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  journal: %(levelname)s %(message)s")
    try:
        asyncio.run(main_async())
    except DemoFailed as e:
        print(f"demo_look: FAILED: {e}", file=sys.stderr)
        return 1
    print("\ndemo_look: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
