"""Typed messages that flow between edged's components.

Components never reach into each other: capture hands ``AudioFrame``s to the VAD gate, the gate
emits ``Speech*`` messages that the voice loop forwards to the Live session, and the Live
session publishes ``LiveEvent``s (model audio, transcripts, interruptions, tool activity,
connection changes) that playback, status, metrics and ``edgectl events`` consume. Keeping
these small frozen dataclasses in one module is what lets each component be tested alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


def now() -> float:
    """Monotonic timestamp used for every latency measurement in edged."""
    return time.monotonic()


# --- audio in ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One capture period of 16 kHz mono S16_LE from the microphone."""

    pcm: bytes
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The VAD gate decided a user turn began; ``t`` is the estimated speech onset."""

    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """A batch (40-100 ms) of speech to uplink; the first ones carry the pre-roll."""

    pcm: bytes
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """End of the user turn (silence, or the maximum turn length was reached)."""

    t: float = field(default_factory=now)
    reason: Literal["silence", "max_length", "muted"] = "silence"


SpeechEvent = SpeechStarted | SpeechAudio | SpeechEnded


# --- Live session out ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelAudio:
    """Reply audio: 24 kHz mono S16_LE, arriving in bursts faster than real time."""

    pcm: bytes
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class ModelText:
    text: str
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class Transcription:
    role: Literal["user", "model"]
    text: str
    finished: bool = False
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The server stopped generating because the user spoke: flush playback now."""

    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class GenerationComplete:
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class TurnComplete:
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    id: str
    name: str
    args: dict[str, Any]
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    id: str
    name: str
    ok: bool
    duration_s: float
    error: str | None = None
    result: dict[str, Any] | None = None
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class SessionChanged:
    """The supervisor's connection state changed (connecting/ready/resuming/backoff/...)."""

    state: str
    detail: str = ""
    t: float = field(default_factory=now)


LiveEvent = (
    ModelAudio | ModelText | Transcription | Interrupted | GenerationComplete | TurnComplete
    | ToolCallStarted | ToolCallFinished | SessionChanged
)


class LiveLink(Protocol):
    """What the voice loop, chat and the control socket need from the Live session."""

    async def send_activity_start(self) -> None: ...
    async def send_activity_end(self) -> None: ...
    async def send_audio(self, pcm16k: bytes) -> None: ...
    async def send_image(self, jpeg: bytes) -> None: ...
    async def send_text(self, text: str) -> None: ...
