"""The Live session supervisor: one always-on, resumable Gemini Live conversation.

The SDK gives one WebSocket per ``connect()`` and never reconnects. A device that is always on
needs the opposite, so :class:`LiveSession` owns the recovery loop (docs/live-session.md):

* every connection asks for session resumption; the newest handle marked ``resumable`` is kept
  (and, with a :class:`~edged.live.handles.HandleStore`, survives a restart) and the next
  connection resumes with it, so the conversation survives drops, goAways and restarts;
* ``goAway`` -> reconnect at the next point between turns; a reply in progress runs until it
  completes or ``timeLeft`` is over (it is never cut while it could still fit); the old socket
  is always closed before the resume;
* what to do after any other end - wait, back off, call it a configuration error - is decided
  by :class:`~edged.live.policy.ReconnectPolicy`, a pure function of how the connection ended;
  after a network-level failure the wait is cut short by a reachability probe
  (:mod:`edged.live.link`) the moment the network is back;
* a stalled socket: no server message for ``stall_timeout_s`` while a reply is due means dead
  (websockets' own ping covers the idle case);
* :meth:`close` interrupts a connect in progress, so shutdown never waits for a connect timeout.

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
from pathlib import Path
from typing import Any

import pydantic
import websockets
from google.genai import live, types

from edged.config import ConfigError, Settings
from edged.events import (
    EventBus,
    GenerationComplete,
    Interrupted,
    LinkChanged,
    ModelAudio,
    ModelText,
    Reconnecting,
    SessionChanged,
    Transcription,
    TurnComplete,
    TurnFailed,
)
from edged.formats import CAPTURE_MIME
from edged.live.client import build_client, build_config, client_fingerprint, setup_fingerprint
from edged.live.dispatch import ToolDispatcher
from edged.live.handles import HANDLE_TTL_S, HandleStore
from edged.live.link import Probe, endpoint_of, until_reachable
from edged.live.policy import CONFIG_ERROR_CODES, Decision, End, ReconnectPolicy, classify
from edged.live.turns import MAX_TEXT_SENDS, TurnTracker
from edged.tools import ToolRegistry, clip

log = logging.getLogger(__name__)

# While the probe says the network is down no connection is attempted (it could only fail, and
# a connect lost in a black hole would hold up the return); one is still tried this often, in
# case the probe is wrong about a network it cannot see the way the SDK does.
OFFLINE_ATTEMPT_S = 600.0


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
                 bus: EventBus | None = None, handle_file: Path | None = None) -> None:
        """``handle_file``: where the resumption handle survives a restart (the daemon's state
        directory); ``None`` keeps it in memory only (``edged chat``, tests)."""
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
        self._dispatch = ToolDispatcher(tools, self.bus.publish, self._wake.set,
                                        ids_required=not settings.gemini.vertex)
        self._handle: str | None = None
        self._handle_at: float | None = None
        self._handle_seq = 0           # numbers the handles; the turn tracker compares them
        self._store = HandleStore(handle_file) if handle_file is not None else None
        self._offline_since: float | None = None
        self._link_down_at: float | None = None     # monotonic, while LinkChanged says offline
        self._questions_failed = 0
        self._question_failed: str | None = None   # until the next answered turn
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
        self._unparseable = 0
        self._goaway: tuple[float, float] | None = None     # (received at, timeLeft)
        self._reconfigure = False
        self._settings_gen = 0          # bumped by apply_settings

    # --- public API ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect - until :meth:`close`. Never raises for link failures."""
        if self._store is not None:
            stored = await asyncio.to_thread(self._store.load, self._settings.gemini.model)
            if stored is not None:
                self._handle, self._handle_seq = stored.handle, self._handle_seq + 1
                self._handle_at = time.monotonic() - max(0.0, time.time() - stored.issued_at)
                log.info("resuming the conversation stored before the restart")
        try:
            while not self._stop.is_set():
                gen = self._settings_gen
                attempt = asyncio.create_task(self._connect_once())
                stopped = asyncio.ensure_future(self._stop.wait())
                try:
                    await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    attempt.cancel()
                    raise
                finally:
                    stopped.cancel()
                if self._stop.is_set() and not attempt.done() and self._session is None:
                    attempt.cancel()        # a connect in progress: don't wait for its timeout
                try:
                    end, age = await attempt
                except asyncio.CancelledError:
                    if attempt.cancelled() and self._stop.is_set():
                        break
                    raise
                if self._stop.is_set():
                    break
                if gen != self._settings_gen and (end.kind == "config"
                                                  or end.code in CONFIG_ERROR_CODES):
                    # The attempt used settings a reload has replaced since: its verdict says
                    # nothing about the new ones, so try them now.
                    end = End("reconfigure", None, "settings changed during the attempt")
                await self._pause(self._after(end, age))
                self._next_retry_at = None
        finally:
            self._session = None
            if self._store is not None:
                await self._store.flush()
            self._set_state("closed", "closed by edged")

    async def close(self) -> None:
        """Stop: the current connection is closed (code 1000), a connect in progress is
        abandoned, and :meth:`run` returns."""
        self._stop.set()
        self._wake.set()

    def answer_bound_s(self) -> float:
        """The longest a typed question can take before it is answered or given up: the wait
        for the link, then per send a connect, a tool call and stall detection."""
        s = self._settings.session
        return s.text_wait_s + MAX_TEXT_SENDS * (
            s.connect_timeout_s + self._tools.timeout_s + s.stall_timeout_s + self._tick())

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
            "offline_since": self._offline_since,
            "questions_failed": self._questions_failed,
            "question_failed": self._question_failed,
            "setup": {"model": g.model, "modality": g.response_modality,
                      "turn_detection": s.turn_detection, "voice": g.voice,
                      "language": g.language, "resumption": s.resumption,
                      "tools": self._tools.names},
            "bytes_up": self._bytes_up,
            "bytes_down": self._bytes_down,
            "audio_chunks_dropped": self._audio_dropped,
            "images_sent": self._images_sent,
            "messages_unparseable": self._unparseable,
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
        self._dispatch.ids_required = not settings.gemini.vertex
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
        resumed_from = self._handle_seq if handle else None
        self._set_state("resuming" if handle else "connecting")
        try:
            client = self._get_client(settings)
        except ConfigError as e:
            return End("config", None, str(e), during_setup=True), 0.0
        config = build_config(settings, self._tools, handle)
        self._connected_at = None
        self._goaway = None
        stack = contextlib.AsyncExitStack()
        session: live.AsyncSession | None = None
        end: End | None = None
        try:
            async with asyncio.timeout(settings.session.connect_timeout_s):
                session = await stack.enter_async_context(
                    client.aio.live.connect(model=settings.gemini.model, config=config))
            end = await self._serve(session, resumed_from)
        except Exception as e:
            end = classify(e, during_setup=self._connected_at is None)
            if end.kind == "error":
                log.exception("unexpected error in the Live connection")
            elif self._goaway is not None and end.kind in ("api", "network"):
                # the server closed at timeLeft, as announced: not a failure
                end = dataclasses.replace(end, kind="goaway")
        finally:
            if end is not None and end.kind == "stall" and session is not None:
                # A stalled peer never acknowledges a close frame: abort the socket, so it is
                # gone before the resume (a resume can be refused while the old one is open).
                _abort(session)
            await stack.aclose()
        age = time.monotonic() - self._connected_at if self._connected_at else 0.0
        return dataclasses.replace(end, resumed=handle is not None), age

    async def _serve(self, session: live.AsyncSession, resumed_from: int | None) -> End:
        resumed = resumed_from is not None
        self._conn_id += 1
        self._connected_at, self._connected_since = time.monotonic(), time.time()
        self._turns.new_connection()
        self._reconfigure = False
        log.info("Live connected (%s, connection #%d)",
                 "resumed session" if resumed else "new session", self._conn_id)
        if not resumed and self._turns.history:
            log.info("re-seeding the fresh session with %d recent text turns",
                     len(self._turns.history))
            await session.send_client_content(turns=list(self._turns.history),
                                              turn_complete=False)
        if self._turns.pending_text is not None:
            if self._turns.pending_sends >= MAX_TEXT_SENDS:
                self._fail_question(f"no answer after {self._turns.pending_sends} tries "
                                    f"(last: {self._last_close_reason or 'connection lost'})")
            elif self._turns.resend_needed(resumed_from):
                log.info("re-sending the text turn that was not answered before the drop")
                await self._send_text_turn(session, self._turns.pending_text)
            else:
                self._fail_question("the answer was lost with the connection (it is in the "
                                    "resumed conversation)")
        self._session = session
        self._link_back("connected")
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

    def _tick(self) -> float:
        return min(1.0, self._settings.session.stall_timeout_s / 4)

    async def _watch(self) -> End:
        """Ends the connection on stop, stall, goAway (see :meth:`_goaway_due`) or a pending
        reconfigure (between turns)."""
        while True:
            s = self._settings.session
            deadline = self._goaway_deadline()
            tick = self._tick()
            if deadline is not None:
                tick = max(0.0, min(tick, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)
            self._wake.clear()
            if self._stop.is_set():
                return End("closed", 1000, "closed by edged")
            silent = self._turns.silent_for()
            if silent is not None and silent > s.stall_timeout_s:
                return End("stall", None,
                           f"no server message for {silent:.1f}s while a reply was due")
            idle = self._turns.idle(self._dispatch.busy)
            deadline = self._goaway_deadline()
            if deadline is not None and (idle or time.monotonic() >= deadline):
                return End("goaway", None, "server goAway")
            if self._reconfigure and idle:
                return End("reconfigure", None, "settings changed")

    def _goaway_deadline(self) -> float | None:
        """When to leave after a goAway if no pause between turns comes first.

        A reply in progress (or the tool call it waits for) may use all of ``timeLeft``: the
        server ends the connection then anyway, so leaving earlier could only cut a reply that
        would have fitted. Only a user still speaking gets the ``goaway_margin_s`` deadline:
        their turn cannot be answered on this connection in time, so the sooner the better."""
        if self._goaway is None:
            return None
        at, left = self._goaway
        if self._turns.activity_open:
            left = max(0.0, left - self._settings.session.goaway_margin_s)
        return at + left

    def _after(self, end: End, age: float) -> Decision:
        """Record how the connection ended; returns what to do before the next attempt."""
        self._last_close_code = end.code
        self._last_close_reason = end.reason or None
        decision = self._policy.decide(end, age, resuming=self._usable_handle() is not None)
        if not decision.reconnect:
            return decision
        if decision.drop_handle:
            self._drop_handle(decision.drop_handle)
        self._reconnects += 1
        self._by_cause[end.cause] = self._by_cause.get(end.cause, 0) + 1
        log.log(decision.log_level, "%s", decision.message)
        resuming = self._usable_handle() is not None
        self.bus.publish(Reconnecting(end.cause, end.reason, decision.delay_s, resuming))
        if decision.delay_s > 0:
            self._next_retry_at = time.time() + decision.delay_s
        if decision.state == "config_error" and self._turns.pending_text is not None:
            self._fail_question(f"Gemini Live rejected the configuration: {decision.detail}")
        if decision.state != "connecting":
            self._set_state(decision.state, decision.detail)
        return decision

    async def _pause(self, decision: Decision) -> None:
        """Wait as ``decision`` says; a stop or a settings reload (``_retry_now``) ends it."""
        if decision.delay_s <= 0 and not decision.check_link:
            return
        self._retry_now.clear()
        waits = [asyncio.ensure_future(self._stop.wait()),
                 asyncio.ensure_future(self._retry_now.wait()),
                 asyncio.ensure_future(self._wait_for_network(decision.delay_s)
                                       if decision.check_link
                                       else asyncio.sleep(decision.delay_s))]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            self._offline_since = None

    async def _wait_for_network(self, delay_s: float) -> None:
        """After a network-level failure: if the network is up, wait ``delay_s`` (the backoff);
        if it is down, wait until a probe connects and then return at once - the outage's
        length never adds to the return (docs/live-session.md, "Recovery bound")."""
        s = self._settings.session
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        try:
            probe = Probe(endpoint_of(self._client), s.probe_timeout_s)
        except Exception as e:         # no endpoint to probe: plain backoff
            log.warning("cannot probe the Live endpoint (%s); backing off instead", e)
            await asyncio.sleep(delay_s)
            return
        if await probe():
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return
        where = f"{probe.endpoint.host}:{probe.endpoint.port}"
        self._offline_since = time.time()
        self._set_state("offline", f"network unreachable ({where} does not answer)")
        if self._link_down_at is None:     # once per outage, however many attempts it spans
            self._link_down_at = time.monotonic()
            self.bus.publish(LinkChanged("offline", f"{where} unreachable"))
            log.warning("Live endpoint %s unreachable; probing every %gs until it answers",
                        where, s.probe_interval_s)
        try:
            await asyncio.wait_for(until_reachable(probe, s.probe_interval_s), OFFLINE_ATTEMPT_S)
        except TimeoutError:
            log.info("still offline after %.0fs; trying a connection anyway", OFFLINE_ATTEMPT_S)
            return
        self._policy.link_returned()
        self._link_back(f"{where} reachable")

    def _link_back(self, detail: str) -> None:
        """The network is usable again (a probe connected, or a connection came up)."""
        if self._link_down_at is None:
            return
        down_s = time.monotonic() - self._link_down_at
        self._link_down_at = None
        self.bus.publish(LinkChanged("online", detail, down_s))
        log.info("network back after %.1fs; reconnecting now", down_s)

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

    def _new_handle(self, handle: str) -> None:
        self._handle, self._handle_at = handle, time.monotonic()
        self._handle_seq += 1
        self._turns.handle_issued(self._handle_seq)
        if self._store is not None:
            self._store.save(handle, self._settings.gemini.model)

    def _drop_handle(self, why: str) -> None:
        if self._handle is not None:
            log.info("dropping the resumption handle: %s", why)
            if self._store is not None:
                self._store.clear()
        self._handle = self._handle_at = None

    def _fail_question(self, reason: str) -> None:
        """Give up the pending typed question; whoever asked it gets ``reason``."""
        sends = self._turns.pending_sends
        if self._turns.give_up() is None:
            return
        self._questions_failed += 1
        self._question_failed = reason
        log.warning("giving up a typed question after %d send(s): %s", sends, reason)
        self.bus.publish(TurnFailed(reason, sends))

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
            try:
                async for msg in session.receive():
                    self._turns.received()
                    self._on_message(msg, session)
            except pydantic.ValidationError as e:
                # The SDK could not parse a server message (e.g. a functionCall whose args are
                # not an object). The socket is fine: log it (bounded) and keep receiving. A
                # tool call lost this way has no id we can see, so it cannot be answered.
                self._turns.received()
                self._unparseable += 1
                where = ".".join(str(x) for x in e.errors()[0]["loc"]) if e.errors() else "?"
                log.warning("ignoring a server message the SDK cannot parse (%s: %s)%s", where,
                            clip(e.errors()[0]["msg"] if e.errors() else str(e)),
                            "; the tool call in it cannot be answered"
                            if where.startswith("tool_call") else "")

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
        if (upd := msg.session_resumption_update) is not None:
            if upd.resumable and upd.new_handle:
                self._new_handle(upd.new_handle)
            elif upd.resumable is False:
                self._turns.not_resumable()
        if msg.go_away is not None:
            left = _parse_duration(msg.go_away.time_left)
            self._goaway = (time.monotonic(), left)
            log.info("Live goAway: %.1fs left; reconnecting at the next pause between turns "
                     "(a reply in progress may use all of it)", left)
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
            self._policy.session_works()
            self._question_failed = None
            publish(TurnComplete())
            self._wake.set()

    # --- helpers ---------------------------------------------------------------------------

    async def _send_text_turn(self, session: live.AsyncSession, text: str) -> None:
        self._turns.text_sent()
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


def _abort(session: live.AsyncSession) -> None:
    """Drop a session's TCP connection at once, without a close handshake. The SDK keeps the
    websockets connection in ``_ws`` (google-genai 3.x; ``tests/test_live_recovery.py`` checks
    that a stalled socket is gone before the resume)."""
    ws = getattr(session, "_ws", None)
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()

