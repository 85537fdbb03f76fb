"""The Live session supervisor: one always-on, resumable Gemini Live conversation.

The SDK gives one WebSocket per ``connect()`` and never reconnects (gemini_live.md §1.5). A
device that is always on needs the opposite, so :class:`LiveSession` owns the recovery loop:

* every connection asks for session resumption; the newest handle marked ``resumable`` is kept
  and the next connection resumes with it, so the conversation survives drops and goAways;
* ``goAway`` -> reconnect at the next point between turns, at the latest ``goaway_margin_s``
  before ``timeLeft`` runs out;
* 1007/1008 are configuration errors: logged with the server's reason and a hint, state
  ``config_error``, retried only every ``config_error_retry_s`` (or at once on a reload);
* any other close or network error: exponential backoff with full jitter, reset after a
  connection that lived ``stable_after_s``;
* a stalled socket: no server message for ``stall_timeout_s`` while a reply is due means dead
  (websockets' own ping covers the idle case); see docs/live-session.md for the bounds.

It publishes :mod:`edged.events` ``LiveEvent``s to every subscriber and answers tool calls
through the :class:`~edged.tools.ToolRegistry` (one response per call id, none for a call the
server cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import re
import ssl
import time
from typing import Any

import websockets
from google.genai import errors, live, types

from edged.config import ConfigError, Settings
from edged.events import (
    GenerationComplete,
    Interrupted,
    LiveEvent,
    ModelAudio,
    ModelText,
    SessionChanged,
    ToolCallFinished,
    ToolCallStarted,
    Transcription,
    TurnComplete,
)
from edged.live.client import build_client, build_config, client_fingerprint, setup_fingerprint
from edged.tools import ToolRegistry

log = logging.getLogger(__name__)

CONFIG_ERROR_CODES = frozenset({1007, 1008})
HINTS = {
    1007: "the server rejected a setup field or the API key (invalid/expired key, unsupported "
          "voice/language, bad tool declaration): check gemini.api_key / GEMINI_API_KEY, "
          "gemini.voice, gemini.language and the registered tools",
    1008: "the model or API version is not available for this key: check gemini.model "
          "(a Live model, e.g. gemini-3.8-live) and gemini.api_version",
}
HANDLE_TTL_S = 7200.0        # resumption handles stay valid 2 h after the session ends
HISTORY_TURNS = 20           # text exchanges kept to re-seed a session that could not resume
HISTORY_CHARS = 8000
AUDIO_MIME = "audio/pcm;rate=16000"


class LiveUnavailable(ConnectionError):
    """The Live link is down and did not come back in time; the message says why."""


class LiveConfigError(LiveUnavailable):
    """The server rejects our setup (1007/1008, bad TLS trust, missing key): fix the config."""


@dataclasses.dataclass(frozen=True, slots=True)
class _End:
    """Why one connection ended."""

    kind: str                 # closed | goaway | reconfigure | stall | config | api | network
    code: int | None = None
    reason: str = ""
    during_setup: bool = False
    resumed: bool = False


def _parse_duration(value: str | None) -> float:
    """Protobuf Duration JSON ("50s", "1.5s") to seconds; unknown forms count as 0 (act now)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)s\s*", value or "")
    return float(m.group(1)) if m else 0.0


class LiveSession:
    """Supervises the Gemini Live connection; implements :class:`edged.events.LiveLink`."""

    def __init__(self, settings: Settings, tools: ToolRegistry) -> None:
        self._settings = settings
        self._tools = tools
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
        self._subscribers: dict[asyncio.Queue[LiveEvent], int] = {}
        self._handle: str | None = None
        self._handle_at: float | None = None
        self._failures = 0
        self._next_retry_at: float | None = None
        self._last_close_code: int | None = None
        self._last_close_reason: str | None = None
        self._connected_at: float | None = None
        self._connected_since: float | None = None
        self._reconnects = 0
        self._by_code: dict[str, int] = {}
        self._bytes_up = 0
        self._bytes_down = 0
        self._audio_dropped = 0
        self._tool_counts = {"started": 0, "ok": 0, "error": 0, "cancelled": 0}
        self._tool_tasks: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._tool_started: dict[str, tuple[str, float]] = {}
        # per-connection turn state
        self._last_rx = time.monotonic()
        self._reply_due_since: float | None = None
        self._in_turn = False
        self._activity_conn: int | None = None
        self._goaway_deadline: float | None = None
        self._reconfigure = False
        # text history, for re-seeding a fresh session (pipecat#4355) and re-sending a turn
        self._history: list[types.Content] = []
        self._turn_user: list[str] = []
        self._turn_model: list[str] = []
        self._turn_model_transcript: list[str] = []
        self._pending_text: str | None = None

    # --- public API ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect - until :meth:`close`. Never raises for link failures."""
        try:
            while not self._stop.is_set():
                end, age = await self._connect_once()
                if self._stop.is_set():
                    break
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

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue[LiveEvent]:
        """A queue receiving every event from now on.

        A consumer that falls ``maxsize`` events behind loses its *oldest* events (counted in
        ``status()["events_dropped"]``): the live stream must never block on a slow reader,
        and for playback the newest audio is the one worth having.
        """
        q: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize)
        self._subscribers[q] = 0
        return q

    def unsubscribe(self, q: asyncio.Queue[LiveEvent]) -> None:
        self._subscribers.pop(q, None)

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
        self._pending_text = text
        self._turn_user.append(text)
        await self._send_text_turn(session, text)

    async def send_audio(self, pcm16k: bytes) -> None:
        """Realtime 16 kHz audio. Dropped while disconnected - stale audio is worse than none -
        and, in local turn mode, unless this connection saw the turn's activityStart."""
        session = self._session
        local = self._settings.session.turn_detection == "local"
        if session is None or (local and self._activity_conn != self._conn_id):
            self._audio_dropped += 1
            return
        try:
            await session.send_realtime_input(audio=types.Blob(data=pcm16k, mime_type=AUDIO_MIME))
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
            self._activity_conn = self._conn_id
            self._in_turn = True

    async def send_activity_end(self) -> None:
        """End of the user turn; from now on a reply is due (stall detection is armed)."""
        session = self._session
        if session is None or self._activity_conn != self._conn_id:
            return
        self._activity_conn = None
        with contextlib.suppress(websockets.ConnectionClosed):
            await session.send_realtime_input(activity_end=types.ActivityEnd())
            self._reply_due()

    async def send_image(self, jpeg: bytes) -> None:
        """A camera still (realtime video frame); dropped while disconnected."""
        session = self._session
        if session is None:
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            await session.send_realtime_input(video=types.Blob(data=jpeg, mime_type="image/jpeg"))
            self._bytes_up += len(jpeg)

    def status(self) -> dict[str, Any]:
        """JSON-safe snapshot for ``edgectl status`` and metrics (never contains the key)."""
        now = time.monotonic()
        g, s = self._settings.gemini, self._settings.session
        return {
            "state": self._state,
            "detail": self._detail,
            "next_retry_at": self._next_retry_at,
            "last_close_code": self._last_close_code,
            "last_close_reason": self._last_close_reason,
            "connected_since": self._connected_since if self._session else None,
            "connection_age_s": (round(now - self._connected_at, 1)
                                 if self._session and self._connected_at else None),
            "handle_age_s": (round(now - self._handle_at, 1)
                             if self._handle and self._handle_at else None),
            "reconnects": self._reconnects,
            "reconnects_by_code": dict(self._by_code),
            "setup": {"model": g.model, "modality": g.response_modality,
                      "turn_detection": s.turn_detection, "voice": g.voice,
                      "language": g.language, "resumption": s.resumption,
                      "tools": self._tools.names},
            "bytes_up": self._bytes_up,
            "bytes_down": self._bytes_down,
            "audio_chunks_dropped": self._audio_dropped,
            "tool_calls": dict(self._tool_counts),
            "events_dropped": sum(self._subscribers.values()),
        }

    def update_settings(self, settings: Settings) -> None:
        """Apply reloaded settings. Supervisor knobs take effect at once; a changed setup or
        client (model, voice, key, URL, ...) reconnects - resuming - at the next point between
        turns. A changed model cannot resume (the server forbids it): the session restarts and
        is re-seeded with the recent text history."""
        old = self._settings
        self._settings = settings
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

    # --- connection lifecycle --------------------------------------------------------------

    async def _connect_once(self) -> tuple[_End, float]:
        settings = self._settings
        handle = self._usable_handle()
        self._set_state("resuming" if handle else "connecting")
        try:
            client = self._get_client(settings)
        except ConfigError as e:
            return _End("config", None, str(e), during_setup=True), 0.0
        config = build_config(settings, self._tools, handle)
        self._connected_at = None
        stack = contextlib.AsyncExitStack()
        end: _End | None = None
        try:
            async with asyncio.timeout(settings.session.connect_timeout_s):
                session = await stack.enter_async_context(
                    client.aio.live.connect(model=settings.gemini.model, config=config))
            end = await self._serve(session, resumed=handle is not None)
        except Exception as e:
            end = self._classify(e, during_setup=self._connected_at is None)
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

    async def _serve(self, session: live.AsyncSession, resumed: bool) -> _End:
        self._conn_id += 1
        now = time.monotonic()
        self._connected_at, self._connected_since = now, time.time()
        self._last_rx, self._reply_due_since, self._in_turn = now, None, False
        self._goaway_deadline, self._activity_conn, self._reconfigure = None, None, False
        self._turn_model.clear()
        self._turn_model_transcript.clear()
        log.info("Live connected (%s, connection #%d)",
                 "resumed session" if resumed else "new session", self._conn_id)
        if not resumed and self._history:
            log.info("re-seeding the fresh session with %d recent text turns", len(self._history))
            await session.send_client_content(turns=list(self._history), turn_complete=False)
        if self._pending_text is not None:
            log.info("re-sending the text turn that was not answered before the drop")
            await self._send_text_turn(session, self._pending_text)
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
            for key in list(self._tool_tasks):    # answers for a dead connection can't be
                self._cancel_tool(key, "connection ended")   # delivered
        if watch in done:
            return watch.result()
        recv.result()            # raises the error that ended the connection
        raise AssertionError("receive loop returned")   # pragma: no cover

    async def _watch(self) -> _End:
        """Ends the connection on stop, stall, goAway (between turns) or a pending reconfigure."""
        while True:
            s = self._settings.session
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(1.0, s.stall_timeout_s / 4))
            self._wake.clear()
            now = time.monotonic()
            if self._stop.is_set():
                return _End("closed", 1000, "closed by edged")
            if self._reply_due_since is not None:
                silent = now - max(self._reply_due_since, self._last_rx)
                if silent > s.stall_timeout_s:
                    return _End("stall", None,
                                f"no server message for {silent:.1f}s while a reply was due")
            idle = self._idle()
            if self._goaway_deadline is not None and (idle or now >= self._goaway_deadline):
                return _End("goaway", None, "server goAway")
            if self._reconfigure and idle:
                return _End("reconfigure", None, "settings changed")

    def _idle(self) -> bool:
        """Between turns: nothing owed either way, so a reconnect loses nothing."""
        return (not self._in_turn and not self._tool_tasks and self._reply_due_since is None
                and self._activity_conn != self._conn_id)

    def _after(self, end: _End, age: float) -> float:
        """Record how the connection ended; returns the delay before the next attempt."""
        s = self._settings.session
        self._last_close_code = end.code
        self._last_close_reason = end.reason or None
        if end.kind == "closed":
            return 0.0
        self._reconnects += 1
        key = str(end.code) if end.code is not None else end.kind
        self._by_code[key] = self._by_code.get(key, 0) + 1
        if end.kind in ("goaway", "reconfigure"):
            log.info("Live reconnecting (%s)", end.reason)
            self._failures = 0
            return 0.0
        if end.kind == "config" or end.code in CONFIG_ERROR_CODES:
            if end.code in CONFIG_ERROR_CODES and end.resumed and end.during_setup:
                # Stale or rejected handle (seen after long sessions): a fresh session is the
                # fix, not a five-minute wait.
                log.warning("Live refused to resume (close %s: %s); starting a new session",
                            end.code, end.reason)
                self._drop_handle("resumption was refused")
                return 0.0
            self._drop_handle("configuration error")
            hint = HINTS.get(end.code or 0, "")
            delay = s.config_error_retry_s
            log.error("Gemini Live rejected the configuration (close %s: %s)%s; retrying in %gs "
                      "or on reload", end.code, end.reason, f". Hint: {hint}" if hint else "",
                      delay)
            self._next_retry_at = time.time() + delay
            detail = f"{end.code}: {end.reason}" if end.code else end.reason
            self._set_state("config_error", f"{detail} (hint: {hint})" if hint else detail)
            return delay
        if age >= s.stable_after_s:
            self._failures = 0
        self._failures += 1
        ceiling = min(s.backoff_cap_s, s.backoff_base_s * 2 ** (self._failures - 1))
        delay = random.uniform(0, ceiling)     # full jitter: spreads a fleet's reconnects
        level = logging.INFO if end.code == 1000 else logging.WARNING
        log.log(level, "Live connection ended (%s%s%s) after %.1fs; reconnecting in %.2fs%s",
                end.kind, f" {end.code}" if end.code is not None else "",
                f": {end.reason}" if end.reason else "", age, delay,
                " (resuming)" if self._usable_handle() else "")
        self._next_retry_at = time.time() + delay
        self._set_state("backoff", f"{key}: {end.reason}")
        return delay

    def _classify(self, e: Exception, during_setup: bool) -> _End:
        if isinstance(e, errors.APIError):
            reason = e.details if isinstance(e.details, str) else (e.message or str(e.details))
            kind = "config" if e.code in CONFIG_ERROR_CODES else "api"
            return _End(kind, e.code, reason, during_setup)
        if isinstance(e, websockets.ConnectionClosed):
            code = e.rcvd.code if e.rcvd else 1006
            return _End("api", code, e.rcvd.reason if e.rcvd else "abnormal closure", during_setup)
        if isinstance(e, ssl.SSLCertVerificationError):
            return _End("config", None, f"TLS verification failed ({e.verify_message}); set "
                        "gemini.ca_file to the server's CA (PEM)", during_setup)
        if isinstance(e, ConfigError):
            return _End("config", None, str(e), during_setup)
        if isinstance(e, TimeoutError):
            return _End("network", None, "no setupComplete within session.connect_timeout_s",
                        during_setup)
        if isinstance(e, (OSError, websockets.InvalidHandshake)):
            return _End("network", None, f"{type(e).__name__}: {e}", during_setup)
        log.exception("unexpected error in the Live connection")
        return _End("error", None, f"{type(e).__name__}: {e}", during_setup)

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
        self._publish(SessionChanged(state, detail))
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
        while True:      # receive() ends after every turn (gemini_live.md §0.9)
            async for msg in session.receive():
                self._last_rx = time.monotonic()
                self._on_message(msg, session)

    def _on_message(self, msg: types.LiveServerMessage, session: live.AsyncSession) -> None:
        if (sc := msg.server_content) is not None:
            self._on_content(sc)
        if msg.tool_call and msg.tool_call.function_calls:
            for fc in msg.tool_call.function_calls:
                self._start_tool(fc, session)
        if msg.tool_call_cancellation and msg.tool_call_cancellation.ids:
            for call_id in msg.tool_call_cancellation.ids:
                self._cancel_tool(call_id, "cancelled by the server")
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
        if sc.interrupted:
            self._publish(Interrupted())
        elif sc.model_turn and sc.model_turn.parts:
            for part in sc.model_turn.parts:
                blob = part.inline_data
                if blob is not None and blob.data and (blob.mime_type or "audio/").startswith(
                        "audio/"):
                    self._bytes_down += len(blob.data)
                    self._publish(ModelAudio(blob.data))
                elif part.text and not part.thought:
                    self._turn_model.append(part.text)
                    self._publish(ModelText(part.text))
            self._in_turn = True
        if sc.input_transcription and sc.input_transcription.text:
            t = sc.input_transcription
            self._publish(Transcription("user", t.text or "", bool(t.finished)))
            if self._pending_text is None:
                self._turn_user.append(t.text or "")
        if sc.output_transcription and sc.output_transcription.text:
            t = sc.output_transcription
            self._turn_model_transcript.append(t.text or "")
            self._publish(Transcription("model", t.text or "", bool(t.finished)))
        if sc.generation_complete:
            self._reply_due_since = None
            self._publish(GenerationComplete())
        if sc.turn_complete:
            self._reply_due_since = None
            self._in_turn = False
            self._commit_history()
            self._publish(TurnComplete())
            self._wake.set()

    def _commit_history(self) -> None:
        user = "".join(self._turn_user).strip()
        model = ("".join(self._turn_model) or "".join(self._turn_model_transcript)).strip()
        self._turn_user.clear()
        self._turn_model.clear()
        self._turn_model_transcript.clear()
        self._pending_text = None
        if user:
            self._history.append(types.Content(role="user", parts=[types.Part(text=user)]))
        if model:
            self._history.append(types.Content(role="model", parts=[types.Part(text=model)]))
        while len(self._history) > 2 * HISTORY_TURNS or (
                len(self._history) > 1
                and sum(len(c.parts[0].text or "") for c in self._history if c.parts)
                > HISTORY_CHARS):
            self._history.pop(0)

    # --- tools -----------------------------------------------------------------------------

    def _start_tool(self, fc: types.FunctionCall, session: live.AsyncSession) -> None:
        call_id, name, args = fc.id or fc.name or "", fc.name or "", dict(fc.args or {})
        self._in_turn = True
        self._reply_due_since = None       # the model waits for us now, not the other way
        self._tool_counts["started"] += 1
        self._publish(ToolCallStarted(call_id, name, args))
        task = asyncio.create_task(self._run_tool(call_id, fc.id, name, args, session),
                                   name=f"tool:{name}:{call_id}")
        self._tool_tasks[call_id] = task
        self._tool_started[call_id] = (name, time.monotonic())

        def done(t: asyncio.Task[None]) -> None:
            if self._tool_tasks.get(call_id) is t:
                del self._tool_tasks[call_id]
                self._tool_started.pop(call_id, None)
                self._wake.set()

        task.add_done_callback(done)

    def _cancel_tool(self, key: str, why: str) -> None:
        """Cancel a running call; no response is sent for it (the server no longer wants one)."""
        task = self._tool_tasks.get(key)
        if task is None or task.done():
            return
        task.cancel()
        name, start = self._tool_started.get(key, ("", time.monotonic()))
        log.info("tool call %s (%s) %s", key, name, why)
        self._tool_counts["cancelled"] += 1
        self._publish(ToolCallFinished(key, name, False, time.monotonic() - start, error=why))

    async def _run_tool(self, key: str, call_id: str | None, name: str, args: dict[str, Any],
                        session: live.AsyncSession) -> None:
        outcome = await self._tools.call(name, args)
        self._tool_counts["ok" if outcome.ok else "error"] += 1
        try:
            await session.send_tool_response(function_responses=[types.FunctionResponse(
                id=call_id, name=name, response=outcome.response)])
            self._reply_due()
        except websockets.ConnectionClosed:
            log.warning("tool %s (%s) finished after the connection closed; the resumed "
                        "session will ask again", name, key)
        self._publish(ToolCallFinished(key, name, outcome.ok, outcome.duration_s, outcome.error,
                                       outcome.response if outcome.ok else None))

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
        self._in_turn = True
        self._reply_due_since = time.monotonic()
        self._wake.set()

    def _publish(self, event: LiveEvent) -> None:
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
                self._subscribers[q] += 1
            q.put_nowait(event)
