"""A TCP relay on loopback that can lose the network: for outage tests with real sockets.

Put it between the Live client and the simulator (``gemini.base_url`` points at the proxy; the
simulator's certificate names 127.0.0.1, so TLS still verifies) and switch it:

* :meth:`NetProxy.down` ``("refuse")`` - as when the device has no route: new connections are
  refused at once (``ECONNREFUSED``) and open ones are reset (RST);
* :meth:`NetProxy.down` ``("blackhole")`` - as when a link dies silently: new connections get no
  answer at all (their SYNs are dropped, so a connect hangs until its timeout) and open ones are
  frozen (nothing is relayed either way);
* :meth:`NetProxy.up` - the network is usable again. Frozen connections are reset (the server
  gave up on them meanwhile) unless ``resume=True``.

No root and no packet filter: a refused port is a bound socket that is not listening (the port
stays reserved, so nobody else takes it while it is "down"), and a black hole is a listening
socket with a backlog of 0 whose only queue slot is taken by the proxy's own connection - Linux
then drops further SYNs (``tcp_abort_on_overflow = 0``, the default), exactly what a dead link
looks like to a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger("edged_testing.netproxy")

Mode = Literal["up", "refuse", "blackhole"]
CHUNK = 65536


def _bound(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.setblocking(False)
    return s


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a peer that lost the connection's state does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Pair:
    """One relayed connection: client socket <-> upstream socket, two pump tasks."""

    def __init__(self, client: socket.socket, upstream: socket.socket,
                 on_client_end: Callable[[], None]) -> None:
        self.client, self.upstream = client, upstream
        self.on_client_end = on_client_end
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: list[asyncio.Task[None]] = []

    async def pump(self, src: socket.socket, dst: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.flowing.wait()
                data = await loop.sock_recv(src, CHUNK)
                await self.flowing.wait()       # frozen meanwhile: hold it until up()
                if not data and src is self.client:
                    self.on_client_end()
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                await loop.sock_sendall(dst, data)
        except OSError:
            if src is self.client:
                self.on_client_end()
            self.reset()

    def reset(self) -> None:
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        _reset(self.client)
        _reset(self.upstream)


class NetProxy:
    """Relays ``host:port`` (chosen at :meth:`start`) to ``target``; see the module doc."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.mode: Mode = "up"
        self.changed_at = time.monotonic()
        self.accepted = 0                  # connections relayed (probes included)
        # (time.monotonic(), "open" | "client_end", connection number): what the client did
        self.log: list[tuple[float, str, int]] = []
        self._reserve: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._filler: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._pairs: set[_Pair] = set()

    async def start(self) -> None:
        self._reserve = _bound(self.host, 0)       # keeps the port ours while "refusing"
        self.port = self._reserve.getsockname()[1]
        self._listen(128)

    async def stop(self) -> None:
        self._unlisten()
        for pair in list(self._pairs):
            pair.reset()
        self._pairs.clear()
        if self._reserve is not None:
            self._reserve.close()
            self._reserve = None

    async def __aenter__(self) -> NetProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def down(self, mode: Literal["refuse", "blackhole"] = "refuse") -> None:
        """Lose the network (see the module doc for what each mode looks like)."""
        self._unlisten()
        if mode == "refuse":
            for pair in list(self._pairs):
                pair.reset()
            self._pairs.clear()
        else:
            for pair in self._pairs:
                pair.flowing.clear()
            self._listen(0)
            self._filler = socket.create_connection((self.host, self.port), timeout=1)
        self.mode, self.changed_at = mode, time.monotonic()
        log.info("network down (%s)", mode)

    async def up(self, resume: bool = False) -> None:
        """The network is usable again; ``resume`` lets frozen connections carry on."""
        self._unlisten()
        for pair in list(self._pairs):
            if resume:
                pair.flowing.set()
            else:
                pair.reset()
                self._pairs.discard(pair)
        self._listen(128)
        self.mode, self.changed_at = "up", time.monotonic()
        log.info("network up")

    # --- internals -------------------------------------------------------------------------

    def _listen(self, backlog: int) -> None:
        self._listener = _bound(self.host, self.port)
        self._listener.listen(backlog)
        if backlog:
            self._accept_task = asyncio.create_task(self._accept(self._listener))

    def _unlisten(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None
        for s in (self._listener, self._filler):
            if s is not None:
                s.close()
        self._listener = self._filler = None

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(listener)
            client.setblocking(False)
            self.accepted += 1
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            try:
                await loop.sock_connect(upstream, self.target)
            except OSError:
                _reset(client)
                upstream.close()
                continue
            n = self.accepted
            self.log.append((time.monotonic(), "open", n))
            pair = _Pair(client, upstream, lambda n=n: self.log.append(  # type: ignore[misc]
                (time.monotonic(), "client_end", n)))
            pair.tasks = [asyncio.create_task(pair.pump(client, upstream)),
                          asyncio.create_task(pair.pump(upstream, client))]
            self._pairs.add(pair)
            for t in pair.tasks:
                t.add_done_callback(lambda _t, p=pair: self._finished(p))

    def _finished(self, pair: _Pair) -> None:
        if all(t.done() for t in pair.tasks):
            self._pairs.discard(pair)
            for s in (pair.client, pair.upstream):
                s.close()
