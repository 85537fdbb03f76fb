"""The voice loop: microphone -> speech gate -> Live session -> speaker, and the turn state.

Three independent parts, each with its own recovery loop: :class:`Capture` and
:class:`Playback` (ALSA threads, retry with backoff) and the Live session (owned by the
daemon, reached only through :class:`LiveLink` and its event queue). This module wires them
and keeps the one small state machine ``edgectl status`` shows:

``idle`` -(speech confirmed)-> ``listening`` -(activityEnd sent)-> ``thinking``
-(first reply audio)-> ``speaking`` -(played out)-> ``idle``; ``interrupted`` while playback is
being flushed (server ``interrupted`` or local barge-in), then ``listening`` or ``idle``.

Local turn detection (``session.turn_detection = "local"``): the gate's ``SpeechStarted`` /
``SpeechAudio`` / ``SpeechEnded`` become ``activityStart`` / audio / ``activityEnd``; nothing is
uplinked outside a turn. A turn confirmed while the device speaks is a barge-in: playback is
flushed at once, and reply audio still in flight from the old answer is discarded until the
new turn's ``activityEnd`` is sent. Server mode (the baseline) streams every frame and leaves
turn-taking and interruptions to the server; the gate then only timestamps turns.

Every turn gets a :class:`~edged.events.TurnRecord` with monotonic timestamps; the finished
record is logged as one INFO line with its latencies, kept in a deque for status and published
as :class:`~edged.events.TurnFinished`. State changes are published as
:class:`~edged.events.VoiceStateChanged` (what an LED ring shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from typing import Any

from edged.audio.capture import Capture
from edged.audio.device import DeviceHealth
from edged.audio.playback import Playback, PlaybackEvent
from edged.audio.vad import VadGate
from edged.config import Settings
from edged.events import (
    DeviceChanged,
    EventBus,
    GenerationComplete,
    Interrupted,
    LiveLink,
    ModelAudio,
    SessionChanged,
    SpeechAudio,
    SpeechEnded,
    SpeechEvent,
    SpeechStarted,
    ToolCallStarted,
    Transcription,
    TurnComplete,
    TurnFinished,
    TurnRecord,
    VoiceState,
    VoiceStateChanged,
    now,
    reply_chunk,
)
from edged.formats import CAPTURE_RATE, bytes_per_ms

log = logging.getLogger(__name__)

RECENT_TURNS = 20
# What the voice loop consumes from the Live session.
_LIVE_INPUT = (ModelAudio, Interrupted, TurnComplete, GenerationComplete, Transcription,
               ToolCallStarted, SessionChanged)


class VoiceLoop:
    """Capture, gate, uplink, playback and turn bookkeeping for one Live session."""

    def __init__(self, settings: Settings, live: LiveLink, bus: EventBus) -> None:
        self.settings = settings
        self.live = live
        self.bus = bus
        self.live_events = bus.subscribe(*_LIVE_INPUT)
        self.mode = settings.session.turn_detection
        self.capture = Capture(settings.audio)
        self.playback = Playback(settings.audio)
        self.gate = VadGate(settings.vad, settings.echo)
        self.state: VoiceState = "idle"
        self.muted = False
        self.session_state = "unknown"
        self.turns: deque[TurnRecord] = deque(maxlen=RECENT_TURNS)
        self._turn: TurnRecord | None = None        # being spoken by the user
        self._reply: TurnRecord | None = None       # whose reply is awaited or playing
        self._discard_reply_audio = False
        self._last_played = 0.0
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stream = bytearray()
        self.send_errors = 0

    # --- public API -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every part until cancelled; each part recovers from its own failures."""
        log.info("voice: %s turn detection, echo policy %s, capture %s, playback %s",
                 self.mode, self.settings.echo.policy, self.settings.audio.capture_device,
                 self.settings.audio.playback_device)
        loop = asyncio.get_running_loop()
        self.capture.health.listener = functools.partial(self._device_changed, loop, "capture")
        self.playback.health.listener = functools.partial(self._device_changed, loop,
                                                          "playback")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.capture.run(), name="voice-capture")
            tg.create_task(self.playback.run(), name="voice-playback")
            tg.create_task(self._uplink(), name="voice-uplink")
            tg.create_task(self._sender(), name="voice-sender")
            tg.create_task(self._downlink(), name="voice-downlink")
            tg.create_task(self._playback_events(), name="voice-playback-events")
            tg.create_task(self._reply_watchdog(), name="voice-reply-watchdog")

    def _device_changed(self, loop: asyncio.AbstractEventLoop, role: str,
                        h: DeviceHealth) -> None:
        """DeviceHealth listener; runs in the device's thread, publishes on the loop."""
        ev = DeviceChanged(role, h.device, h.state, h.error)  # type: ignore[arg-type]
        with contextlib.suppress(RuntimeError):     # the loop is closing: nobody listens
            loop.call_soon_threadsafe(self.bus.publish, ev)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "mode": self.mode,
            "muted": self.muted,
            "session": self.session_state,
            "capture": self.capture.status(),
            "playback": self.playback.status(),
            "vad": {"mode": self.mode, "gate": self.gate.state,
                    "aggressiveness": self.settings.vad.aggressiveness,
                    **self.gate.stats.as_dict()},
            "echo": {"policy": self.settings.echo.policy,
                     "bargein_min_ms": self.settings.echo.bargein_min_ms,
                     "bargein_min_dbfs": self.settings.echo.bargein_min_dbfs},
            "send_errors": self.send_errors,
            "turns": [t.as_dict() for t in self.turns],
        }

    def mute(self) -> None:
        """Stop listening: an open turn is closed (activityEnd) and the mic is ignored."""
        if self.muted:
            return
        self.muted = True
        self._handle_speech(self.gate.end_turn("muted", now()))
        self._stream.clear()
        log.info("voice: muted")

    def unmute(self) -> None:
        if not self.muted:
            return
        self.muted = False
        self.gate.reset()
        log.info("voice: unmuted")

    def apply_settings(self, settings: Settings) -> list[str]:
        """Live-apply VAD and echo settings; returns the keys (devices, turn mode) that take
        effect only after a restart."""
        needs_restart = [
            key for key, old, new in (
                ("audio", self.settings.audio, settings.audio),
                ("session.turn_detection", self.settings.session.turn_detection,
                 settings.session.turn_detection))
            if old != new]
        if needs_restart:
            log.warning("voice: %s changed; takes effect after a restart of edged",
                        ", ".join(needs_restart))
        self.settings = settings.model_copy(update={"audio": self.settings.audio,
                                                    "session": self.settings.session})
        self.gate.configure(settings.vad, settings.echo)
        log.info("voice: applied vad/echo settings (echo policy %s)", settings.echo.policy)
        return needs_restart

    # --- uplink: mic -> gate -> Live ----------------------------------------------------------

    def _device_speaking(self) -> bool:
        if self.playback.playing:
            return True
        return now() - self._last_played < self.settings.echo.tail_ms / 1000

    async def _uplink(self) -> None:
        async for frame in self.capture.frames():
            if frame.fresh:
                # The microphone (re)opened: a turn in progress was cut off with it, and what
                # comes now is not continuous with what came before. A late frame is not a
                # reason (a busy machine delivers frames late, not lost).
                self._handle_speech(self.gate.end_turn("device", frame.t))
                self.gate.reset()
            if self.muted:
                continue
            events = self.gate.feed(frame, playing=self._device_speaking())
            if self.mode == "server":
                self._stream += frame.pcm
                if len(self._stream) >= self.settings.vad.batch_ms * bytes_per_ms(
                        CAPTURE_RATE):
                    self._outbox.put_nowait(("audio", bytes(self._stream)))
                    self._stream.clear()
            self._handle_speech(events)

    def _handle_speech(self, events: list[SpeechEvent]) -> None:
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self._on_speech_started(ev)
            elif isinstance(ev, SpeechAudio):
                if self._turn is not None:
                    self._turn.uplinked_bytes += len(ev.pcm)
                if self.mode == "local":
                    self._outbox.put_nowait(("audio", ev.pcm))
            elif isinstance(ev, SpeechEnded):
                self._on_speech_ended(ev)

    def _on_speech_started(self, ev: SpeechStarted) -> None:
        if self.mode == "local" and self._device_speaking():
            self._barge_in(ev.t)
        if self._turn is not None:         # e.g. a turn cut by max_length never got its end
            self._finish(self._turn, "abandoned")
        self._turn = TurnRecord(mode=self.mode, speech_start=ev.t)
        if self.mode == "local":
            self._discard_reply_audio = True
            self._set_state("listening")
            self._outbox.put_nowait(("start", None))

    def _on_speech_ended(self, ev: SpeechEnded) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            # server mode: the reply began before our gate saw the end (server VAD was first)
            r = self._reply
            if r is not None and r.speech_start is not None and r.speech_end is None:
                r.speech_end, r.end_reason = ev.t, ev.reason
            return
        turn.speech_end = ev.t
        turn.end_reason = ev.reason
        if self._reply is not None and self._reply is not turn:
            self._finish(self._reply, "superseded")
        self._reply = turn
        if self.mode == "local":
            self._outbox.put_nowait(("end", turn))
            self._set_state("thinking")

    def _barge_in(self, t: float) -> None:
        reply = self._reply
        if reply is not None:
            reply.interrupted = "barge_in"
            reply.interrupted_at = now()
        log.info("voice: barge-in (speech began %.0f ms ago), flushing playback",
                 (now() - t) * 1000)
        self._stop_playback(reply)

    def _stop_playback(self, reply: TurnRecord | None) -> None:
        """Flush; the reply is finished when the writer reports the drop (or now if idle)."""
        if self.playback.flush():
            self._set_state("interrupted")
        elif reply is not None:
            reply.playback_stopped = reply.playback_end = now()
            self._finish(reply, "interrupted")

    async def _sender(self) -> None:
        """The only task that awaits the Live link, so a slow send never stalls capture."""
        while True:
            kind, arg = await self._outbox.get()
            try:
                if kind == "start":
                    await self.live.send_activity_start()
                elif kind == "audio":
                    await self.live.send_audio(arg)
                else:
                    await self.live.send_activity_end()
                    arg.activity_end_sent = now()
                    if self._reply is arg:
                        self._discard_reply_audio = False
            except asyncio.CancelledError:
                raise
            except Exception as e:      # the session supervisor reconnects; we keep going
                self.send_errors += 1
                log.warning("voice: could not send %s to Live: %s", kind, e)
                if kind == "end" and self._reply is arg:
                    self._discard_reply_audio = False

    # --- downlink: Live -> speaker -------------------------------------------------------------

    async def _downlink(self) -> None:
        while True:
            ev = await self.live_events.get()
            if isinstance(ev, ModelAudio):
                self._on_model_audio(ev)
            elif isinstance(ev, Interrupted):
                self._on_interrupted(ev)
            elif isinstance(ev, TurnComplete | GenerationComplete):
                self.playback.reply_done()
                if self._reply is not None and self._reply.first_reply_audio is None \
                        and isinstance(ev, TurnComplete) and self.state == "thinking":
                    self._finish(self._reply, "no_audio")
                    self._set_state("idle")
            elif (words := reply_chunk(ev)) is not None:
                if self._reply is not None:
                    self._reply.model_text += words
            elif isinstance(ev, Transcription):       # the user's words
                target = self._turn or self._reply
                if target is not None:
                    target.user_text += ev.text
            elif isinstance(ev, ToolCallStarted):
                if self._reply is not None:
                    self._reply.tools.append(ev.name)
            elif isinstance(ev, SessionChanged):
                self.session_state = ev.state

    def _on_model_audio(self, ev: ModelAudio) -> None:
        if self._discard_reply_audio and self.mode == "local":
            return
        if self._reply is None:
            # server mode: the server ended the turn before our gate did; otherwise a reply
            # to text (edgectl ask) that no spoken turn asked for
            self._reply = self._turn or TurnRecord(mode=self.mode)
            self._turn = None
        if self._reply.first_reply_audio is None:
            self._reply.first_reply_audio = ev.t
        self._reply.reply_bytes += len(ev.pcm)
        self.playback.enqueue(ev.pcm)
        if self.state in ("idle", "thinking"):
            self._set_state("speaking")

    def _on_interrupted(self, ev: Interrupted) -> None:
        reply = self._reply
        if reply is None or reply.interrupted is not None:
            self.playback.flush()          # nothing of ours is playing, or already stopping
            return
        reply.interrupted = "server"
        reply.interrupted_at = ev.t
        log.info("voice: server interrupted the reply, flushing playback")
        self._stop_playback(reply)
        if self.state != "interrupted":
            self._set_state("listening" if self._turn else "idle")

    async def _playback_events(self) -> None:
        while True:
            ev: PlaybackEvent = await self.playback.events.get()
            reply = self._reply
            if ev.kind == "first_write":
                if reply is not None and reply.first_audio_written is None:
                    reply.first_audio_written = ev.t
            elif ev.kind == "finished":
                self._last_played = ev.t
                if reply is not None:
                    reply.playback_end = ev.t
                    self._finish(reply, "played")
                if self.state in ("speaking", "interrupted"):
                    self._set_state("listening" if self._turn else "idle")
            else:   # flushed
                self._last_played = ev.t
                if reply is not None and reply.interrupted is not None:
                    reply.playback_stopped = ev.t
                    reply.playback_end = ev.t
                    self._finish(reply, "interrupted")
                if self.state == "interrupted":
                    self._set_state("listening" if self._turn else "idle")

    async def _reply_watchdog(self) -> None:
        """Never stay 'thinking' forever: a reply that does not start within the session's
        stall bound (the link dropped mid-turn, the server lost the turn) ends the turn."""
        limit = self.settings.session.stall_timeout_s + 5.0
        while True:
            await asyncio.sleep(1.0)
            reply = self._reply
            if self.state == "thinking" and reply is not None \
                    and reply.first_reply_audio is None and reply.activity_end_sent is not None \
                    and now() - reply.activity_end_sent > limit:
                log.warning("voice: no reply %.0f s after the end of turn %d; back to idle",
                            limit, reply.id)
                self._finish(reply, "no_reply")
                self._set_state("idle")

    # --- bookkeeping ----------------------------------------------------------------------------

    def _set_state(self, state: VoiceState) -> None:
        if state != self.state:
            log.debug("voice: %s -> %s", self.state, state)
            previous, self.state = self.state, state
            self.bus.publish(VoiceStateChanged(state, previous))

    def _finish(self, turn: TurnRecord, outcome: str) -> None:
        if turn.outcome != "open":
            return
        turn.outcome = outcome
        if self._reply is turn:
            self._reply = None
        self.turns.append(turn)
        lat = turn.latencies()
        log.info("turn %d %s (%s): %s", turn.id, outcome, turn.mode,
                 " ".join(f"{k.removesuffix('_ms')}={v}ms" for k, v in lat.items()
                          if v is not None) or "no timings")
        if turn.speech_start is not None:     # else: the spoken answer to a typed question,
            self.bus.publish(TurnFinished(turn))    # which `ask` reports as its own turn
