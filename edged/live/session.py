"""The Live session supervisor: one always-on, resumable Gemini Live conversation.

The SDK gives one WebSocket per ``connect()`` and never reconnects. A device that is always on
needs the opposite, so :class:`LiveSession` owns the recovery loop (docs/live-session.md):

* every connection asks for session resumption; the newest handle marked ``resumable`` is kept
  and the next connection resumes with it, so the conversation survives drops and goAways;
* ``goAway`` -> reconnect at the next point between turns, at the latest ``goaway_margin_s``
  before ``timeLeft`` runs out;
* what to do after any other end - wait, back off, call it a configuration error - is decided
  by :class:`~edged.live.policy.ReconnectPolicy`, a pure function of how the connection ended;
* a stalled socket: no server message for ``stall_timeout_s`` while a reply is due means dead
  (websockets' own ping covers the idle case).

It is a facade over three parts, each testable alone: the policy, the
:class:`~edged.live.turns.TurnTracker` (is a reply owed, what to re-send or re-seed) and the
:class:`~edged.live.dispatch.ToolDispatcher` (one response per tool call). Everything it
observes goes onto the :class:`~edged.events.EventBus` as typed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from typing import Any

import websockets
from google.genai import live, types

from edged.config import ConfigError, Settings
from edged.events import (
    EventBus,
    GenerationComplete,
    Interrupted,
    ModelAudio,
    ModelText,
    Reconnecting,
    SessionChanged,
    Transcription,
    TurnComplete,
)
from edged.formats import CAPTURE_MIME
from edged.live.client import build_client, build_config, client_fingerprint, setup_fingerprint
from edged.live.dispatch import ToolDispatcher
from edged.live.policy import CONFIG_ERROR_CODES, End, ReconnectPolicy, classify
from edged.live.turns import TurnTracker
from edged.tools import ToolRegistry

log = logging.getLogger(__name__)

HANDLE_TTL_S = 7200.0        # resumption handles stay valid 2 h after the session ends


class LiveUnavailable(ConnectionError):
    """The Live link is down and did not come back in time; the message says why."""


class LiveConfigError(LiveUnavailable):
    """The server rejects our setup (1007/1008, bad TLS trust, missing key): fix the config."""


def _parse_duration(value: str | None) -> float:
    """Protobuf Duration JSON ("50s", "1.5s") to seconds; unknown forms count as 0 (act now)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)s\s*", value or "")
    return float(m.group(1)) if m else 0.0


class LiveSession:
    """Supervises the Gemini Live connection; implements :class:`edged.events.LiveLink`."""

    def __init__(self, settings: Settings, tools: ToolRegistry,
                 bus: EventBus | None = None) -> None:
        self._settings = settings
        self._tools = tools
        self.bus = bus or EventBus()
        self._setup_fp = setup_fingerprint(settings, tools)
        self._client: Any = None
        self._client_fp: str | None = None
        self._session: live.AsyncSession | None = None
        self._conn_id = 0
        self._state = "connecting"
        self._detail = ""
        self._state_evt = asyncio.Event()
        self._stop = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._wake = asyncio.Event()
        self._policy = ReconnectPolicy(settings.session)
        self._turns = TurnTracker()
        self._dispatch = ToolDispatcher(tools, self.bus.publish, self._wake.set)
        self._handle: str | None = None
        self._handle_at: float | None = None
        self._next_retry_at: float | None = None
        self._last_close_code: int | None = None
        self._last_close_reason: str | None = None
        self._connected_at: float | None = None
        self._connected_since: float | None = None
        self._reconnects = 0
        self._by_cause: dict[str, int] = {}
        self._bytes_up = 0
        self._bytes_down = 0
        self._audio_dropped = 0
        self._images_sent = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._goaway_deadline: float | None = None
        self._reconfigure = False
        self._settings_gen = 0          # bumped by apply_settings

    # --- public API ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect - until :meth:`close`. Never raises for link failures."""
        try:
            while not self._stop.is_set():
                gen = self._settings_gen
                end, age = await self._connect_once()
                if self._stop.is_set():
                    break
                if gen != self._settings_gen and (end.kind == "config"
                                                  or end.code in CONFIG_ERROR_CODES):
                    # The attempt used settings a reload has replaced since: its verdict says
                    # nothing about the new ones, so try them now.
                    end = End("reconfigure", None, "settings changed during the attempt")
                delay = self._after(end, age)
                if delay > 0:
                    self._retry_now.clear()
                    waits = [asyncio.ensure_future(self._stop.wait()),
                             asyncio.ensure_future(self._retry_now.wait())]
                    try:
                        await asyncio.wait(waits, timeout=delay,
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
                self._next_retry_at = None
        finally:
            self._session = None
            await asyncio.gather(*self._closing, return_exceptions=True)
            self._set_state("closed", "closed by edged")

    async def close(self) -> None:
        """Stop: the current connection is closed (code 1000) and :meth:`run` returns."""
        self._stop.set()
        self._wake.set()

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109 (LiveLink contract)
        """Wait until connected; raises LiveConfigError at once on a configuration error."""
        await self._wait_session(timeout)

    async def send_text(self, text: str) -> None:
        """A user text turn. Waits up to ``session.text_wait_s`` for a reconnect.

        If the link drops before the reply completes, the turn is sent again on the next
        connection (a resumed session is restored to before the turn: handles are not
        resumable while the model generates).
        """
        session = await self._wait_session(self._settings.session.text_wait_s)
        self._turns.typed(text)
        await self._send_text_turn(session, text)

    async def send_audio(self, pcm16k: bytes) -> None:
        """Realtime 16 kHz audio. Dropped while disconnected - stale audio is worse than none -
        and, in local turn mode, unless this connection saw the turn's activityStart."""
        session = self._session
        local = self._settings.session.turn_detection == "local"
        if session is None or (local and not self._turns.activity_open):
            self._audio_dropped += 1
            return
        try:
            await session.send_realtime_input(
                audio=types.Blob(data=pcm16k, mime_type=CAPTURE_MIME))
        except websockets.ConnectionClosed:
            self._audio_dropped += 1
            return
        self._bytes_up += len(pcm16k)

    async def send_activity_start(self) -> None:
        """Start of a user turn (local turn mode only; the server's VAD owns it otherwise)."""
        session = self._session
        if session is None or self._settings.session.turn_detection != "local":
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            await session.send_realtime_input(activity_start=types.ActivityStart())
            self._turns.activity_open = True
            self._turns.in_turn = True

    async def send_activity_end(self) -> None:
        """End of the user turn; from now on a reply is due (stall detection is armed)."""
        session = self._session
        if session is None or not self._turns.activity_open:
            return
        self._turns.activity_open = False
        with contextlib.suppress(websockets.ConnectionClosed):
            await session.send_realtime_input(activity_end=types.ActivityEnd())
            self._reply_due()

    async def send_image(self, jpeg: bytes) -> bool:
        """A camera still as realtime video input (``image/jpeg``); False when it could not go
        out (disconnected: a stale still is worth nothing after a reconnect)."""
        session = self._session
        if session is None:
            return False
        try:
            await session.send_realtime_input(video=types.Blob(data=jpeg, mime_type="image/jpeg"))
        except websockets.ConnectionClosed:
            return False
        self._bytes_up += len(jpeg)
        self._images_sent += 1
        return True

    @property
    def state(self) -> str:
        return self._state

    def status(self) -> dict[str, Any]:
        """JSON-safe snapshot for ``edgectl status`` and metrics (never contains the key)."""
        t = time.monotonic()
        g, s = self._settings.gemini, self._settings.session
        return {
            "state": self._state,
            "detail": self._detail,
            "next_retry_at": self._next_retry_at,
            "last_close_code": self._last_close_code,
            "last_close_reason": self._last_close_reason,
            "connected_since": self._connected_since if self._session else None,
            "connection_age_s": (round(t - self._connected_at, 1)
                                 if self._session and self._connected_at else None),
            "handle_age_s": (round(t - self._handle_at, 1)
                             if self._handle and self._handle_at else None),
            "reconnects": self._reconnects,
            "reconnects_by_code": dict(self._by_cause),
            "setup": {"model": g.model, "modality": g.response_modality,
                      "turn_detection": s.turn_detection, "voice": g.voice,
                      "language": g.language, "resumption": s.resumption,
                      "tools": self._tools.names},
            "bytes_up": self._bytes_up,
            "bytes_down": self._bytes_down,
            "audio_chunks_dropped": self._audio_dropped,
            "images_sent": self._images_sent,
            "tool_calls": dict(self._dispatch.counts),
            "events_dropped": self.bus.dropped,
        }

    def apply_settings(self, settings: Settings) -> list[str]:
        """Apply reloaded settings; nothing here needs a restart (returns ``[]``).

        Supervisor knobs take effect at once; a changed setup or client (model, voice, key,
        URL, ...) reconnects - resuming - at the next point between turns. A changed model
        cannot resume (the server forbids it): the session restarts and is re-seeded with the
        recent text history."""
        old = self._settings
        self._settings = settings
        self._settings_gen += 1
        self._policy.update(settings.session)
        fp = setup_fingerprint(settings, self._tools)
        try:
            client_changed = client_fingerprint(settings) != self._client_fp
        except ConfigError:
            client_changed = True
        if settings.gemini.model != old.gemini.model:
            self._drop_handle("the model changed")
        if fp != self._setup_fp or client_changed:
            self._setup_fp = fp
            self._reconfigure = True
            log.info("Live settings changed; reconnecting at the next pause between turns")
        if self._state == "config_error":     # a reload is the fix for it: retry now
            self._set_state("connecting", "retrying after a settings reload")
            self._retry_now.set()
        self._wake.set()
        return []

    # --- connection lifecycle --------------------------------------------------------------

    async def _connect_once(self) -> tuple[End, float]:
        settings = self._settings
        handle = self._usable_handle()
        self._set_state("resuming" if handle else "connecting")
        try:
            client = self._get_client(settings)
        except ConfigError as e:
            return End("config", None, str(e), during_setup=True), 0.0
        config = build_config(settings, self._tools, handle)
        self._connected_at = None
        stack = contextlib.AsyncExitStack()
        end: End | None = None
        try:
            async with asyncio.timeout(settings.session.connect_timeout_s):
                session = await stack.enter_async_context(
                    client.aio.live.connect(model=settings.gemini.model, config=config))
            end = await self._serve(session, resumed=handle is not None)
        except Exception as e:
            end = classify(e, during_setup=self._connected_at is None)
            if end.kind == "error":
                log.exception("unexpected error in the Live connection")
        finally:
            if end is not None and end.kind == "stall":
                # A stalled peer never acknowledges our close frame: let the close (bounded by
                # CLOSE_TIMEOUT_S) finish in the background and reconnect now.
                task = asyncio.create_task(stack.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            else:
                await stack.aclose()
        age = time.monotonic() - self._connected_at if self._connected_at else 0.0
        return dataclasses.replace(end, resumed=handle is not None), age

    async def _serve(self, session: live.AsyncSession, resumed: bool) -> End:
        self._conn_id += 1
        self._connected_at, self._connected_since = time.monotonic(), time.time()
        self._turns.new_connection()
        self._goaway_deadline, self._reconfigure = None, False
        log.info("Live connected (%s, connection #%d)",
                 "resumed session" if resumed else "new session", self._conn_id)
        if not resumed and self._turns.history:
            log.info("re-seeding the fresh session with %d recent text turns",
                     len(self._turns.history))
            await session.send_client_content(turns=list(self._turns.history),
                                              turn_complete=False)
        if self._turns.pending_text is not None:
            log.info("re-sending the text turn that was not answered before the drop")
            await self._send_text_turn(session, self._turns.pending_text)
        self._session = session
        self._set_state("ready", "resumed" if resumed else "new session")
        recv = asyncio.create_task(self._receive_loop(session))
        watch = asyncio.create_task(self._watch())
        try:
            done, _ = await asyncio.wait({recv, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._session = None
            for t in (recv, watch):
                t.cancel()
            await asyncio.gather(recv, watch, return_exceptions=True)
            # answers for a dead connection can't be delivered
            self._dispatch.cancel_all("connection ended")
        if watch in done:
            return watch.result()
        recv.result()            # raises the error that ended the connection
        raise AssertionError("receive loop returned")   # pragma: no cover

    async def _watch(self) -> End:
        """Ends the connection on stop, stall, goAway (between turns) or a pending reconfigure."""
        while True:
            s = self._settings.session
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(1.0, s.stall_timeout_s / 4))
            self._wake.clear()
            if self._stop.is_set():
                return End("closed", 1000, "closed by edged")
            silent = self._turns.silent_for()
            if silent is not None and silent > s.stall_timeout_s:
                return End("stall", None,
                           f"no server message for {silent:.1f}s while a reply was due")
            idle = self._turns.idle(self._dispatch.busy)
            if self._goaway_deadline is not None and (
                    idle or time.monotonic() >= self._goaway_deadline):
                return End("goaway", None, "server goAway")
            if self._reconfigure and idle:
                return End("reconfigure", None, "settings changed")

    def _after(self, end: End, age: float) -> float:
        """Record how the connection ended; returns the delay before the next attempt."""
        self._last_close_code = end.code
        self._last_close_reason = end.reason or None
        decision = self._policy.decide(end, age, resuming=self._usable_handle() is not None)
        if not decision.reconnect:
            return 0.0
        if decision.drop_handle:
            self._drop_handle(decision.drop_handle)
        self._reconnects += 1
        self._by_cause[end.cause] = self._by_cause.get(end.cause, 0) + 1
        log.log(decision.log_level, "%s", decision.message)
        resuming = self._usable_handle() is not None
        self.bus.publish(Reconnecting(end.cause, end.reason, decision.delay_s, resuming))
        if decision.delay_s > 0:
            self._next_retry_at = time.time() + decision.delay_s
        if decision.state != "connecting":
            self._set_state(decision.state, decision.detail)
        return decision.delay_s

    def _get_client(self, settings: Settings) -> Any:
        fp = client_fingerprint(settings)
        if self._client is None or fp != self._client_fp:
            self._client = build_client(settings)
            self._client_fp = fp
        return self._client

    def _usable_handle(self) -> str | None:
        if not self._settings.session.resumption or self._handle is None:
            return None
        if self._handle_at is not None and time.monotonic() - self._handle_at > HANDLE_TTL_S:
            self._drop_handle("it is older than the 2 h resumption window")
            return None
        return self._handle

    def _drop_handle(self, why: str) -> None:
        if self._handle is not None:
            log.info("dropping the resumption handle: %s", why)
        self._handle = self._handle_at = None

    def _set_state(self, state: str, detail: str = "") -> None:
        if (state, detail) == (self._state, self._detail):
            return
        self._state, self._detail = state, detail
        self.bus.publish(SessionChanged(state, detail))
        self._state_evt.set()
        self._state_evt = asyncio.Event()

    async def _wait_session(self, within_s: float) -> live.AsyncSession:
        try:
            async with asyncio.timeout(within_s):
                while self._session is None:
                    if self._state == "config_error":
                        raise LiveConfigError(f"Gemini Live configuration error: {self._detail}")
                    if self._stop.is_set():
                        raise LiveUnavailable("the Live session is closed")
                    await self._state_evt.wait()
        except TimeoutError:
            raise LiveUnavailable(
                f"Gemini Live not connected after {within_s:g}s (state {self._state}"
                f"{': ' + self._detail if self._detail else ''})") from None
        return self._session

    # --- receiving -------------------------------------------------------------------------

    async def _receive_loop(self, session: live.AsyncSession) -> None:
        while True:      # receive() ends after every turn
            async for msg in session.receive():
                self._turns.received()
                self._on_message(msg, session)

    def _on_message(self, msg: types.LiveServerMessage, session: live.AsyncSession) -> None:
        if (sc := msg.server_content) is not None:
            self._on_content(sc)
        if msg.tool_call and msg.tool_call.function_calls:
            for fc in msg.tool_call.function_calls:
                self._turns.tool_running()
                self._dispatch.start(fc, session, self._reply_due)
        if msg.tool_call_cancellation and msg.tool_call_cancellation.ids:
            for call_id in msg.tool_call_cancellation.ids:
                self._dispatch.cancel(call_id, "cancelled by the server")
        if (upd := msg.session_resumption_update) is not None and upd.resumable and upd.new_handle:
            self._handle, self._handle_at = upd.new_handle, time.monotonic()
        if msg.go_away is not None:
            left = _parse_duration(msg.go_away.time_left)
            margin = self._settings.session.goaway_margin_s
            self._goaway_deadline = time.monotonic() + max(0.0, left - margin)
            log.info("Live goAway: %.1fs left; reconnecting between turns, at the latest in %.1fs",
                     left, max(0.0, left - margin))
            self._wake.set()

    def _on_content(self, sc: types.LiveServerContent) -> None:
        publish = self.bus.publish
        if sc.interrupted:
            publish(Interrupted())
        elif sc.model_turn and sc.model_turn.parts:
            for part in sc.model_turn.parts:
                blob = part.inline_data
                if blob is not None and blob.data and (blob.mime_type or "audio/").startswith(
                        "audio/"):
                    self._bytes_down += len(blob.data)
                    publish(ModelAudio(blob.data))
                elif part.text and not part.thought:
                    self._turns.said(part.text)
                    publish(ModelText(part.text))
            self._turns.reply_streaming()
        if sc.input_transcription and sc.input_transcription.text:
            t = sc.input_transcription
            self._turns.heard(t.text or "")
            publish(Transcription("user", t.text or "", bool(t.finished)))
        if sc.output_transcription and sc.output_transcription.text:
            t = sc.output_transcription
            self._turns.said(t.text or "")
            publish(Transcription("model", t.text or "", bool(t.finished)))
        if sc.generation_complete:
            self._turns.generation_complete()
            publish(GenerationComplete())
        if sc.turn_complete:
            self._turns.turn_complete()
            publish(TurnComplete())
            self._wake.set()

    # --- helpers ---------------------------------------------------------------------------

    async def _send_text_turn(self, session: live.AsyncSession, text: str) -> None:
        try:
            await session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text=text)]),
                turn_complete=True)
        except websockets.ConnectionClosed:
            return     # the receive loop sees the close; the turn is re-sent after reconnect
        self._reply_due()

    def _reply_due(self) -> None:
        self._turns.reply_due()
        self._wake.set()

