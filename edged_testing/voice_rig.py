"""The whole voice path on one machine: virtual ALSA devices + Live simulator + the real classes.

Shared by the wire-level tests, ``scripts/demo_voice.py`` and ``scripts/bench_voice.py`` so all
three run exactly what the daemon runs - :class:`~edged.live.session.LiveSession` (real
google-genai SDK over TLS) and :class:`~edged.audio.voice.VoiceLoop` (real ALSA API) - with only
the outside world replaced: the microphone and the speaker are one virtual sound card
(:class:`~edged_testing.alsa.Codec`, paced at real time; its room can echo the speaker back and
add noise), Gemini is the simulator. ``speed`` > 1 runs the room faster than real time (tests);
latency figures need 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.audio.voice import VoiceLoop
from edged.config import Settings
from edged.events import LIVE_EVENTS, EventBus, LiveEvent, TurnFinished, TurnRecord
from edged.live.session import LiveSession
from edged.tools import Tool, ToolRegistry
from edged_testing.alsa import Codec, Speaker, VirtualAlsa
from edged_testing.netproxy import NetProxy
from edged_testing.sim import LiveSimulator, Scenario

MIC = "edged_mic"
SPEAKER = "edged_speaker"


async def poll_until(cond: Callable[[], bool], timeout: float,  # noqa: ASYNC109
                     every: float = 0.01) -> None:
    """Wait until ``cond()`` holds; TimeoutError after ``timeout`` s. For conditions owned by
    threads or other processes (devices, the simulator) that have no asyncio event to await."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - state lives in ALSA threads / a child process
            await asyncio.sleep(every)


@dataclass
class VoiceRig:
    va: VirtualAlsa
    mic: Codec            # the virtual sound card: play(), set_room()
    speaker: Speaker      # what it played
    sim: LiveSimulator
    settings: Settings
    live: LiveSession
    voice: VoiceLoop
    events: asyncio.Queue[LiveEvent]      # a second subscription, for observers
    turns: asyncio.Queue[TurnFinished]
    net: NetProxy | None = None           # between the session and the simulator (net=True)

    async def next_turn(self, timeout: float) -> TurnRecord:  # noqa: ASYNC109
        return (await asyncio.wait_for(self.turns.get(), timeout)).record

    def wire(self) -> list[dict[str, Any]]:
        """The ``realtimeInput`` bodies the simulator received, in order."""
        return [m["realtimeInput"] for _, m in self.sim.messages("realtimeInput")]


def bracketed(wire: list[dict[str, Any]]) -> list[bytes]:
    """Check activityStart/activityEnd bracket every turn and no audio is outside (local turn
    detection); return the audio uplinked in each turn, in order."""
    turns: list[bytes] = []
    inside = False
    for body in wire:
        if "activityStart" in body:
            assert not inside, "activityStart inside an open turn"
            inside = True
            turns.append(b"")
        elif "activityEnd" in body:
            assert inside, "activityEnd without activityStart"
            inside = False
        elif "audio" in body:
            assert inside, "audio sent outside a turn in local-VAD mode"
            turns[-1] += body["audio"]["data"]
    assert not inside, "last turn never ended"
    return turns


def rig_settings(sim: LiveSimulator, mode: str = "local",
                 extra: dict[str, Any] | None = None) -> Settings:
    return Settings.model_validate(rig_settings_data(sim, mode, extra))


def rig_settings_data(sim: LiveSimulator, mode: str = "local",
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings (as plain data, so a child process can get them) for the rig's devices."""
    data: dict[str, Any] = {
        "gemini": {"base_url": sim.base_url, "ca_file": str(sim.ca_file),
                   "api_key": "sim-key-not-a-secret", "response_modality": "AUDIO"},
        "session": {"turn_detection": mode, "backoff_base_s": 0.05, "backoff_cap_s": 0.5},
        # any speech opens a turn unless a test asks for the wake word
        "listen": {"mode": "vad"},
        # byte-exact uplink (the wire tests compare bytes) unless a test turns the DSP on
        "echo": {"cancellation": False},
        "audio": {"capture_device": MIC, "playback_device": SPEAKER,
                  "retry_base_s": 0.05, "retry_cap_s": 0.5, "noise_suppression": False},
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return data


@contextlib.asynccontextmanager
async def voice_rig(directory: Path, scenario: Scenario | None = None, *, mode: str = "local",
                    speed: float = 1.0, extra: dict[str, Any] | None = None,
                    tools: list[Tool] | None = None,
                    bus: EventBus | None = None, net: bool = False) -> AsyncIterator[VoiceRig]:
    """Start everything; yields once the Live session is connected and capture is running.
    ``bus``: the event bus to use (a component made before the rig, e.g. the camera, is on
    it already); ``net``: reach the simulator through a :class:`NetProxy` (``rig.net``) so a
    test can take the network away."""
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    va = VirtualAlsa(directory)
    try:
        mic = va.add_codec(MIC, SPEAKER, speed=speed,
                           period_ms=(extra or {}).get("audio", {}).get("period_ms", 20))
        speaker = mic.speaker
        va.activate()
        async with contextlib.AsyncExitStack() as stack:
            sim = await stack.enter_async_context(LiveSimulator(scenario or Scenario.default()))
            proxy = (await stack.enter_async_context(NetProxy("127.0.0.1", sim.port))
                     if net else None)
            settings = rig_settings(sim, mode, extra)
            if proxy is not None:
                settings = settings.model_copy(update={"gemini": settings.gemini.model_copy(
                    update={"base_url": proxy.base_url})})
            registry = ToolRegistry(settings.tools.timeout_s)
            for tool in tools or []:
                registry.register(tool)
            live = LiveSession(settings, registry, bus)
            voice = VoiceLoop(settings, live, live.bus)
            rig = VoiceRig(va, mic, speaker, sim, settings, live, voice,
                           live.bus.subscribe(*LIVE_EVENTS), live.bus.subscribe(TurnFinished),
                           proxy)
            live_task = asyncio.create_task(live.run(), name="rig-live")
            voice_task = asyncio.create_task(voice.run(), name="rig-voice")
            try:
                await live.wait_ready(15)
                await poll_until(lambda: voice.capture.health.state == "running"
                                 and voice.playback.health.state == "running", 15)
                yield rig
            finally:
                voice_task.cancel()
                await asyncio.gather(voice_task, return_exceptions=True)
                await live.close()
                await asyncio.wait_for(live_task, 15)
    finally:
        va.close()


# --- the device side alone in a process (benchmarks) -----------------------------------------


async def _device_side(settings: Settings) -> None:
    live = LiveSession(settings, ToolRegistry(settings.tools.timeout_s))
    voice = VoiceLoop(settings, live, live.bus)
    turns = live.bus.subscribe(TurnFinished)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(live.run()), asyncio.create_task(voice.run())]
    await live.wait_ready(15)
    await poll_until(lambda: voice.capture.health.state == "running"
                     and voice.playback.health.state == "running", 15)
    print(json.dumps({"ready": True}), flush=True)
    while not stop.is_set():
        getter = asyncio.ensure_future(turns.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            print(json.dumps({"turn": dataclasses.asdict(getter.result().record)}), flush=True)
        for f in (getter, stopper):
            f.cancel()
    print(json.dumps({"status": voice.status(), "live": live.status()}, default=str),
          flush=True)
    tasks[1].cancel()
    await asyncio.gather(tasks[1], return_exceptions=True)
    await live.close()
    await asyncio.wait_for(tasks[0], 15)


def device_side_main(argv: list[str] | None = None) -> None:
    """``python -m edged_testing.voice_rig SETTINGS_JSON``: VoiceLoop + LiveSession only, printing
    one JSON line per finished turn (monotonic timestamps: comparable across processes)."""
    args = sys.argv[1:] if argv is None else argv
    asyncio.run(_device_side(Settings.model_validate(json.loads(args[0]))))


if __name__ == "__main__":
    device_side_main()
