"""The voice loop: microphone -> front end -> speech gate -> Live session -> speaker.

Three independent parts, each with its own recovery loop: :class:`Capture` and
:class:`Playback` (ALSA threads, retry with backoff) and the Live session (owned by the
daemon, reached only through :class:`LiveLink` and the event bus). The front end (echo
cancellation, speech detection, the wake word: :mod:`edged.audio.frontend`) runs in the capture
thread. This module wires them, decides when the device is *addressed*, and keeps the one small
state machine ``edgectl status`` and an LED ring show:

``idle`` -(wake word / speech / ``edgectl listen``)-> ``listening`` -(activityEnd sent)->
``thinking`` -(first reply audio)-> ``speaking`` -(played out)-> ``follow_up`` (wake and manual
modes: speech continues the conversation without the wake word) -> ``idle``; ``interrupted``
while playback is being flushed.

**Who may open a turn** (``listen.mode``): ``vad`` - any speech the gate confirms; ``wake`` -
speech within ``question_timeout_s`` after the wake word or ``edgectl listen``, within the
follow-up window after a reply, or over the device's own reply (a barge-in, unless
``listen.barge_in = "wake_word"``); ``manual`` - the same without the wake word. Nothing is
uplinked for speech that may not open a turn: in ``wake`` mode an idle room sends nothing.

**Local turn detection** (``session.turn_detection = "local"``): an accepted turn becomes
``activityStart`` / audio / ``activityEnd``. A turn confirmed while the device speaks is a
barge-in: playback is flushed at once. Server mode (the baseline) streams every frame while a
conversation is open and leaves turn-taking and interruptions to the server.

**Which reply an event belongs to.** Gemini answers turns in order, and after a barge-in the
old turn's late ``interrupted``/``turnComplete`` and any audio still in flight arrive before the
new turn's reply. The loop counts the replies it is owed (one per ``activityEnd``); anything
that arrives while more than one is owed belongs to an older turn and is discarded.

**What the wearer hears besides replies** (``listen.cues``, each published as
:class:`~edged.events.CuePlayed`): ``wake`` when the wake word or ``edgectl listen`` opens a
turn; ``offline`` when a question ends (or is in flight) while the Live supervisor reports the
network unreachable (:class:`~edged.events.LinkChanged`), so it gets a sound within a second
instead of silence; ``back`` when the network returns after the wearer heard ``offline``;
``error`` when a reply never came. Typed questions (``edgectl ask``, ``edged chat``) never
play a cue.

Every turn gets a :class:`~edged.events.TurnRecord` with monotonic timestamps; the finished
record is logged as one INFO line, kept for status and published as
:class:`~edged.events.TurnFinished`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from typing import Any

from edged.audio import cues
from edged.audio.capture import Capture
from edged.audio.device import DeviceHealth
from edged.audio.frontend import EchoReference, FrontEnd, WakeHit, WakeWord
from edged.audio.playback import Playback, PlaybackEvent
from edged.audio.vad import EchoPolicy, VadGate, barge_in_policy
from edged.config import Settings
from edged.events import (
    AudioFrame,
    CuePlayed,
    DeviceChanged,
    EventBus,
    GenerationComplete,
    Interrupted,
    LinkChanged,
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
    TurnTrigger,
    VoiceState,
    VoiceStateChanged,
    WakeWordDetected,
    now,
    reply_chunk,
)
from edged.formats import CAPTURE_RATE, bytes_per_ms

log = logging.getLogger(__name__)

RECENT_TURNS = 20
LISTEN_PREROLL_S = 0.3     # `edgectl listen`: keep what was said just before the button
# What the voice loop consumes from the Live session.
_LIVE_INPUT = (ModelAudio, Interrupted, TurnComplete, GenerationComplete, Transcription,
               ToolCallStarted, SessionChanged, LinkChanged)


def make_wake_word(settings: Settings) -> WakeWord | None:
    """The wake word detector ``listen.mode`` needs (only ``wake`` does)."""
    ls = settings.listen
    if ls.mode != "wake":
        return None
    return WakeWord(ls.wake_model, ls.wake_cutoff, ls.wake_refractory_s)


class VoiceLoop:
    """Capture, front end, gate, uplink, playback and turn bookkeeping for one Live session."""

    def __init__(self, settings: Settings, live: LiveLink, bus: EventBus) -> None:
        self.settings = settings
        self.live = live
        self.bus = bus
        self.live_events = bus.subscribe(*_LIVE_INPUT)
        self.mode = settings.session.turn_detection
        self.reference = EchoReference() if settings.echo.cancellation else None
        self.frontend = FrontEnd(settings, self.reference, make_wake_word(settings))
        self.capture = Capture(settings.audio, self.frontend.process)
        self.playback = Playback(settings.audio, self.reference)
        self.gate = VadGate(settings.vad, settings.echo)
        self.state: VoiceState = "idle"
        self.muted = False
        self.session_state = "unknown"
        self.turns: deque[TurnRecord] = deque(maxlen=RECENT_TURNS)
        self.wakes = 0
        self.wakes_ignored = 0                      # heard over its own uncancelled voice
        self.last_wake: float | None = None            # wall time
        self.send_errors = 0
        self.heard_bytes = 0                        # captured, after the front end
        self.sent_bytes = 0                         # of those, queued for the Live session
        self._turn: TurnRecord | None = None        # being spoken by the user
        self._reply: TurnRecord | None = None       # whose reply is awaited or playing
        self._accepting = False                     # the gate's current turn may go up
        self._opened_by: TurnTrigger | None = None  # wake / listen, while awaiting a question
        self._awaiting_until: float | None = None
        self._follow_up_until: float | None = None
        self._window_timer: asyncio.TimerHandle | None = None
        self._discard_reply_audio = False
        self._owed = 0                               # replies owed for activityEnds sent
        self._last_played = 0.0
        self._offline = False                        # LinkChanged: the cloud is unreachable
        self._told_offline = False                   # the user heard the offline cue
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stream = bytearray()

    # --- public API -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every part until cancelled; each part recovers from its own failures."""
        log.info("voice: listen mode %s, %s turn detection, %s VAD, echo cancellation %s, "
                 "capture %s, playback %s", self.settings.listen.mode, self.mode,
                 self.settings.vad.engine, "on" if self.reference else "off",
                 self.settings.audio.capture_device, self.settings.audio.playback_device)
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
        fe, echo = self.frontend, self.frontend.echo
        t = now()
        return {
            "state": self.state,
            "mode": self.mode,
            "muted": self.muted,
            "session": self.session_state,
            "capture": self.capture.status(),
            "playback": self.playback.status(),
            "listen": {
                "mode": self.settings.listen.mode,
                "wake_model": fe.wake.name if fe.wake else None,
                "wakes": self.wakes,
                "wakes_ignored": self.wakes_ignored,
                "last_wake": self.last_wake,
                "awaiting_question_s": (round(self._awaiting_until - t, 1)
                                        if self._awaiting_until else None),
                "follow_up_s": (round(self._follow_up_until - t, 1)
                                if self._follow_up_until else None),
                "barge_in": self.settings.listen.barge_in},
            "vad": {"engine": fe.detector.name, "gate": self.gate.state,
                    "threshold": self.settings.vad.threshold,
                    "aggressiveness": self.settings.vad.aggressiveness,
                    **self.gate.stats.as_dict(),
                    # what really went up: the gate confirms speech in every mode, but in wake
                    # and manual mode only addressed speech is sent
                    "gated_ratio": round(self.sent_bytes / max(1, self.heard_bytes), 3)},
            "echo": {"cancellation": echo is not None,
                     "state": echo.state if echo else "off",
                     "erle_db": round(echo.erle_db, 1) if echo and echo.erle_db else None,
                     "failing": bool(echo and echo.failing),
                     "fallback_policy": self.settings.echo.policy,
                     "bargein_ms": self.settings.echo.bargein_ms},
            "frontend": {"cpu_per_audio_s": (round(fe.cpu_s / fe.audio_s, 4)
                                             if fe.audio_s else None),
                         "noise_suppression": self.settings.audio.noise_suppression},
            "send_errors": self.send_errors,
            "turns": [t.as_dict() for t in self.turns],
        }

    def listen(self) -> dict[str, Any]:
        """``edgectl listen``: open a turn now, in any mode (a button, a script)."""
        if self.muted:
            return {"listening": False, "reason": "muted"}
        if self._turn is not None:
            return {"listening": True, "reason": "already in a turn"}
        if self._device_speaking():
            self._barge_in(now())
        self._cue("wake", "listen")
        self._open("listen", now() - LISTEN_PREROLL_S)
        return {"listening": True, "question_timeout_s": self.settings.listen.question_timeout_s}

    def mute(self) -> None:
        """Stop listening: an open turn is closed (activityEnd) and the mic is ignored."""
        if self.muted:
            return
        self.muted = True
        self._handle_speech(self.gate.end_turn("muted", now()))
        self._close_windows()
        self._stream.clear()
        log.info("voice: muted")

    def unmute(self) -> None:
        if not self.muted:
            return
        self.muted = False
        self.gate.reset()
        log.info("voice: unmuted")

    def apply_settings(self, settings: Settings) -> list[str]:
        """Live-apply VAD, echo and listening settings; returns the keys (devices, turn mode,
        echo cancellation) that take effect only after a restart."""
        needs_restart = [
            key for key, old, new in (
                ("audio", self.settings.audio.model_dump(exclude={"noise_suppression"}),
                 settings.audio.model_dump(exclude={"noise_suppression"})),
                ("session.turn_detection", self.settings.session.turn_detection,
                 settings.session.turn_detection),
                ("echo.cancellation", self.settings.echo.cancellation,
                 settings.echo.cancellation))
            if old != new]
        if needs_restart:
            log.warning("voice: %s changed; takes effect after a restart of edged",
                        ", ".join(needs_restart))
        wake = self.frontend.wake
        if settings.listen.model_dump(include={"mode", "wake_model", "wake_cutoff",
                                               "wake_refractory_s"}) != \
                self.settings.listen.model_dump(include={"mode", "wake_model", "wake_cutoff",
                                                         "wake_refractory_s"}):
            wake = make_wake_word(settings)
        self.settings = settings.model_copy(update={
            "session": self.settings.session,
            "audio": self.settings.audio.model_copy(
                update={"noise_suppression": settings.audio.noise_suppression}),
            "echo": settings.echo.model_copy(
                update={"cancellation": self.settings.echo.cancellation})})
        self.frontend.configure(self.settings, wake)
        self.gate.configure(settings.vad, self.settings.echo)
        if settings.listen.mode == "vad":
            self._close_windows()
        log.info("voice: applied listen/vad/echo settings (mode %s, %s VAD)",
                 settings.listen.mode, settings.vad.engine)
        return needs_restart

    # --- who may speak to the device --------------------------------------------------------

    def _accepts(self, t: float) -> TurnTrigger | None:
        """Why a turn whose speech began at ``t`` may go up, or ``None`` if it may not."""
        ls = self.settings.listen
        if self._device_speaking() and (ls.mode == "vad" or ls.barge_in == "speech"):
            return "barge_in"
        if self._awaiting_until is not None and t <= self._awaiting_until:
            return self._opened_by       # before "vad": `edgectl listen` counts as such there too
        if ls.mode == "vad":
            return "vad"
        if self._follow_up_until is not None and t <= self._follow_up_until:
            return "follow_up"
        return None

    def _conversation_open(self) -> bool:
        """Server turn detection: stream only while the device is being talked to."""
        return (self.settings.listen.mode == "vad" or self._awaiting_until is not None
                or self._follow_up_until is not None or self.state != "idle")

    def _open(self, trigger: TurnTrigger, since: float) -> None:
        """Wake word or ``edgectl listen``: accept a turn that starts within the question
        timeout, with audio from ``since`` on."""
        self._opened_by = trigger
        self._awaiting_until = now() + self.settings.listen.question_timeout_s
        self._follow_up_until = None
        self._schedule_window_end(self._awaiting_until)
        self._set_state("listening")
        self._handle_speech(self.gate.open_at(since, self._device_speaking(),
                                              self._echo_policy()))

    def _open_follow_up(self) -> None:
        ls = self.settings.listen
        if ls.mode == "vad" or ls.follow_up_s <= 0 or self.muted:
            self._set_state("idle")
            return
        self._follow_up_until = now() + ls.follow_up_s
        self._schedule_window_end(self._follow_up_until)
        self._set_state("follow_up")

    def _schedule_window_end(self, at: float) -> None:
        if self._window_timer is not None:
            self._window_timer.cancel()
        loop = asyncio.get_running_loop()
        self._window_timer = loop.call_later(max(0.0, at - now()), self._window_ended)

    def _window_ended(self) -> None:
        t = now()
        if self._awaiting_until is not None and t >= self._awaiting_until:
            self._awaiting_until = self._opened_by = None
        if self._follow_up_until is not None and t >= self._follow_up_until:
            self._follow_up_until = None
        if (self._turn is None and self._awaiting_until is None
                and self._follow_up_until is None and self.state in ("listening", "follow_up")):
            log.info("voice: nobody spoke; back to idle")
            self._set_state("idle")

    def _close_windows(self) -> None:
        self._awaiting_until = self._follow_up_until = self._opened_by = None
        if self._window_timer is not None:
            self._window_timer.cancel()
        if self._turn is None and self.state in ("listening", "follow_up"):
            self._set_state("idle")

    def _on_wake(self, hit: WakeHit) -> None:
        if self.muted:
            return
        if self._device_speaking() and self._echo_policy() not in ("trusted", "open"):
            # Its own voice is not (yet) cancelled: a reply that says the wake word, or merely
            # sounds like it, would wake the device and cut itself off.
            self.wakes_ignored += 1
            log.info("voice: wake word %r (p=%.2f) while speaking with the echo not cancelled;"
                     " ignored", hit.model, hit.probability)
            return
        self.wakes += 1
        self.last_wake = time.time()
        log.info("voice: wake word %r (p=%.2f)", hit.model, hit.probability)
        self.bus.publish(WakeWordDetected(hit.model, hit.probability))
        if self._turn is not None:         # already talking to the device
            return
        if self._device_speaking():
            self._barge_in(hit.t)
        self._cue("wake", "wake")
        self._open("wake", hit.end)

    # --- uplink: mic -> gate -> Live ----------------------------------------------------------

    def _device_speaking(self) -> bool:
        if self.playback.playing:
            return True
        return now() - self._last_played < self.settings.echo.tail_ms / 1000

    def _echo_policy(self) -> EchoPolicy:
        """The gate's policy while the device speaks (:func:`~edged.audio.vad.barge_in_policy`)."""
        return barge_in_policy(self.frontend.echo, self.settings.echo.policy)

    async def _uplink(self) -> None:
        async for item in self.capture.frames():
            if isinstance(item, WakeHit):
                self._on_wake(item)
                continue
            frame: AudioFrame = item
            if frame.fresh:
                # The microphone (re)opened: a turn in progress was cut off with it, and what
                # comes now is not continuous with what came before. A late frame is not a
                # reason (a busy machine delivers frames late, not lost).
                self._handle_speech(self.gate.end_turn("device", frame.t))
                self.gate.reset()
            if self.muted:
                continue
            self.heard_bytes += len(frame.pcm)
            events = self.gate.feed(frame, self._device_speaking(), self._echo_policy())
            if self.mode == "server" and self._conversation_open():
                self._stream += frame.pcm
                if len(self._stream) >= self.settings.vad.batch_ms * bytes_per_ms(
                        CAPTURE_RATE):
                    self._outbox.put_nowait(("audio", bytes(self._stream)))
                    self.sent_bytes += len(self._stream)
                    self._stream.clear()
            self._handle_speech(events)

    def _handle_speech(self, events: list[SpeechEvent]) -> None:
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self._on_speech_started(ev)
            elif not self._accepting:
                continue                   # speech nobody addressed to the device
            elif isinstance(ev, SpeechAudio):
                if self._turn is not None:
                    self._turn.uplinked_bytes += len(ev.pcm)
                if self.mode == "local":
                    self._outbox.put_nowait(("audio", ev.pcm))
                    self.sent_bytes += len(ev.pcm)
            elif isinstance(ev, SpeechEnded):
                self._accepting = False
                self._on_speech_ended(ev)

    def _on_speech_started(self, ev: SpeechStarted) -> None:
        trigger = self._accepts(ev.t)
        self._accepting = trigger is not None
        if trigger is None:
            return
        self._awaiting_until = self._follow_up_until = self._opened_by = None
        if self._device_speaking():
            self._barge_in(ev.t)
        if self._turn is not None:         # e.g. a turn cut by max_length never got its end
            self._finish(self._turn, "abandoned")
        self._turn = TurnRecord(mode=self.mode, speech_start=ev.t, trigger=trigger)
        self._set_state("listening")
        if self.mode == "local":
            self._discard_reply_audio = True
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
        if self._offline:                  # it cannot be answered: say so now, not never
            self._cue("offline", "question_offline")

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
                    self._owed += 1
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

    def _stale(self) -> bool:
        """Local mode: more than one reply owed, so what arrives belongs to an older turn."""
        return self.mode == "local" and self._owed > 1

    async def _downlink(self) -> None:
        while True:
            ev = await self.live_events.get()
            if isinstance(ev, ModelAudio):
                self._on_model_audio(ev)
            elif isinstance(ev, Interrupted):
                if not self._stale():
                    self._on_interrupted(ev)
            elif isinstance(ev, TurnComplete):
                stale = self._stale()
                self._owed = max(0, self._owed - 1)
                if stale:
                    continue               # the end of a turn the user already talked over
                self.playback.reply_done()
                if self._reply is not None and self._reply.first_reply_audio is None \
                        and self.state == "thinking":
                    self._finish(self._reply, "no_audio")
                    self._open_follow_up()
            elif isinstance(ev, GenerationComplete):
                if not self._stale():
                    self.playback.reply_done()
            elif (words := reply_chunk(ev)) is not None:
                if self._reply is not None and not self._stale():
                    self._reply.model_text += words
            elif isinstance(ev, Transcription):       # the user's words
                target = self._turn or self._reply
                if target is not None:
                    target.user_text += ev.text
            elif isinstance(ev, ToolCallStarted):
                if self._reply is not None:
                    self._reply.tools.append(ev.name)
            elif isinstance(ev, LinkChanged):
                self._on_link(ev)
            elif isinstance(ev, SessionChanged):
                self.session_state = ev.state
                if ev.state != "ready":
                    self._owed = 0         # a new connection owes nothing for the old one

    def _on_link(self, ev: LinkChanged) -> None:
        """The user hears that the cloud is unreachable only when it matters to them (a
        question in flight or one asked meanwhile), and that it is back only if they heard
        that it was gone."""
        if ev.state == "offline":
            self._offline = True
            if self._turn is not None or self.state == "thinking":
                self._cue("offline", "went_offline")
        else:
            self._offline = False
            if self._told_offline:
                self._told_offline = False
                self._cue("back", "online")

    def _on_model_audio(self, ev: ModelAudio) -> None:
        if self.mode == "local" and (self._discard_reply_audio or self._stale()):
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
        if self.state in ("idle", "thinking", "follow_up"):
            self._follow_up_until = None
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
                    if self._turn:
                        self._set_state("listening")
                    else:
                        self._open_follow_up()
            else:   # flushed
                self._last_played = ev.t
                if reply is not None and reply.interrupted is not None:
                    reply.playback_stopped = ev.t
                    reply.playback_end = ev.t
                    self._finish(reply, "interrupted")
                if self.state == "interrupted":
                    self._set_state("listening" if self._turn or self._awaiting_until
                                    else "idle")

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
                self._owed = 0
                self._set_state("idle")
                self._cue("error", "no_reply")

    # --- bookkeeping ----------------------------------------------------------------------------

    def _set_state(self, state: VoiceState) -> None:
        if state != self.state:
            log.debug("voice: %s -> %s", self.state, state)
            previous, self.state = self.state, state
            self.bus.publish(VoiceStateChanged(state, previous))

    def _cue(self, cue: cues.Cue, reason: str) -> None:
        """Play one of the device's own sounds (if ``listen.cues`` has it) and publish it, so
        ``edgectl events`` shows what the wearer heard."""
        if cue not in self.settings.listen.cues:
            return
        if cue == "offline":
            self._told_offline = True
        self.playback.play_cue(cues.sound(cue))
        self.bus.publish(CuePlayed(cue, reason))

    def _finish(self, turn: TurnRecord, outcome: str) -> None:
        if turn.outcome != "open":
            return
        turn.outcome = outcome
        if self._reply is turn:
            self._reply = None
        self.turns.append(turn)
        lat = turn.latencies()
        log.info("turn %d %s (%s, %s): %s", turn.id, outcome, turn.mode, turn.trigger,
                 " ".join(f"{k.removesuffix('_ms')}={v}ms" for k, v in lat.items()
                          if v is not None) or "no timings")
        if turn.speech_start is not None:     # else: the spoken answer to a typed question,
            self.bus.publish(TurnFinished(turn))    # which `ask` reports as its own turn
