"""The whole voice path on one machine: virtual ALSA devices + Live simulator + the real classes.

Shared by the wire-level tests, ``scripts/demo_voice.py`` and ``scripts/bench_voice.py`` so all
three run exactly what the daemon runs - :class:`~edged.live.session.LiveSession` (real
google-genai SDK over TLS) and :class:`~edged.audio.voice.VoiceLoop` (real ALSA API) - with only
the outside world replaced: the microphone is a paced FIFO source
(:class:`~edged.audio.virtual.PacedSource`), the speaker a paced FIFO sink, Gemini the
simulator. ``speed`` > 1 runs the room faster than real time (tests); latency figures need 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.audio.virtual import PacedSink, PacedSource, VirtualAlsa
from edged.audio.voice import TurnRecord, VoiceLoop
from edged.config import Settings
from edged.events import LiveEvent
from edged.live.session import LiveSession
from edged.sim import LiveSimulator, Scenario
from edged.tools import Tool, ToolRegistry

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
    mic: PacedSource
    speaker: PacedSink
    sim: LiveSimulator
    settings: Settings
    live: LiveSession
    voice: VoiceLoop
    events: asyncio.Queue[LiveEvent]      # a second subscription, for observers
    turns: asyncio.Queue[TurnRecord]

    async def next_turn(self, timeout: float) -> TurnRecord:  # noqa: ASYNC109
        return await asyncio.wait_for(self.turns.get(), timeout)

    def wire(self) -> list[dict[str, Any]]:
        """The ``realtimeInput`` bodies the simulator received, in order."""
        return [m["realtimeInput"] for _, m in self.sim.messages("realtimeInput")]


def rig_settings(sim: LiveSimulator, mode: str = "local",
                 extra: dict[str, Any] | None = None) -> Settings:
    data: dict[str, Any] = {
        "gemini": {"base_url": sim.base_url, "ca_file": str(sim.ca_file),
                   "api_key": "sim-key-not-a-secret", "response_modality": "AUDIO"},
        "session": {"turn_detection": mode, "backoff_base_s": 0.05, "backoff_cap_s": 0.5},
        "audio": {"capture_device": MIC, "playback_device": SPEAKER,
                  "retry_base_s": 0.05, "retry_cap_s": 0.5},
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return Settings.model_validate(data)


@contextlib.asynccontextmanager
async def voice_rig(directory: Path, scenario: Scenario | None = None, *, mode: str = "local",
                    speed: float = 1.0, extra: dict[str, Any] | None = None,
                    tools: list[Tool] | None = None) -> AsyncIterator[VoiceRig]:
    """Start everything; yields once the Live session is connected and capture is running."""
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    va = VirtualAlsa(directory)
    try:
        mic = va.add_paced_capture(MIC, period_ms=(extra or {}).get("audio", {})
                                   .get("period_ms", 20), speed=speed)
        speaker = va.add_paced_playback(SPEAKER, speed=speed)
        va.activate()
        async with LiveSimulator(scenario or Scenario.default()) as sim:
            settings = rig_settings(sim, mode, extra)
            registry = ToolRegistry(settings.tools.timeout_s)
            for tool in tools or []:
                registry.register(tool)
            live = LiveSession(settings, registry)
            voice = VoiceLoop(settings, live, live.subscribe())
            rig = VoiceRig(va, mic, speaker, sim, settings, live, voice, live.subscribe(),
                           voice.subscribe_turns())
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
