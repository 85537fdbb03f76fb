"""Is the network usable? A cheap reachability probe for the Live endpoint.

Why it exists: after a network-level failure the supervisor's backoff grows (up to
``session.backoff_cap_s``), and a long outage would otherwise make the *return* wait for the
last, longest delay. Instead, while the link is down the supervisor probes: a plain TCP connect
to exactly where the Live WebSocket connects (the SDK's host and port, or the HTTPS proxy
websockets would use), started every ``session.probe_interval_s``. Each probe is a fresh SYN,
so a connect lost in a black hole never holds up the return the way a single long connect
attempt does (its SYN retransmits come 1, 3, 7 ... s apart). The first probe that connects means
the network is back: the backoff is reset and the session reconnects at once
(docs/live-session.md, "Recovery bound").

A probe costs one TCP handshake and a close (about 5 small packets, no TLS). Host names are
resolved with at most one ``getaddrinfo`` in flight, and the last good answer is reused while
DNS is unreachable, so probing during an outage never ties up the default thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.proxy import get_proxy, parse_proxy
from websockets.uri import parse_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


def endpoint_of(client: Any) -> Endpoint:
    """Where ``client.aio.live.connect()`` opens its TCP connection: the SDK's WebSocket base
    URL (the same private helper ``connect()`` calls), or the proxy websockets picks for it."""
    base = client._api_client._websocket_base_url()
    if isinstance(base, bytes):
        base = base.decode()
    parts = urlsplit(base)
    ws_uri = parse_uri(f"wss://{parts.netloc}/")
    proxy = get_proxy(ws_uri)
    if proxy is not None:
        p = parse_proxy(proxy)
        return Endpoint(p.host, p.port)
    return Endpoint(ws_uri.host, ws_uri.port)


class Probe:
    """``await probe()`` -> True when a TCP connection to the endpoint opens within
    ``timeout_s``."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._literal = _is_ip(endpoint.host)
        self._addrs: list[tuple[Any, ...]] = []
        self._resolving: asyncio.Future[list[Any]] | None = None

    async def __call__(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                for family, addr in await self._addresses():
                    with contextlib.suppress(OSError):
                        _, writer = await asyncio.open_connection(
                            addr[0], self.endpoint.port, family=family)
                        writer.transport.abort()
                        return True
        except TimeoutError:
            pass
        return False

    async def _addresses(self) -> list[tuple[int, tuple[Any, ...]]]:
        if self._literal:
            return [(0, (self.endpoint.host,))]
        loop = asyncio.get_running_loop()
        if self._resolving is None or self._resolving.done():
            self._resolving = asyncio.ensure_future(loop.getaddrinfo(
                self.endpoint.host, self.endpoint.port, type=socket.SOCK_STREAM))
        try:
            infos = await asyncio.shield(self._resolving)
            self._addrs = [(fam, sa) for fam, _, _, _, sa in infos]
        except OSError as e:
            log.debug("probe: cannot resolve %s (%s); using the last answer", self.endpoint.host, e)
        return self._addrs


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def until_reachable(probe: Probe, interval_s: float) -> None:
    """Start a probe every ``interval_s`` (they overlap when a probe hangs) and return as soon
    as one connects; cancelling this cancels the probes in flight."""
    loop = asyncio.get_running_loop()
    flying: set[asyncio.Task[bool]] = set()
    try:
        while True:
            flying.add(asyncio.ensure_future(probe()))
            next_at = loop.time() + interval_s
            while (left := next_at - loop.time()) > 0:
                if not flying:
                    await asyncio.sleep(left)
                    break
                done, flying = await asyncio.wait(flying, timeout=left,
                                                  return_when=asyncio.FIRST_COMPLETED)
                if any(t.result() for t in done):
                    return
    finally:
        for t in flying:
            t.cancel()
