"""The control socket protocol on a real unix socket: framing, errors, streaming, SO_PEERCRED."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.config import ControlSettings
from edged.control.protocol import ControlError
from edged.control.server import (
    ControlServer,
    Final,
    Method,
    Peer,
    is_authorized,
    peer_credentials,
)

NOBODY = 65534
AUDIO_GID = 29   # Debian's fixed gid for "audio"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="edged-ctl-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _methods(calls: list[str]) -> dict[str, Method]:
    async def status(params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"health": "healthy", "uid": peer.uid}

    async def change(params: dict[str, Any], peer: Peer) -> dict[str, Any]:
        calls.append("change")
        return {"changed": True}

    async def fail(params: dict[str, Any], peer: Peer) -> None:
        raise ControlError("invalid_params", "x must be positive")

    async def boom(params: dict[str, Any], peer: Peer) -> None:
        raise RuntimeError("handler bug")

    async def count(params: dict[str, Any], peer: Peer) -> AsyncIterator[Any]:
        for i in range(int(params.get("n", 3))):
            yield {"i": i}
        yield Final({"total": params.get("n", 3)})

    async def forever(params: dict[str, Any], peer: Peer) -> AsyncIterator[Any]:
        try:
            while True:
                yield {"tick": True}
                await asyncio.sleep(0.01)
        finally:
            calls.append("forever closed")

    return {"status": Method(status), "change": Method(change, mutating=True),
            "fail": Method(fail), "boom": Method(boom),
            "count": Method(count, streaming=True), "forever": Method(forever, streaming=True)}


async def _server(path: Path, calls: list[str], group: str = "root",
                  max_bytes: int = 4096) -> ControlServer:
    srv = ControlServer(ControlSettings(socket_path=path, group=group,
                                        max_request_bytes=max_bytes), _methods(calls))
    await srv.start()
    return srv


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path: Path) -> Client:
        r, w = await asyncio.open_unix_connection(str(path), limit=2**20)
        return cls(r, w)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        assert line.endswith(b"\n"), line
        return json.loads(line)

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   req_id: Any = 1) -> dict[str, Any]:
        await self.send(json.dumps({"v": 1, "id": req_id, "method": method,
                                    "params": params or {}}).encode() + b"\n")
        return await self.recv()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_socket_mode_group_and_basic_call(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    srv = await _server(path, [], group="audio")
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == AUDIO_GID
        c = await Client.connect(path)
        reply = await c.call("status", req_id="abc")
        assert reply == {"v": 1, "id": "abc", "ok": True,
                         "result": {"health": "healthy", "uid": os.getuid()}}
        await c.close()
    finally:
        await srv.close()
    assert not path.exists()


async def test_missing_group_is_reported_clearly(sock_dir: Path) -> None:
    srv = await _server(sock_dir / "c.sock", [], group="no-such-group-edged")
    try:
        assert srv.group_problem is not None
        assert "'no-such-group-edged' does not exist" in srv.group_problem
        assert "groupadd" in srv.group_problem
    finally:
        await srv.close()


async def test_thousand_malformed_inputs_then_status_still_answers(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    srv = await _server(path, [], max_bytes=4096)
    bad: list[bytes] = [
        b"not json", b"{", b"[]", b"42", b'"str"', b"null", b"\xff\xfe\x00garbage",
        b'{"v":2,"id":1,"method":"status"}', b'{"v":1,"id":1}', b'{"v":1,"method":7}',
        b'{"v":1,"id":[1],"method":"status"}', b'{"v":1,"id":1,"method":"status","params":[]}',
        b'{"v":1,"id":1,"method":"nope"}', b'{"v":1,"id":1,"method":"fail"}',
        b'{"v":1,"id":1,"method":"boom"}', b"{" * 500, b'{"v":1,"id":1,"method":"' + b"a" * 300,
    ]
    try:
        c = await Client.connect(path)
        codes: dict[str, int] = {}
        for i in range(1000):
            await c.send(bad[i % len(bad)] + b"\n")
            reply = await c.recv()
            assert reply["ok"] is False and reply["v"] == 1
            assert reply["error"]["message"]
            codes[reply["error"]["code"]] = codes.get(reply["error"]["code"], 0) + 1
        assert {"parse_error", "invalid_request", "unsupported_version", "unknown_method",
                "invalid_params", "internal"} <= set(codes)
        # Oversized line (no newline for > max bytes), then a normal request on the same conn.
        await c.send(b'{"v":1,"id":1,"method":"status","params":{"pad":"' + b"x" * 20000)
        reply = await c.recv()
        assert reply["error"]["code"] == "too_large"
        assert "control.max_request_bytes (4096 bytes)" in reply["error"]["message"]
        await c.send(b'"}}\n')   # the rest of the oversized line is discarded silently
        assert (await c.call("status", req_id=7))["result"]["health"] == "healthy"
        # Several requests in one write (pipelining) get their replies in order.
        await c.send(b'{"v":1,"id":1,"method":"status"}\n{"v":1,"id":2,"method":"status"}\n')
        assert [(await c.recv())["id"], (await c.recv())["id"]] == [1, 2]
        await c.close()
        # A client that vanishes mid-line does not hurt the next one.
        c2 = await Client.connect(path)
        await c2.send(b'{"v":1,"id":1,"meth')
        await c2.close()
        c3 = await Client.connect(path)
        assert (await c3.call("status"))["ok"] is True
        await c3.close()
        assert srv.errors_total >= 1000
    finally:
        await srv.close()


async def test_streaming_partials_then_final_and_client_hangup(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    calls: list[str] = []
    srv = await _server(path, calls)
    try:
        c = await Client.connect(path)
        first = await c.call("count", {"n": 3}, req_id=5)
        rest = [await c.recv() for _ in range(3)]
        assert [m.get("partial") for m in [first, *rest]] == [True, True, True, None]
        assert [m["result"] for m in [first, *rest]] == [{"i": 0}, {"i": 1}, {"i": 2},
                                                         {"total": 3}]
        assert all(m["id"] == 5 for m in [first, *rest])
        # An endless stream stops (generator closed) when the client hangs up.
        await c.call("forever")
        await c.close()
        for _ in range(200):
            if "forever closed" in calls:
                break
            await asyncio.sleep(0.01)
        assert "forever closed" in calls
    finally:
        await srv.close()


def test_peer_credentials_from_a_socketpair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer = peer_credentials(a)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert is_authorized(peer, group_gid=None)            # our own uid
    stranger = Peer(pid=0, uid=NOBODY, gid=NOBODY)
    assert not is_authorized(stranger, group_gid=AUDIO_GID, daemon_uid=1234)
    assert is_authorized(Peer(pid=0, uid=0, gid=0), group_gid=None, daemon_uid=1234)


_CLIENT = """
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rb")
out = {"uid": os.getuid()}
for m in ("status", "change"):
    s.sendall(json.dumps({"v": 1, "id": m, "method": m}).encode() + b"\\n")
    out[m] = json.loads(f.readline())
print(json.dumps(out))
"""


def _as_other_user(path: Path, extra_groups: list[int]) -> dict[str, Any]:
    proc = subprocess.run(["/usr/bin/python3", "-I", "-c", _CLIENT, str(path)],
                          user=NOBODY, group=NOBODY, extra_groups=extra_groups,
                          capture_output=True, text=True, timeout=30, check=True)
    return json.loads(proc.stdout)


async def test_state_changes_refused_for_other_uid_allowed_for_group_member(
        sock_dir: Path) -> None:
    assert os.getuid() == 0, "the test switches to uid nobody"
    path = sock_dir / "c.sock"
    calls: list[str] = []
    srv = await _server(path, calls, group="audio")
    try:
        path.chmod(0o666)   # let the peer in through the filesystem: SO_PEERCRED must stop it
        out = await asyncio.to_thread(_as_other_user, path, [])
        assert out["uid"] == NOBODY
        assert out["status"]["ok"] is True and out["status"]["result"]["uid"] == NOBODY
        err = out["change"]["error"]
        assert out["change"]["ok"] is False and err["code"] == "forbidden"
        assert "uid 65534" in err["message"] and "'audio'" in err["message"]
        assert calls == []
        member = await asyncio.to_thread(_as_other_user, path, [AUDIO_GID])
        assert member["change"] == {"v": 1, "id": "change", "ok": True,
                                    "result": {"changed": True}}
        assert calls == ["change"]
    finally:
        await srv.close()


async def test_stale_socket_is_replaced_but_other_files_are_not(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    srv = await _server(path, [])
    await srv.close()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket"):
        await _server(path, [])
    assert path.read_text() == "not a socket"
