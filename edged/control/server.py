"""The control socket server: serves :mod:`edged.control.protocol` to ``edgectl``.

The daemon hands it a table of :class:`Method`s (``edged.daemon.methods``); this module owns
only the transport. Robustness rules, so that no local client - buggy or hostile - can lock
``edgectl health`` out or flood the journal:

* A malformed, oversized, too deeply nested or unknown request gets an error reply and the
  connection keeps working; nothing a client sends can raise out of a connection handler.
  Size and nesting are checked before the JSON parser runs (see ``protocol.parse_request``).
* Each refused request is logged as one line, at most ``REFUSALS_PER_WINDOW`` lines per
  ``REFUSAL_WINDOW_S`` (then one line saying how many were not logged).
* Time limits: a connection that sends nothing for ``control.idle_timeout_s`` is closed, and a
  request line must be complete ``control.request_timeout_s`` after its first byte (a client
  that trickles bytes cannot hold a connection).
* A connection budget (``control.max_connections``): when it is full, the connection that has
  been idle longest is closed to make room; streams (``events``, ``ask``) may hold all but
  ``RESERVED_FOR_UNARY`` connections; and when every connection is busy, ``RESERVED_FOR_HEALTH``
  more are admitted that may only call ``health`` or ``status``.
* Methods that change state (``mutating``) are checked against the caller's SO_PEERCRED -
  root, the daemon's own uid, or members of ``control.group`` - before any of their work.

The socket is created 0660 and chowned to that group, inside a 0750 directory of the same group.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.config import ControlSettings
from edged.control import protocol
from edged.control.protocol import ControlError, ErrorCode, RequestError
from edged.logs import EV_CONTROL
from edged.redact import describe_error

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
DIR_MODE = 0o750
LISTEN_BACKLOG = 256          # a burst of connects waits in the kernel instead of failing
RESERVED_FOR_UNARY = 4        # connections streams may never take
RESERVED_FOR_HEALTH = 2       # admitted beyond max_connections, for health/status only
HEALTH_METHODS = frozenset({"health", "status"})
REFUSAL_WINDOW_S = 10.0
REFUSALS_PER_WINDOW = 10


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Final:
    """Yielded by a streaming handler as its last item: becomes the final (non-partial) reply."""

    result: Any


Params = dict[str, Any]
UnaryHandler = Callable[[Params, Peer], Awaitable[Any]]
StreamHandler = Callable[[Params, Peer], AsyncIterator[Any]]


@dataclass(frozen=True, slots=True)
class Method:
    handler: UnaryHandler | StreamHandler
    mutating: bool = False
    streaming: bool = False


def peer_credentials(sock: socket.socket) -> Peer:
    """The connecting process's pid/uid/gid as the kernel recorded them at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _peer_groups(peer: Peer) -> set[int]:
    """The peer's groups: from /proc (the live process) and the group database (its user)."""
    groups = {peer.gid}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{peer.pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                groups.update(int(g) for g in line.split()[1:])
    with contextlib.suppress(KeyError, OSError):
        groups.update(os.getgrouplist(pwd.getpwuid(peer.uid).pw_name, peer.gid))
    return groups


def is_authorized(peer: Peer, group_gid: int | None, daemon_uid: int | None = None) -> bool:
    """May ``peer`` call methods that change state? root, our own uid, or a group member."""
    daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
    if peer.uid in (0, daemon_uid):
        return True
    return group_gid is not None and group_gid in _peer_groups(peer)


def _resolve_group(name: str) -> tuple[int | None, str | None]:
    try:
        return grp.getgrnam(name).gr_gid, None
    except KeyError:
        return None, (f"control.group {name!r} does not exist, so only root and the daemon's "
                      f"user can change state over the socket; create it with "
                      f"`sudo groupadd --system {name}` and restart edged, or set control.group")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class RefusalLog:
    """One log line per refused request, but at most ``per_window`` lines per ``window_s``;
    the next line after a quiet spell says how many were left out. A flood of bad requests
    thus costs the journal a few lines, not one per request."""

    def __init__(self, per_window: int = REFUSALS_PER_WINDOW,
                 window_s: float = REFUSAL_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._clock = clock
        self._window_start = -window_s
        self._in_window = 0
        self.suppressed = 0
        self.total = 0

    def refused(self, peer: Peer | None, code: str, what: str, *,
                level: int = logging.WARNING, exc_info: bool = False) -> None:
        self.total += 1
        t = self._clock()
        if t - self._window_start >= self.window_s:
            self._window_start, self._in_window = t, 0
        if self._in_window >= self.per_window:
            self.suppressed += 1
            return
        self._in_window += 1
        who = f"uid {peer.uid} pid {peer.pid}" if peer is not None else "a client"
        extra: dict[str, Any] = {"EDGED_EVENT": EV_CONTROL, "EDGED_ERROR_CODE": code}
        if peer is not None:
            extra["EDGED_PEER_UID"] = peer.uid
        more = ""
        if self.suppressed:
            more = (f" ({self.suppressed} more refused requests were not logged; at most "
                    f"{self.per_window} per {self.window_s:g}s)")
            self.suppressed = 0
        log.log(level, "control: refused a request from %s: %s: %s%s", who, code, what, more,
                exc_info=exc_info, extra=extra)


class ControlServer:
    def __init__(self, settings: ControlSettings, methods: dict[str, Method]) -> None:
        self.settings = settings
        self.methods = methods
        self.group_gid, self.group_problem = _resolve_group(settings.group)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self.refusals = RefusalLog()
        self.requests_total = 0
        self.errors_total = 0
        self.evicted_total = 0

    @property
    def path(self) -> Path:
        return self.settings.socket_path

    def apply_settings(self, new: ControlSettings) -> list[str]:
        """Take a reloaded ``[control]``: limits and timeouts apply at once; a new socket path
        or group only after a restart (returned as the keys that need one)."""
        restart = [f"control.{k}" for k in ("socket_path", "group")
                   if getattr(new, k) != getattr(self.settings, k)]
        self.settings = new.model_copy(
            update={"socket_path": self.settings.socket_path, "group": self.settings.group})
        return restart

    async def start(self) -> None:
        path = self.path
        self._prepare_directory(path.parent)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # stale socket from a crashed run; anything else is not ours
            else:
                raise OSError(f"control.socket_path {path} exists and is not a socket; "
                              "move it away or choose another path")
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(path),
                                                       backlog=LISTEN_BACKLOG)
        os.chmod(path, SOCKET_MODE)
        if self.group_gid is not None:
            try:
                os.chown(path, -1, self.group_gid)
            except PermissionError:
                self.group_problem = (
                    f"cannot give {path} to group {self.settings.group!r}: the daemon's user "
                    f"is not a member (add it: `sudo usermod -aG {self.settings.group} edged`)")
        if self.group_problem:
            log.warning("control socket: %s", self.group_problem,
                        extra={"EDGED_EVENT": EV_CONTROL})
        log.info("control socket listening on %s (mode 0660, group %s)", path,
                 self.settings.group)

    def _prepare_directory(self, d: Path) -> None:
        """Create the socket's directory 0750 with the control group (as systemd's
        ``RuntimeDirectory=`` does), so members of the group can reach the socket when the
        daemon is run by hand too. An existing directory they cannot enter is reported."""
        if not d.exists():
            d.mkdir(parents=True, mode=DIR_MODE)
            os.chmod(d, DIR_MODE)           # mkdir's mode is reduced by the umask
            if self.group_gid is not None:
                with contextlib.suppress(PermissionError):   # reported just below
                    os.chown(d, -1, self.group_gid)
        if self.group_gid is None:
            return
        st = d.stat()
        if st.st_mode & 0o001 or (st.st_gid == self.group_gid and st.st_mode & 0o010):
            return
        g = self.settings.group
        self.group_problem = (
            f"members of group {g!r} cannot reach the socket: its directory {d} is group "
            f"{_group_name(st.st_gid)!r}, mode {stat.S_IMODE(st.st_mode):04o}; run `sudo chgrp "
            f"{g} {d} && sudo chmod 0750 {d}` (or remove {d} and let edged create it)")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # --- admission ---------------------------------------------------------------------------

    def _admit(self, conn: _Connection) -> bool:
        """Find room for a new connection: a free slot, the slot of the longest-idle
        connection, or one of the few extra slots kept for ``health``/``status``."""
        normal = [c for c in self._connections.values()
                  if not c.health_only and not c.closing]
        if len(normal) < self.settings.max_connections:
            return True
        idle = [c for c in normal if not c.busy and not c.closing]
        if idle:
            victim = min(idle, key=lambda c: c.last_active)
            victim.close_with(ErrorCode.BUSY, "closed while idle: the control socket had "
                              f"{self.settings.max_connections} connections and needed a slot")
            self.evicted_total += 1
            return True
        if len(self._connections) - len(normal) < RESERVED_FOR_HEALTH:
            conn.health_only = True
            return True
        return False

    def streams_open(self) -> int:
        return sum(1 for c in self._connections.values() if c.streaming)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer: Peer | None = None
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
            conn = _Connection(self, reader, writer, peer)
            if not self._admit(conn):
                self.errors_total += 1
                self.refusals.refused(peer, ErrorCode.BUSY, "every control connection is busy")
                writer.write(protocol.error(
                    None, ErrorCode.BUSY, f"all {self.settings.max_connections} control "
                    "connections are busy; retry in a moment"))
                await writer.drain()
                return
            self._connections[task] = conn
            await conn.serve()
        except (ConnectionError, BrokenPipeError):
            pass
        except Exception as e:      # a bug here must not take the server down, nor flood
            self.refusals.refused(peer, ErrorCode.INTERNAL, describe_error(e),
                                  level=logging.ERROR, exc_info=True)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Connection:
    """One client: a line framer with size and time limits, then sequential requests."""

    def __init__(self, server: ControlServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: Peer) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.buf = bytearray()
        self.eof = False
        self.discarding = False   # inside an oversized line: drop bytes up to its newline
        self.line_started: float | None = None   # first byte of the current request line
        self.last_active = time.monotonic()
        self.busy = False         # a method is running
        self.streaming = False
        self.closing = False
        self.health_only = False  # admitted beyond the budget: health/status only
        self._authorized: bool | None = None

    @property
    def authorized(self) -> bool:
        """Checked once per connection: the peer's groups cannot change under it."""
        if self._authorized is None:
            self._authorized = is_authorized(self.peer, self.server.group_gid)
        return self._authorized

    def close_with(self, code: ErrorCode, message: str) -> None:
        """Say why, then close; the pending read sees EOF and :meth:`serve` returns."""
        self.closing = True
        with contextlib.suppress(Exception):
            self.writer.write(protocol.error(None, code, message))
        self.writer.close()

    async def _fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            self.eof = True
        elif self.line_started is None:
            self.line_started = time.monotonic()
        self.buf += data

    async def _wait_for_bytes(self) -> bool:
        """Read more, within the idle or the request time limit; False: give up on the
        connection (the client was told why)."""
        s = self.server.settings
        if self.line_started is None:
            limit, what = s.idle_timeout_s, "no request"
            timeout = limit
        else:
            limit, what = s.request_timeout_s, "request line incomplete"
            timeout = max(0.0, self.line_started + limit - time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                await self._fill()
        except TimeoutError:
            if self.line_started is not None:
                self.server.errors_total += 1
                self.server.refusals.refused(self.peer, ErrorCode.TIMEOUT,
                                             f"{what} after {limit:g}s")
            self.close_with(ErrorCode.TIMEOUT, f"{what} after {limit:g}s "
                            f"(control.{'idle' if what == 'no request' else 'request'}"
                            "_timeout_s); closing")
            return False
        return True

    def _line_done(self) -> None:
        self.line_started = time.monotonic() if self.buf else None

    async def _next_line(self) -> bytes | None:
        limit = self.server.settings.max_request_bytes
        while not self.closing:
            nl = self.buf.find(b"\n")
            if self.discarding:
                if nl < 0:
                    self.buf.clear()
                else:
                    del self.buf[:nl + 1]
                    self.discarding = False
                    self._line_done()
                    continue
            elif nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                self._line_done()
                if len(line) > limit:
                    await self._refuse(None, ControlError(ErrorCode.TOO_LARGE,
                                                          self._too_large_msg(limit)))
                    continue
                return line
            elif len(self.buf) > limit:
                self.buf.clear()
                self.discarding = True
                await self._refuse(None, ControlError(ErrorCode.TOO_LARGE,
                                                      self._too_large_msg(limit)))
                continue
            if self.eof:
                if self.buf and not self.discarding:
                    line = bytes(self.buf)   # a last request without its newline
                    self.buf.clear()
                    return line
                return None
            if not await self._wait_for_bytes():
                return None
        return None

    @staticmethod
    def _too_large_msg(limit: int) -> str:
        return (f"request exceeds control.max_request_bytes ({limit} bytes); "
                "send one JSON object per line")

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _refuse(self, req_id: Any, e: ControlError, what: str = "") -> None:
        self.server.errors_total += 1
        self.server.refusals.refused(self.peer, e.code, what or e.message[:120])
        await self._send(protocol.error(req_id, e.code, e.message))

    async def serve(self) -> None:
        while (line := await self._next_line()) is not None:
            if not line.strip():
                continue
            self.busy = True
            try:
                await self._handle(line)
            finally:
                self.busy = self.streaming = False
                self.last_active = time.monotonic()

    def _check(self, name: str, method: Method | None) -> Method:
        """May this connection run ``name``? Permission first, then the budget rules."""
        srv = self.server
        if method is None:
            raise ControlError(ErrorCode.UNKNOWN_METHOD, f"unknown method {name!r}; known: "
                               f"{', '.join(sorted(srv.methods))}")
        if method.mutating and not self.authorized:
            raise ControlError(
                ErrorCode.FORBIDDEN,
                f"{name!r} changes state and is allowed only for root, the daemon's user "
                f"and members of group {srv.settings.group!r} (you are uid "
                f"{self.peer.uid}); add yourself with `sudo usermod -aG "
                f"{srv.settings.group} $USER` and log in again")
        if self.health_only and name not in HEALTH_METHODS:
            raise ControlError(ErrorCode.BUSY, f"all {srv.settings.max_connections} control "
                               "connections are busy, so this one may only ask for health "
                               "or status; retry in a moment")
        if method.streaming and (srv.streams_open()
                                 >= srv.settings.max_connections - RESERVED_FOR_UNARY):
            raise ControlError(ErrorCode.BUSY, f"{srv.streams_open()} streams (events, ask) "
                               "are open, the most the control socket allows; close one")
        return method

    async def _handle(self, line: bytes) -> None:
        srv = self.server
        srv.requests_total += 1
        req_id: Any = None
        name = ""
        try:
            req_id, name, params = protocol.parse_request(line)
            method = self._check(name, srv.methods.get(name))
            if method.streaming:
                self.streaming = True
                await self._stream(req_id, method, params)
            else:
                result = await method.handler(params, self.peer)   # type: ignore[misc]
                await self._send(protocol.reply(req_id, result))
        except RequestError as e:
            await self._refuse(e.req_id, e)
        except ControlError as e:
            await self._refuse(req_id, e, f"{name[:40]!r}: {e.message[:120]}" if name else "")
        except (ConnectionError, BrokenPipeError):
            raise
        except Exception as e:
            srv.errors_total += 1
            srv.refusals.refused(self.peer, ErrorCode.INTERNAL, f"{name[:40]!r} failed",
                                 level=logging.ERROR, exc_info=True)
            await self._send(protocol.error(req_id, ErrorCode.INTERNAL, describe_error(e)))

    async def _stream(self, req_id: Any, method: Method, params: Params) -> None:
        """Forward a streaming handler's items; stop early if the client hangs up.

        While streaming, the read side is watched for EOF (``edgectl`` keeps its write side
        open until the final reply), so an abandoned ``events`` stream ends at once instead
        of at its next event. Pipelined requests read meanwhile are served afterwards.
        """
        agen = method.handler(params, self.peer)
        assert isinstance(agen, AsyncIterator)
        limit = self.server.settings.max_request_bytes
        nxt: asyncio.Future[Any] | None = None
        eof_watch: asyncio.Future[None] | None = None
        try:
            while True:
                if nxt is None:
                    nxt = asyncio.ensure_future(anext(agen))
                if eof_watch is None and not self.eof and len(self.buf) <= limit:
                    eof_watch = asyncio.ensure_future(self._fill())
                waiting: set[asyncio.Future[Any]] = {nxt}
                if eof_watch is not None:
                    waiting.add(eof_watch)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if eof_watch is not None and eof_watch in done:
                    eof_watch.result()
                    eof_watch = None
                    if self.eof:
                        return
                if nxt in done:
                    item = nxt.result()
                    nxt = None
                    if isinstance(item, Final):
                        await self._send(protocol.reply(req_id, item.result))
                        return
                    await self._send(protocol.reply(req_id, item, partial=True))
        except StopAsyncIteration:
            await self._send(protocol.reply(req_id, {"done": True}))
        finally:
            for fut in (nxt, eof_watch):
                if fut is not None and not fut.done():
                    fut.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await fut
            with contextlib.suppress(Exception):
                await agen.aclose()   # type: ignore[attr-defined]
