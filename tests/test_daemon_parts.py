"""Small daemon parts: feedback store, sd_notify helpers (the camera: tests/test_camera.py)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from edged.feedback import FeedbackError, FeedbackStore
from edged.notify import Notifier, watchdog_interval


def test_feedback_persists_and_counts(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "state")
    assert store.counts() == {"good": 0, "bad": 0}
    turn = {"user": "¿hora?", "model": "Las tres", "latency_s": 0.8}
    store.record("good", "bien", turn)
    store.record("bad")
    lines = (tmp_path / "state" / "feedback.jsonl").read_text().splitlines()
    assert [json.loads(line)["rating"] for line in lines] == ["good", "bad"]
    assert json.loads(lines[0])["turn"] == turn
    with (tmp_path / "state" / "feedback.jsonl").open("a") as f:
        f.write('{"rating": "go')          # torn last line (power cut mid-write)
    again = FeedbackStore(tmp_path / "state")
    assert again.counts() == {"good": 1, "bad": 1}
    with pytest.raises(FeedbackError, match="rating must be 'good' or 'bad', got 'meh'"):
        again.record("meh")
    with pytest.raises(FeedbackError, match="limit is 500"):
        again.record("bad", "x" * 501)
    assert again.counts() == {"good": 1, "bad": 1}


def test_watchdog_interval_is_half_and_checks_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000",
                              "WATCHDOG_PID": str(os.getpid())}) == 1.0


def test_notifier_sends_to_notify_socket_and_is_a_noop_without(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    Notifier().ready("ok")                                    # no socket: nothing happens
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        n = Notifier()
        n.ready("healthy; cfg=1")
        n.status("healthy; cfg=1")                            # unchanged: not re-sent
        n.status("degraded")
        n.reloading()
        n.stopping()
        s.settimeout(5)
        got = [s.recv(4096).decode() for _ in range(4)]
    assert got[0] == "READY=1\nSTATUS=healthy; cfg=1"
    assert got[1] == "STATUS=degraded"
    assert got[2].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert got[3] == "STOPPING=1\nSTATUS=stopping"


def test_notifier_never_blocks_on_a_full_socket_and_sends_the_rest_later(
        tmp_path: Path) -> None:
    """systemd busy (nobody reads NOTIFY_SOCKET): the daemon's calls return, the queue keeps
    order, and of the STATUS= lines queued meanwhile only the newest is sent."""
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        done = threading.Event()

        def flood() -> None:
            n.ready("ready")
            for i in range(2000):           # far more than the socket can queue
                n.watchdog()
                n.status(f"status {i}")
            done.set()

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        assert done.wait(30), "a notify call blocked on the full socket"
        assert n.deferred > 0
        s.settimeout(0.2)
        got: list[str] = []
        for _ in range(200):                 # drain, letting the notifier catch up
            try:
                while True:
                    got.append(s.recv(4096).decode())
            except TimeoutError:
                pass
            n.flush()
            if got and got[-1] == "STATUS=status 1999":
                break
        n.close()
    assert got[0] == "READY=1\nSTATUS=ready"
    statuses = [m for m in got if m.startswith("STATUS=")]
    assert statuses[-1] == "STATUS=status 1999"
    assert len(statuses) < 1000              # the stale ones were replaced while queued


def test_notifier_abstract_socket_address() -> None:
    name = f"edged-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.watchdog()
        s.settimeout(5)
        assert s.recv(100) == b"WATCHDOG=1"
        n.close()
