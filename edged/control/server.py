"""The control socket server: serves :mod:`edged.control.protocol` to ``edgectl``.

The daemon hands it a table of :class:`Method`s (``edged.daemon.methods``); this module owns
only the transport. Robustness rules: a malformed, oversized or unknown request gets an error
reply and the connection keeps working (the next line is read normally); nothing a client sends
can raise out of a connection handler. Methods that change state (``mutating``) are checked
against the caller's SO_PEERCRED: root, the daemon's own uid, or members of ``control.group``.
The socket is created 0660 and chowned to that group (the runtime directory is 0750 too).
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.config import ControlSettings
from edged.control import protocol
from edged.control.protocol import ControlError, ErrorCode, RequestError
from edged.logs import EV_CONTROL

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
SOCKET_MODE = 0o660


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


class ControlServer:
    def __init__(self, settings: ControlSettings, methods: dict[str, Method]) -> None:
        self.settings = settings
        self.methods = methods
        self.group_gid, self.group_problem = _resolve_group(settings.group)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.requests_total = 0
        self.errors_total = 0

    @property
    def path(self) -> Path:
        return self.settings.socket_path

    def apply_settings(self, new: ControlSettings) -> list[str]:
        """Take a reloaded ``[control]``: the request limit applies at once; a new socket path
        or group only after a restart (returned as the keys that need one)."""
        restart = [f"control.{k}" for k in ("socket_path", "group")
                   if getattr(new, k) != getattr(self.settings, k)]
        self.settings = self.settings.model_copy(
            update={"max_request_bytes": new.max_request_bytes,
                    "stop_timeout_s": new.stop_timeout_s})
        return restart

    async def start(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # stale socket from a crashed run; anything else is not ours
            else:
                raise OSError(f"control.socket_path {path} exists and is not a socket; "
                              "move it away or choose another path")
        self._server = await asyncio.start_unix_server(self._on_connect, path=str(path))
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

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                writer.write(protocol.error(
                    None, ErrorCode.BUSY, f"more than {MAX_CONNECTIONS} control connections "
                    "are open; close some and retry"))
                await writer.drain()
                return
            sock = writer.get_extra_info("socket")
            peer = peer_credentials(sock)
            await _Connection(self, reader, writer, peer).serve()
        except (ConnectionError, BrokenPipeError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Connection:
    """One client: a line framer with a size cap, then sequential request handling."""

    def __init__(self, server: ControlServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: Peer) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.buf = bytearray()
        self.eof = False
        self.discarding = False   # inside an oversized line: drop bytes up to its newline

    async def _fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            self.eof = True
        self.buf += data

    async def _next_line(self) -> bytes | None:
        limit = self.server.settings.max_request_bytes
        while True:
            nl = self.buf.find(b"\n")
            if self.discarding:
                if nl < 0:
                    self.buf.clear()
                else:
                    del self.buf[:nl + 1]
                    self.discarding = False
                    continue
            elif nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                if len(line) > limit:
                    await self._send(protocol.error(None, ErrorCode.TOO_LARGE,
                                                   self._too_large_msg(limit)))
                    continue
                return line
            elif len(self.buf) > limit:
                self.buf.clear()
                self.discarding = True
                await self._send(protocol.error(None, ErrorCode.TOO_LARGE,
                                                   self._too_large_msg(limit)))
                continue
            if self.eof:
                if self.buf and not self.discarding:
                    line = bytes(self.buf)   # a last request without its newline
                    self.buf.clear()
                    return line
                return None
            await self._fill()

    @staticmethod
    def _too_large_msg(limit: int) -> str:
        return (f"request exceeds control.max_request_bytes ({limit} bytes); "
                "send one JSON object per line")

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def serve(self) -> None:
        while (line := await self._next_line()) is not None:
            if not line.strip():
                continue
            await self._handle(line)

    async def _handle(self, line: bytes) -> None:
        srv = self.server
        srv.requests_total += 1
        req_id: Any = None
        try:
            req_id, name, params = protocol.parse_request(line)
            method = srv.methods.get(name)
            if method is None:
                raise ControlError(ErrorCode.UNKNOWN_METHOD, f"unknown method {name!r}; known: "
                                   f"{', '.join(sorted(srv.methods))}")
            if method.mutating and not is_authorized(self.peer, srv.group_gid):
                log.warning("control: refused %s from uid %d pid %d", name, self.peer.uid,
                            self.peer.pid, extra={"EDGED_EVENT": EV_CONTROL,
                                                  "EDGED_PEER_UID": self.peer.uid})
                raise ControlError(
                    ErrorCode.FORBIDDEN,
                    f"{name!r} changes state and is allowed only for root, the daemon's user "
                    f"and members of group {srv.settings.group!r} (you are uid "
                    f"{self.peer.uid}); add yourself with `sudo usermod -aG "
                    f"{srv.settings.group} $USER` and log in again")
            if method.streaming:
                await self._stream(req_id, method, params)
            else:
                result = await method.handler(params, self.peer)   # type: ignore[misc]
                await self._send(protocol.reply(req_id, result))
        except RequestError as e:
            srv.errors_total += 1
            await self._send(protocol.error(e.req_id, e.code, e.message))
        except ControlError as e:
            srv.errors_total += 1
            await self._send(protocol.error(req_id, e.code, e.message))
        except (ConnectionError, BrokenPipeError):
            raise
        except Exception as e:
            srv.errors_total += 1
            log.exception("control: %s failed", line[:80])
            await self._send(protocol.error(req_id, ErrorCode.INTERNAL,
                                             f"{type(e).__name__}: {e}"))

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
