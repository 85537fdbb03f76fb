"""Small daemon parts: feedback store, camera (Picamera2 test double), sd_notify helpers."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from edged.camera import Camera, CameraUnavailable
from edged.config import CameraSettings
from edged.feedback import FeedbackError, FeedbackStore
from edged.notify import Notifier, watchdog_interval

JPEG_MAGIC = b"\xff\xd8\xff"


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


class FakePicamera2:
    """Test double of the subset of picamera2.Picamera2 that edged.camera uses, with the
    same call shapes (create_still_configuration(main={"size": ...}), options["quality"],
    capture_file(fileobj, format="jpeg"))."""

    instances: ClassVar[list[FakePicamera2]] = []

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}
        self.configured: dict[str, Any] | None = None
        self.started = False
        self.closed = False
        FakePicamera2.instances.append(self)

    def create_still_configuration(self, main: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"use_case": "still", "main": {"format": "BGR888", **(main or {})}}

    def configure(self, config: dict[str, Any]) -> None:
        self.configured = config

    def start(self) -> None:
        assert self.configured is not None, "Picamera2 must be configured before start()"
        self.started = True

    def capture_file(self, file_output: io.BytesIO, format: str | None = None) -> None:
        assert self.started and format == "jpeg"
        w, h = self.configured["main"]["size"]  # type: ignore[index]
        file_output.write(JPEG_MAGIC + f"{w}x{h}q{self.options['quality']}".encode())

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


async def test_camera_stills_rate_limit_and_close() -> None:
    settings = CameraSettings(enabled=True, width=640, height=480, jpeg_quality=60,
                              min_interval_s=30)
    cam = Camera(settings, factory=FakePicamera2)
    await cam.open()
    assert cam.status()["state"] == "ok"
    jpeg = await cam.capture_jpeg()
    assert jpeg == JPEG_MAGIC + b"640x480q60"
    assert await cam.capture_jpeg() is None                   # within min_interval_s
    assert await cam.capture_jpeg(force=True) is not None
    assert cam.status()["stills"] == 2
    await cam.close()
    assert FakePicamera2.instances[-1].closed and cam.status()["state"] == "closed"


async def test_camera_unavailable_is_explained() -> None:
    cam = Camera(CameraSettings(enabled=True))                # real import: not on this box
    with pytest.raises(CameraUnavailable, match="apt install python3-picamera2"):
        await cam.open()
    assert cam.status()["state"] == "unavailable"

    def no_camera() -> Any:
        raise IndexError("list index out of range")           # what libcamera does
    cam = Camera(CameraSettings(enabled=True), factory=no_camera)
    with pytest.raises(CameraUnavailable, match="camera not found or busy: IndexError"):
        await cam.open()
    disabled = Camera(CameraSettings())
    await disabled.open()
    assert disabled.status()["state"] == "disabled"


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
