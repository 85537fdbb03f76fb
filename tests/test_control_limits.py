"""The control socket under a hostile or careless local client: idle and half-written
connections, floods of bad requests, deeply nested JSON - and `edgectl health` still answers.

Real unix sockets, the real ControlServer, the real edgectl (in a thread, as a shell would run
it). Waits are on conditions (EOF, a reply); the timeouts configured here are only what the
server enforces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_control import NOBODY, _as_other_user, sock_dir  # noqa: F401

from edged import edgectl
from edged.config import ControlSettings
from edged.control.protocol import MAX_NESTING, nesting_depth
from edged.control.server import (
    RESERVED_FOR_HEALTH,
    RESERVED_FOR_UNARY,
    ControlServer,
    Final,
    Method,
    Peer,
    RefusalLog,
)

WAIT_S = 60.0      # liveness bound only: every wait below ends on a condition


class Methods:
    """health/status, a handler that echoes what it received, a gate that holds a call open,
    a stream that stays quiet, and a state-changing call that records whether it ran."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.ran: list[str] = []
        self.echoed: list[dict[str, Any]] = []

    def table(self) -> dict[str, Method]:
        async def health(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
            return {"health": "healthy", "problems": []}

        async def echo(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
            self.echoed.append(p)
            return p

        async def hold(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
            await self.gate.wait()
            return {}

        async def quiet(p: dict[str, Any], peer: Peer) -> AsyncIterator[Any]:
            yield {"type": "hello"}
            await self.gate.wait()
            yield Final({})

        async def change(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
            self.ran.append("change")
            return {}

        return {"health": Method(health), "status": Method(health), "echo": Method(echo),
                "hold": Method(hold), "quiet": Method(quiet, streaming=True),
                "change": Method(change, mutating=True)}


@pytest.fixture
def methods() -> Iterator[Methods]:
    m = Methods()
    yield m
    m.gate.set()


async def serve(path: Path, methods: Methods, **settings: Any) -> ControlServer:
    srv = ControlServer(ControlSettings(socket_path=path, group="root", **settings),
                        methods.table())
    await srv.start()
    return srv


async def connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path), limit=2**20)


async def request(w: asyncio.StreamWriter, r: asyncio.StreamReader, method: str,
                  params: dict[str, Any] | None = None) -> dict[str, Any]:
    w.write(json.dumps({"v": 1, "id": 1, "method": method, "params": params or {}}).encode()
            + b"\n")
    await w.drain()
    return json.loads(await asyncio.wait_for(r.readline(), WAIT_S))


async def closed_by_server(r: asyncio.StreamReader) -> list[dict[str, Any]]:
    """Everything the server sent until it closed the connection."""
    lines = (await asyncio.wait_for(r.read(), WAIT_S)).splitlines()
    return [json.loads(line) for line in lines]


async def edgectl_health(path: Path) -> int:
    return await asyncio.to_thread(edgectl.main, ["--socket", str(path), "--timeout", "30",
                                                  "health"])


HOSTILE: list[bytes] = [
    b"[" * 60000,                                          # RecursionError bait
    b'{"v":1,"id":1,"method":"echo","params":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
    b'{"v":1,"id":1,"method":"echo","params":{"s":"' + b"[" * 5000 + b'"}}',   # not nesting
    b"\xff\xfe not utf-8",
    b'{"v":1,"id":1,"method":"' + b"x" * 300 + b'"}',
    b'{"v":1,"id":1,"method":"change"}',                   # fine for root; see the nobody test
    b"9" * 5000,                                           # int too long for the parser
    b'{"v":1,"id":1,"method":"echo","params":[]}',
    b"x" * 70000,                                          # over max_request_bytes
]


async def test_200_idle_connections_and_2000_hostile_requests_health_still_answers(
        sock_dir: Path, methods: Methods, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO)
    path = sock_dir / "c.sock"
    srv = await serve(path, methods)
    srv.refusals = RefusalLog(per_window=10, window_s=3600.0)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(200):                       # idle, and half-written lines
            r, w = await connect(path)
            if i % 2:
                w.write(b'{"v":1,"id":1,"meth')
            idle.append((r, w))
        assert await edgectl_health(path) == 0

        async def hostile(n: int) -> tuple[int, int]:
            r, w = await connect(path)
            answered = refused = 0
            for i in range(n):
                w.write(HOSTILE[i % len(HOSTILE)] + b"\n")
                await w.drain()
                reply = json.loads(await asyncio.wait_for(r.readline(), WAIT_S))
                answered += reply["v"] == 1
                refused += reply["ok"] is False
            w.close()
            return answered, refused

        flood = [asyncio.ensure_future(hostile(100)) for _ in range(20)]
        healths = []
        while not all(f.done() for f in flood):
            healths.append(await edgectl_health(path))
        results = await asyncio.gather(*flood)
        assert sum(a for a, _ in results) == 2000
        refused = sum(r for _, r in results)
        assert refused >= 1500
        healths.append(await edgectl_health(path))
        assert healths and set(healths) == {0}, healths

        assert srv.evicted_total >= 200 - srv.settings.max_connections
        assert len(srv._connections) <= srv.settings.max_connections + RESERVED_FOR_HEALTH
        assert srv.refusals.total >= refused       # every bad request was counted ...
        refusals = [r for r in caplog.records if "refused a request" in r.getMessage()]
        assert len(refusals) == 10                 # ... and logged at most 10 times
        text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
        assert "Traceback" not in text and "RecursionError" not in text
        assert not any(r.exc_info for r in caplog.records)
    finally:
        for _, w in idle:
            w.close()
        await srv.close()


async def test_idle_and_trickling_connections_are_closed(sock_dir: Path,  # noqa: F811
                                                         methods: Methods) -> None:
    path = sock_dir / "c.sock"
    srv = await serve(path, methods, idle_timeout_s=0.2, request_timeout_s=0.3)
    try:
        r, _ = await connect(path)
        said = await closed_by_server(r)
        assert said[-1]["error"]["code"] == "timeout"
        assert "control.idle_timeout_s" in said[-1]["error"]["message"]

        r, w = await connect(path)                 # a request that never ends its line
        w.write(b'{"v":1,"id":1,"method":"health"')
        said = await closed_by_server(r)
        assert said[-1]["error"]["code"] == "timeout"
        assert "control.request_timeout_s" in said[-1]["error"]["message"]

        r, w = await connect(path)                 # a stream is not idle
        w.write(b'{"v":1,"id":1,"method":"quiet"}\n')
        assert json.loads(await r.readline())["partial"] is True
        await asyncio.sleep(0.5)                   # longer than both limits
        methods.gate.set()
        assert json.loads(await asyncio.wait_for(r.readline(), WAIT_S))["result"] == {}
        w.close()
    finally:
        await srv.close()


async def test_budget_evicts_the_idlest_keeps_room_for_health(sock_dir: Path,  # noqa: F811
                                                              methods: Methods) -> None:
    path = sock_dir / "c.sock"
    srv = await serve(path, methods, max_connections=8)
    conns = [await connect(path) for _ in range(8)]
    try:
        # idle connections make room, the longest-idle first
        r9, w9 = await connect(path)
        assert (await request(w9, r9, "health"))["result"]["health"] == "healthy"
        said = await closed_by_server(conns[0][0])
        assert said[-1]["error"]["code"] == "busy" and "idle" in said[-1]["error"]["message"]
        # streams may take all but RESERVED_FOR_UNARY connections
        streams = conns[1:1 + 8 - RESERVED_FOR_UNARY]
        for r, w in streams:
            assert (await request(w, r, "quiet"))["partial"] is True
        r, w = conns[-1]
        refused = await request(w, r, "quiet")
        assert refused["error"]["code"] == "busy" and "streams" in refused["error"]["message"]
        # every connection busy: a few more may still ask for health and status only
        holders = [conns[5], conns[6], conns[7], (r9, w9)]
        for _r, w in holders:
            w.write(b'{"v":1,"id":1,"method":"hold"}\n')
            await w.drain()
        await asyncio.wait_for(_until(lambda: all(
            c.busy for c in srv._connections.values())), WAIT_S)
        extra = [await connect(path) for _ in range(RESERVED_FOR_HEALTH)]
        for r, w in extra:
            assert (await request(w, r, "status"))["result"]["health"] == "healthy"
        assert (await request(*reversed(extra[0]), "echo"))["error"]["code"] == "busy"
        r, _ = await connect(path)                 # beyond that: busy, closed at once
        said = await closed_by_server(r)
        assert said[-1]["error"]["code"] == "busy"
        methods.gate.set()
        assert await edgectl_health(path) == 0
    finally:
        for _, w in conns:
            w.close()
        await srv.close()


async def _until(pred: Any) -> None:
    """Poll the server's own bookkeeping, which has no event to wait on."""
    while not pred():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def test_nesting_is_refused_before_parsing_and_params_are_cleaned(
        sock_dir: Path, methods: Methods) -> None:  # noqa: F811
    path = sock_dir / "c.sock"
    srv = await serve(path, methods)
    try:
        r, w = await connect(path)
        for line in (b"[" * 60000, b"{" + b'"a":{' * 2000 + b"}" * 2001):
            w.write(line + b"\n")
            reply = json.loads(await asyncio.wait_for(r.readline(), WAIT_S))
            assert reply["error"]["code"] == "invalid_request"
            assert f"deeper than {MAX_NESTING} levels" in reply["error"]["message"]
        # strings full of brackets are not nesting; escaped quotes do not end them early
        ok = await request(w, r, "echo", {"s": "[" * 100 + '\\"' + "{" * 100})
        assert ok["ok"] is True
        # the boundary cleans untrusted text: lone surrogates, compatibility forms, controls
        w.write(b'{"v":1,"id":2,"method":"echo","params":{"text":"a\\ud800b \\ufdfa\\u0000"}}\n')
        reply = json.loads(await asyncio.wait_for(r.readline(), WAIT_S))
        assert methods.echoed[-1]["text"] == "a\ufffdb صلى الله عليه وسلم"
        assert reply["result"]["text"] == methods.echoed[-1]["text"]
        w.close()
    finally:
        await srv.close()
    assert nesting_depth(b'{"a":[[1]]}') <= 3
    assert nesting_depth(b'{"x":"' + b"[" * 50 + b'"}') == 1
    assert nesting_depth(b"[" * 40 + b"]" * 40) == 40


async def test_permission_is_checked_before_params(sock_dir: Path,  # noqa: F811
                                                   methods: Methods) -> None:
    path = sock_dir / "c.sock"
    srv = await serve(path, methods)
    try:
        path.chmod(0o666)
        out = await asyncio.to_thread(_as_other_user, path, [])
        assert out["uid"] == NOBODY and out["change"]["error"]["code"] == "forbidden"
        assert methods.ran == []
    finally:
        await srv.close()


def test_refusal_log_is_one_line_per_refusal_then_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    log = RefusalLog(per_window=2, window_s=10.0, clock=lambda: now[0])
    peer = Peer(1, 2, 3)
    for _ in range(5):
        log.refused(peer, "parse_error", "not JSON")
    now[0] = 10.0
    log.refused(peer, "parse_error", "not JSON")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and log.total == 6
    assert lines[0] == "control: refused a request from uid 2 pid 1: parse_error: not JSON"
    assert "(3 more refused requests were not logged" in lines[2]


AUDIO_GID = 29   # Debian's fixed gid for "audio"
_DENIED = """
import sys
from pathlib import Path
from edged.control.client import ControlClient, Denied
try:
    ControlClient(Path(sys.argv[1])).health()
except Denied as e:
    print(e)
"""


def _edgectl_as_nobody(path: Path, groups: list[int]) -> str:
    return subprocess.run([sys.executable, "-c", _DENIED, str(path)], user=NOBODY,
                          group=NOBODY, extra_groups=groups, capture_output=True, text=True,
                          timeout=60, check=True, cwd="/").stdout


async def test_run_by_hand_the_socket_directory_gets_the_control_group(
        sock_dir: Path, methods: Methods) -> None:  # noqa: F811
    """A daemon started by hand creates its runtime directory 0750 with the control group,
    as systemd's RuntimeDirectory= would, so group members can reach the socket."""
    path = sock_dir / "run" / "control.sock"
    srv = ControlServer(ControlSettings(socket_path=path, group="audio"), methods.table())
    await srv.start()
    try:
        st = path.parent.stat()
        assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == AUDIO_GID
        assert srv.group_problem is None
        member = await asyncio.to_thread(_edgectl_as_nobody, path, [AUDIO_GID])
        assert member == ""                      # no Denied: the member got through
        stranger = await asyncio.to_thread(_edgectl_as_nobody, path, [])
        assert "does not let you reach control.sock" in stranger
    finally:
        await srv.close()


async def test_a_directory_the_group_cannot_enter_is_reported(
        sock_dir: Path, methods: Methods) -> None:  # noqa: F811
    d = sock_dir / "private"
    d.mkdir(mode=0o700)
    srv = ControlServer(ControlSettings(socket_path=d / "c.sock", group="audio"),
                        methods.table())
    await srv.start()
    try:
        assert srv.group_problem is not None
        assert f"sudo chgrp audio {d} && sudo chmod 0750 {d}" in srv.group_problem
    finally:
        await srv.close()


async def test_denied_hint_names_the_group_to_join(sock_dir: Path,  # noqa: F811
                                                   methods: Methods) -> None:
    srv = await serve(sock_dir / "c.sock", methods)
    try:
        path = sock_dir / "c.sock"
        os.chown(path, -1, AUDIO_GID)
        out = await asyncio.to_thread(_edgectl_as_nobody, path, [])
        assert "join its group 'audio' (`sudo usermod -aG audio $USER`" in out
    finally:
        await srv.close()
