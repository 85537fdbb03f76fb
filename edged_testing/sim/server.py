"""The Live simulator server: TLS WebSocket endpoint, recording, sessions and handles.

``LiveSimulator`` is the object tests hold: it owns the listening socket, the records of every
connection and the sessions that resumption handles point into; each socket is served by an
``edged_testing.sim.connection.Connection``.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import logging
import re
import secrets
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from edged_testing.sim import wire
from edged_testing.sim.connection import Connection
from edged_testing.sim.rest import RestEndpoint, RestRequest
from edged_testing.sim.scenario import Action, Rule, Scenario
from edged_testing.sim.state import ConnectionRecord, ImageRecord, SessionState

log = logging.getLogger("edged_testing.sim")


class LiveSimulator:
    """A local Gemini Live endpoint for the real google-genai SDK (see package docstring)."""

    def __init__(self, scenario: Scenario | None = None, host: str = "127.0.0.1", port: int = 0,
                 cert_dir: Path | None = None, record_audio: bool = True) -> None:
        self.scenario = scenario or Scenario.default()
        self.host, self.port = host, port
        self.record_audio = record_audio
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cert_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edged-sim-")
            cert_dir = Path(self._tmp.name)
        self.ca_file, self._cert_file, self._key_file = wire.ensure_certs(cert_dir)
        self.connections: list[ConnectionRecord] = []
        self.sessions: dict[str, SessionState] = {}
        self.errors: list[str] = []
        self.max_frame_bytes = 0
        self._handles: dict[str, str] = {}
        self._messages: list[tuple[int, dict[str, Any]]] = []
        self._arrived: list[float] = []          # time.monotonic() of each of _messages
        self._live: set[Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._fired: set[int] = set()
        self._ids = itertools.count(1)
        self._transcript_index = 0
        self._server: Server | None = None
        self._rest: RestEndpoint | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        tls = wire.server_ssl_context(self._cert_file, self._key_file)
        self._rest = RestEndpoint(self.host, tls)
        await self._rest.start()
        self._server = await serve(
            self._handle, self.host, self.port,
            ssl=tls,
            process_request=self._check_path, ping_interval=None, close_timeout=2,
            max_size=16 * 2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Live simulator listening on %s (CA %s)", self.base_url, self.ca_file)

    async def stop(self) -> None:
        for c in list(self._live):
            c.abort_if_stalled()
        if self._server is not None:
            self._server.close()
            # a handler still running scripted actions (e.g. a long Sleep in a setup rule)
            # would hold wait_closed() until they end: stop it
            for task in list(self._handlers):
                task.cancel()
            await self._server.wait_closed()
            self._server = None
        if self._rest is not None:
            await self._rest.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> LiveSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def rest_base_url(self) -> str:
        """Where the REST calls (embeddings) go; ``edged_testing.sim.rest`` says why it differs."""
        assert self._rest is not None, "start the simulator first"
        return f"https://{self.host}:{self._rest.port}"

    @property
    def rest_requests(self) -> list[RestRequest]:
        return self._rest.requests if self._rest is not None else []

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    # --- observation -----------------------------------------------------------------------

    def messages(self, kind: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Every normalised client message as (connection index, {kind: body}), in arrival
        order; ``kind`` filters by top-level key ("realtimeInput", "clientContent", ...)."""
        return [(i, m) for i, m in self._messages if kind is None or kind in m]

    def arrivals(self, kind: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        """Like :meth:`messages`, with when each arrived (``time.monotonic()``, the clock of
        every edged latency timestamp) instead of the connection: wire-level latencies."""
        return [(t, m) for t, (_, m) in zip(self._arrived, self._messages, strict=True)
                if kind is None or kind in m]

    def images(self) -> list[ImageRecord]:
        """Every image clients sent as realtime input, over all connections in order."""
        return [im for conn in self.connections for im in conn.images]

    def reply_audio(self) -> list[bytes]:
        """The reply audio sent, one bytes object per completed turn, over all connections in
        order (what a client that plays everything should have played)."""
        turns, current = [], bytearray()
        for conn in self.connections:
            for m in conn.sent:
                content = m.get("serverContent", {})
                for part in content.get("modelTurn", {}).get("parts", []):
                    if "inlineData" in part:
                        current += part["inlineData"]["data"]
                if content.get("turnComplete"):
                    turns.append(bytes(current))
                    current.clear()
        return turns

    async def wait_for(self, predicate: Callable[[LiveSimulator], bool],
                       timeout: float) -> None:  # noqa: ASYNC109 - the public API takes it
        """Poll ``predicate(sim)`` until true; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator condition not met within {timeout}s")
            await asyncio.sleep(0.01)

    def inject(self, *actions: Action, connection: int = -1) -> None:
        """Run actions now on an open connection (default: the newest), in the background.

        For faults whose timing depends on the client's state rather than on a client event
        (e.g. drop while the supervisor is mid-reconnect); declarative rules cover the rest.
        """
        index = connection % len(self.connections) if self.connections else 0
        for c in self._live:
            if c.record.index == index and c.session is not None:
                c.spawn(c.run_actions(list(actions), c.context("", "text", "inject")))
                return
        raise LookupError(f"connection {connection} is not open (open: "
                          f"{sorted(c.record.index for c in self._live)})")

    def expire_handles(self) -> None:
        """Forget every resumption handle (as the real server does after 2 h): the next
        resume attempt is refused with 1008 and the client must start a new session."""
        self._handles.clear()
        for session in self.sessions.values():
            session.handles.clear()

    # --- internals used by connections -----------------------------------------------------

    def error(self, conn: int, text: str) -> None:
        log.error("connection %d: %s", conn, text)
        self.errors.append(f"connection {conn}: {text}")

    def record(self, conn: ConnectionRecord, msg: dict[str, Any]) -> None:
        conn.messages.append(msg)
        self._messages.append((conn.index, msg))
        self._arrived.append(time.monotonic())

    def rules(self, on: str, **kw: Any) -> Rule | None:
        for i, r in enumerate(self.scenario.rules):
            if r.once and i in self._fired:
                continue
            if r.matches(on, **kw):
                self._fired.add(i)
                return r
        return None

    def next_transcript(self) -> str:
        t = self.scenario.transcripts
        i, self._transcript_index = self._transcript_index, self._transcript_index + 1
        return t[i] if i < len(t) else self.scenario.default_transcript

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def issue_handle(self, session: SessionState) -> str:
        handle = secrets.token_urlsafe(24)   # opaque, like the real server's handles
        session.handles[handle] = len(session.history)
        self._handles[handle] = session.id
        return handle

    def resume(self, handle: str) -> SessionState | None:
        sid = self._handles.get(handle)
        if sid is None:
            return None
        session = self.sessions[sid]
        del session.history[session.handles[handle]:]
        return session

    def _check_path(self, conn: ServerConnection, request: Request) -> Response | None:
        if wire.api_version(request.path) is None:
            log.warning("rejected HTTP request for unknown path %s", request.path.split("?")[0])
            return conn.respond(http.HTTPStatus.NOT_FOUND, "Not Found: not a Live API path\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path
        headers = ws.request.headers
        record = ConnectionRecord(
            index=len(self.connections), path=path.split("?", 1)[0],
            api_key_present=bool(headers.get("x-goog-api-key") or headers.get("authorization")
                                 or re.search(r"[?&]key=.", path)),
            opened_at=time.time(),
        )
        self.connections.append(record)
        log.info("connection %d opened: %s", record.index, record.path)
        conn = Connection(self, ws, record, wire.api_version(path) or "v1beta")
        self._live.add(conn)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await conn.run()
        finally:
            self._live.discard(conn)
            self._handlers.discard(handler)  # type: ignore[arg-type]
            await conn.finish()
            log.info("connection %d closed: %s %r by %s", record.index, record.close_code,
                     record.close_reason, record.closed_by)
