"""Typed events between edged's components, and the one bus that carries them.

Components never reach into each other. Inside the voice path, capture hands ``AudioFrame``s to
the speech gate and the gate emits ``Speech*`` messages (hundreds per second, so they are passed
directly, not over the bus). Everything else goes over one :class:`EventBus`: the Live session
publishes model audio, transcripts, interruptions, tool activity and connection changes; the
voice loop publishes its state and every finished turn; the daemon publishes health, mute,
reload and feedback. Consumers subscribe instead of polling:

* playback (the voice loop) and ``edgectl ask`` / ``edged chat`` read Live events from a queue,
* the status document, metrics, the turn log, journald and ``edgectl events`` are *observers*
  (called as each event is published) or queue subscribers.

Each event owns its wire form: :meth:`Event.to_json` is what ``edgectl events`` streams (``None``
for events that are never streamed, such as raw audio). Keeping the small frozen dataclasses in
one module is what lets each component be tested alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

log = logging.getLogger(__name__)


def now() -> float:
    """Monotonic timestamp used for every latency measurement in edged."""
    return time.monotonic()


def _ms(a: float | None, b: float | None) -> int | None:
    return None if a is None or b is None else round((b - a) * 1000)


# --- audio in (voice path only, never on the bus) ---------------------------------------


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One capture period of 16 kHz mono S16_LE from the microphone.

    ``fresh``: the first period after the device was (re)opened - what came before it is not
    continuous with it (a turn in progress is over, the gate warms up again). ``speech``: the
    front end's speech probability for this frame (frames after the front end are exactly one
    speech-detector frame each) and ``level`` the dBFS of what the detector heard (echo
    cancelled, before noise suppression); ``None`` before the front end.
    """

    pcm: bytes
    t: float = field(default_factory=now)
    fresh: bool = False
    speech: float | None = None
    level: float | None = None


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
    reason: Literal["silence", "max_length", "muted", "device"] = "silence"


SpeechEvent = SpeechStarted | SpeechAudio | SpeechEnded


# --- the bus ----------------------------------------------------------------------------


class Event:
    """Base of everything published on the :class:`EventBus`."""

    __slots__ = ()
    type: ClassVar[str] = "event"

    def to_json(self) -> dict[str, Any] | None:
        """The ``edgectl events`` form (without ``ts``, which the streamer adds); ``None`` =
        not streamed."""
        return {"type": self.type}


Observer = Callable[[Event], None]


class EventBus:
    """Fan-out of typed events to queue subscribers and synchronous observers.

    Publishing never blocks: a queue subscriber that falls ``maxsize`` events behind loses its
    *oldest* events (counted in :attr:`dropped`) - for playback the newest audio is the one worth
    having, and ``edgectl events`` must never slow the Live session. Observers run inline, in
    publication order, on the event loop; one that raises is logged and the others still run.
    """

    def __init__(self) -> None:
        self._queues: dict[asyncio.Queue[Any], tuple[type[Event], ...]] = {}
        self._observers: list[tuple[Observer, tuple[type[Event], ...]]] = []
        self.dropped = 0

    def subscribe(self, *types: type[Event], maxsize: int = 1000) -> asyncio.Queue[Any]:
        """A queue that receives every event of ``types`` (all events if none) from now on."""
        q: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._queues[q] = types
        return q

    def unsubscribe(self, q: asyncio.Queue[Any]) -> None:
        self._queues.pop(q, None)

    def observe(self, observer: Observer, *types: type[Event]) -> None:
        """Call ``observer(event)`` for every event of ``types`` (all if none) as it is
        published; for cheap bookkeeping (metrics, logs, the turn log), never for I/O."""
        self._observers.append((observer, types))

    def publish(self, event: Event) -> None:
        for observer, types in self._observers:
            if not types or isinstance(event, types):
                try:
                    observer(event)
                except Exception:
                    log.exception("event observer %r failed on %s", observer, event.type)
        for q, types in self._queues.items():
            if types and not isinstance(event, types):
                continue
            if q.full():
                q.get_nowait()
                self.dropped += 1
            q.put_nowait(event)


# --- Live session out -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelAudio(Event):
    """Reply audio: 24 kHz mono S16_LE, arriving in bursts faster than real time."""

    type: ClassVar[str] = "model_audio"
    pcm: bytes
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any] | None:
        return None       # audio is never streamed to edgectl


@dataclass(frozen=True, slots=True)
class ModelText(Event):
    type: ClassVar[str] = "model_text"
    text: str
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "text": self.text}


@dataclass(frozen=True, slots=True)
class Transcription(Event):
    type: ClassVar[str] = "transcription"
    role: Literal["user", "model"]
    text: str
    finished: bool = False
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "role": self.role, "text": self.text,
                "finished": self.finished}


@dataclass(frozen=True, slots=True)
class Interrupted(Event):
    """The server stopped generating because the user spoke: flush playback now."""

    type: ClassVar[str] = "interrupted"
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class GenerationComplete(Event):
    type: ClassVar[str] = "generation_complete"
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class TurnComplete(Event):
    type: ClassVar[str] = "turn_complete"
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class ToolCallStarted(Event):
    type: ClassVar[str] = "tool_call"
    id: str
    name: str
    args: dict[str, Any]
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "name": self.name}


@dataclass(frozen=True, slots=True)
class ToolCallFinished(Event):
    type: ClassVar[str] = "tool_result"
    id: str
    name: str
    ok: bool
    duration_s: float
    error: str | None = None
    result: dict[str, Any] | None = None
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "name": self.name, "ok": self.ok,
                "duration_s": round(self.duration_s, 4), "error": self.error}


@dataclass(frozen=True, slots=True)
class SessionChanged(Event):
    """The supervisor's connection state changed (connecting/ready/resuming/backoff/...)."""

    type: ClassVar[str] = "session"
    state: str
    detail: str = ""
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "state": self.state, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Reconnecting(Event):
    """A Live connection ended and the supervisor will connect again after ``delay_s``.

    ``cause`` is the close code as text ("1011") or what ended it without one ("goaway",
    "reconfigure", "stall", "network", "config", "error"); metrics count reconnects by it.
    """

    type: ClassVar[str] = "reconnect"
    cause: str
    reason: str
    delay_s: float
    resuming: bool
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "cause": self.cause, "reason": self.reason,
                "delay_s": round(self.delay_s, 3), "resuming": self.resuming}


@dataclass(frozen=True, slots=True)
class LinkChanged(Event):
    """The network to the Live endpoint was found unreachable (``offline``) or usable again
    (``online``, with how long it was down). Published by the Live supervisor's reachability
    probe after a network-level failure; what a "can't reach the cloud" / "back" cue observes.
    """

    type: ClassVar[str] = "link"
    state: Literal["offline", "online"]
    detail: str = ""
    down_s: float | None = None
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "state": self.state, "detail": self.detail,
                "down_s": None if self.down_s is None else round(self.down_s, 3)}


@dataclass(frozen=True, slots=True)
class TurnFailed(Event):
    """A typed question was given up without an answer (sent ``sends`` times, or the setup
    was rejected); whoever asked it gets ``reason`` instead of an answer."""

    type: ClassVar[str] = "turn_failed"
    reason: str
    sends: int
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "reason": self.reason, "sends": self.sends}


LiveEvent = (
    ModelAudio | ModelText | Transcription | Interrupted | GenerationComplete | TurnComplete
    | ToolCallStarted | ToolCallFinished | SessionChanged | Reconnecting | LinkChanged
    | TurnFailed
)
LIVE_EVENTS: tuple[type[Event], ...] = (
    ModelAudio, ModelText, Transcription, Interrupted, GenerationComplete, TurnComplete,
    ToolCallStarted, ToolCallFinished, SessionChanged, Reconnecting, LinkChanged, TurnFailed)


def reply_chunk(event: Event) -> str | None:
    """The words of the model's reply an event carries, if any.

    The reply text is the model's text parts in TEXT modality and its output transcription in
    AUDIO modality (a turn carries one or the other), so consumers that show or store the
    reply - ``edgectl ask``, ``edged chat``, the history the session re-seeds, the voice turn
    record - take both from here.
    """
    if isinstance(event, ModelText) or (isinstance(event, Transcription)
                                        and event.role == "model"):
        return event.text
    return None


# --- voice loop out ---------------------------------------------------------------------


VoiceState = Literal["idle", "listening", "thinking", "speaking", "interrupted", "follow_up"]
# What let a turn go up: any speech (vad mode), the wake word, `edgectl listen`, speech in the
# follow-up window after a reply, speech over the reply, or a typed question.
TurnTrigger = Literal["vad", "wake", "listen", "follow_up", "barge_in", "text"]
_turn_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class VoiceStateChanged(Event):
    """What an LED ring shows: idle / listening / thinking / speaking / interrupted /
    follow_up (listening without the wake word, after a reply)."""

    type: ClassVar[str] = "state"
    state: VoiceState
    previous: VoiceState
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "state": self.state, "previous": self.previous}


@dataclass(frozen=True, slots=True)
class WakeWordDetected(Event):
    """The on-device wake word fired; a conversation opens (``model``: which wake word)."""

    type: ClassVar[str] = "wake"
    model: str
    probability: float
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "model": self.model,
                "probability": round(self.probability, 3)}


@dataclass(frozen=True, slots=True)
class CuePlayed(Event):
    """The device played one of its own sounds (:mod:`edged.audio.cues`): ``cue`` which one,
    ``reason`` why (``wake``, ``listen``, ``question_offline``, ``went_offline``, ``online``,
    ``no_reply``)."""

    type: ClassVar[str] = "cue"
    cue: str
    reason: str
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "cue": self.cue, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DeviceChanged(Event):
    """A device (microphone, speaker, camera) opened, failed or is being retried."""

    type: ClassVar[str] = "device"
    role: Literal["capture", "playback", "camera"]
    device: str
    state: str                      # stopped | opening | running | retrying
    error: str | None = None
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "role": self.role, "device": self.device,
                "state": self.state, "error": self.error}


@dataclass(frozen=True, slots=True)
class CameraStill(Event):
    """A still was asked for: sent to the model, saved for ``edgectl look``, or refused.

    ``reason`` is what asked (``tool``, ``wake``, ``speech_start``, ``edgectl``); ``outcome``
    is ``sent``, ``saved``, ``refused`` (muted, rate limit, disabled, busy, absent) or
    ``failed`` (the camera or the link failed); ``detail`` says why for the last two.
    """

    type: ClassVar[str] = "still"
    reason: str
    outcome: Literal["sent", "saved", "refused", "failed"]
    bytes: int = 0
    width: int | None = None
    height: int | None = None
    capture_ms: float | None = None
    detail: str = ""
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "reason": self.reason,
                               "outcome": self.outcome}
        if self.bytes:
            out.update(bytes=self.bytes, size=f"{self.width}x{self.height}",
                       capture_ms=self.capture_ms)
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(slots=True)
class TurnRecord:
    """One user turn (spoken or typed) and the reply to it; times are :func:`now`.

    For a typed turn (``edgectl ask``) ``speech_end`` is when the question was sent and
    ``first_reply_audio`` when the first reply (text or audio) arrived.
    """

    id: int = field(default_factory=lambda: next(_turn_ids))
    kind: Literal["voice", "text"] = "voice"
    mode: Literal["local", "server", "text"] = "local"
    trigger: TurnTrigger | None = None
    wall_time: float = field(default_factory=time.time)
    speech_start: float | None = None
    speech_end: float | None = None
    end_reason: str | None = None
    activity_end_sent: float | None = None
    first_reply_audio: float | None = None
    first_audio_written: float | None = None
    playback_end: float | None = None
    interrupted: Literal["server", "barge_in"] | None = None
    interrupted_at: float | None = None
    playback_stopped: float | None = None
    uplinked_bytes: int = 0
    reply_bytes: int = 0
    user_text: str = ""
    model_text: str = ""
    tools: list[str] = field(default_factory=list)
    outcome: str = "open"

    def latencies(self) -> dict[str, int | None]:
        """Milliseconds between the stages; ``None`` where a stage did not happen."""
        return {
            "end_to_activity_end_ms": _ms(self.speech_end, self.activity_end_sent),
            "end_to_first_reply_ms": _ms(self.speech_end, self.first_reply_audio),
            "reply_to_speaker_ms": _ms(self.first_reply_audio, self.first_audio_written),
            "end_to_speaker_ms": _ms(self.speech_end, self.first_audio_written),
            "interrupt_to_stop_ms": _ms(self.interrupted_at, self.playback_stopped),
            "speech_ms": _ms(self.speech_start, self.speech_end),
        }

    @property
    def latency_s(self) -> float | None:
        """The latency the user feels: end of their input to the reply reaching them."""
        lat = self.latencies()
        ms = lat["end_to_speaker_ms"]
        if ms is None:
            ms = lat["end_to_first_reply_ms"]
        return None if ms is None else ms / 1000

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "mode": self.mode, "trigger": self.trigger,
                "wall_time": round(self.wall_time, 3), "outcome": self.outcome,
                "end_reason": self.end_reason, "interrupted": self.interrupted,
                "uplinked_bytes": self.uplinked_bytes, "reply_bytes": self.reply_bytes,
                "user_text": self.user_text, "model_text": self.model_text,
                "tools": list(self.tools), **self.latencies()}


@dataclass(frozen=True, slots=True)
class TurnFinished(Event):
    """A turn ended (played, interrupted, no reply, ...); carries its full record."""

    type: ClassVar[str] = "turn"
    record: TurnRecord
    t: float = field(default_factory=now)

    def summary(self) -> dict[str, Any]:
        """The short form kept in the turn log, shown by ``edgectl status`` and stored with
        ``edgectl feedback``."""
        r = self.record
        lat = r.latency_s
        return {"kind": r.kind, "trigger": r.trigger, "ts": r.wall_time, "user": r.user_text,
                "model": r.model_text,
                "tools": list(r.tools), "outcome": r.outcome,
                "interrupted": r.interrupted is not None,
                "latency_s": None if lat is None else round(lat, 4)}

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **self.summary()}


# --- daemon ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComponentChanged(Event):
    """A supervised component's health changed (``ok``, ``degraded``, ``failed``, ...)."""

    type: ClassVar[str] = "component"
    name: str
    state: str
    detail: str = ""
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "state": self.state,
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class HealthChanged(Event):
    type: ClassVar[str] = "health"
    health: Literal["healthy", "degraded"]
    problems: tuple[str, ...]
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "health": self.health, "problems": list(self.problems)}


@dataclass(frozen=True, slots=True)
class MuteChanged(Event):
    type: ClassVar[str] = "mute"
    muted: bool
    by_uid: int | None = None
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "muted": self.muted}


@dataclass(frozen=True, slots=True)
class ConfigReloaded(Event):
    """A reload finished: ``ok`` False means the old config (or part of it) stayed."""

    type: ClassVar[str] = "reload"
    ok: bool
    version: str
    error: str | None = None
    restart_needed: tuple[str, ...] = ()
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "ok": self.ok, "version": self.version}
        if self.error is not None:
            out["error"] = self.error
        if self.restart_needed:
            out["restart_needed"] = list(self.restart_needed)
        return out


@dataclass(frozen=True, slots=True)
class FeedbackGiven(Event):
    type: ClassVar[str] = "feedback"
    rating: str
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "rating": self.rating}


@dataclass(frozen=True, slots=True)
class OtaChanged(Event):
    """An OTA bundle was rejected, put on trial, committed or rolled back (``loaded``: the
    daemon started with OTA ``current`` in effect). ``version``: the bundle concerned;
    ``current``: the version in effect afterwards (``None``: no OTA config)."""

    type: ClassVar[str] = "ota"
    action: Literal["loaded", "rejected", "trial", "committed", "rolled_back"]
    version: int | None
    current: int | None
    pending: bool
    reason: str = ""
    t: float = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "action": self.action, "version": self.version,
                "current": self.current, "pending": self.pending, "reason": self.reason}


class LiveLink(Protocol):
    """What the voice loop, chat and the control socket need from the Live session."""

    async def send_activity_start(self) -> None: ...
    async def send_activity_end(self) -> None: ...
    async def send_audio(self, pcm16k: bytes) -> None: ...
    async def send_image(self, jpeg: bytes) -> bool: ...
    async def send_text(self, text: str) -> None: ...
