"""A typed client for the control socket: what ``edgectl`` (and the tests) use.

Blocking on purpose: ``edgectl`` is a short-lived command, often run over SSH or from a shell
script, and has no event loop. Each call opens its own connection, so a stream (``events``)
never blocks another call.
"""

from __future__ import annotations

import base64
import grp
import itertools
import json
import math
import os
import pwd
import select
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from edged.control import protocol
from edged.control.protocol import ErrorCode, Health, ReloadResult, Status

_ids = itertools.count(1)


class NotRunning(Exception):
    """No daemon listens on the socket (absent, refused, or it hung up without answering)."""


class Denied(Exception):
    """The socket exists but this user may not connect to it."""


class RemoteError(Exception):
    """The daemon answered with an error; ``code`` is a :class:`ErrorCode` value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


DEADLINE_SLACK_S = 5.0     # added to a daemon-announced deadline (transport, scheduling)


class ControlClient:
    def __init__(self, socket_path: Path, timeout: float | None = 30.0,
                 follow_deadline: bool = True) -> None:
        """``timeout``: seconds to wait for each reply line (``None``: forever).
        ``follow_deadline``: when a partial result announces ``deadline_s`` (the daemon's own
        bound for the rest of the call, e.g. ``ask``), wait that long plus
        ``DEADLINE_SLACK_S`` instead of ``timeout``."""
        if timeout is not None and not (0 < timeout < math.inf):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self.socket_path = socket_path
        self.timeout = timeout
        self.follow_deadline = follow_deadline

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            raise NotRunning(f"no daemon listening on {self.socket_path} ({e.strerror})"
                             ) from None
        except PermissionError:
            s.close()
            raise Denied(denied_hint(self.socket_path)) from None
        except BaseException:
            s.close()
            raise
        return s

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             wait_forever: bool = False, hangup_fd: int | None = None) -> Iterator[Any]:
        """Send one request; yield each ``result`` (partials first, the final one last).

        ``wait_forever``: no reply timeout (for streams that may stay quiet). ``hangup_fd``:
        stop with ``BrokenPipeError`` as soon as this descriptor reports an error or hang-up -
        pass stdout, so ``edgectl events | head -2`` ends when ``head`` does, not at the next
        event, which may be hours away."""
        req_id = next(_ids)
        wait = [None if wait_forever else self.timeout]     # the deadline partial may move it
        with self._connect() as s:
            s.sendall(protocol.request(req_id, method, params))
            for raw in _lines(s, lambda: wait[0], hangup_fd):
                msg = json.loads(raw)
                if msg.get("id") not in (req_id, None):
                    continue
                if not msg.get("ok"):
                    err = msg.get("error") or {}
                    raise RemoteError(err.get("code", "error"),
                                      err.get("message", "unknown error"))
                result = msg.get("result")
                if (self.follow_deadline and msg.get("partial") and isinstance(result, dict)
                        and isinstance(result.get("deadline_s"), int | float)):
                    wait[0] = float(result["deadline_s"]) + DEADLINE_SLACK_S
                yield result
                if not msg.get("partial"):
                    return
        raise NotRunning("the daemon closed the connection before answering (is it stopping?)")

    def call1(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """A unary call: the final result."""
        result = None
        for result in self.call(method, params):  # noqa: B007 - want the last one
            pass
        return result

    # --- typed methods -------------------------------------------------------------------

    def status(self) -> Status:
        return cast(Status, self.call1("status"))

    def health(self) -> Health:
        return cast(Health, self.call1("health"))

    def reload(self) -> ReloadResult:
        return cast(ReloadResult, self.call1("reload"))

    def mute(self, muted: bool = True) -> bool:
        return bool(self.call1("mute" if muted else "unmute")["muted"])

    def listen(self) -> dict[str, Any]:
        """Open a turn now: ``{"listening": True, "question_timeout_s": ...}`` (or ``reason``
        ``"already in a turn"``)."""
        return cast(dict[str, Any], self.call1("listen"))

    def metrics(self) -> str:
        return str(self.call1("metrics")["text"])

    def look(self) -> dict[str, Any]:
        """A fresh still for the owner: ``jpeg_base64`` plus width, height, bytes, times."""
        return cast(dict[str, Any], self.call1("look"))

    def feedback(self, rating: str, note: str = "") -> dict[str, Any]:
        return cast(dict[str, Any], self.call1("feedback", {"rating": rating, "note": note}))

    def ask(self, text: str, hangup_fd: int | None = None) -> Iterator[dict[str, Any]]:
        """Partials ``{"deadline_s": ...}`` first, then ``{"text": ...}`` / ``{"tool": ...}`` /
        ``{"restart": why}`` (the words so far are void), then the finished turn."""
        return self.call("ask", {"text": text}, hangup_fd=hangup_fd)

    def ota_status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.call1("ota.status"))

    def ota_apply(self, bundle: bytes, wait: bool = True, origin: str = "edgectl"
                  ) -> Iterator[dict[str, Any]]:
        """The trial (``stage``), then the result: ``pending`` or, with ``wait``, the health
        window's outcome; that may take ``ota.health_window_s``, so there is no reply timeout."""
        return self.call("ota.apply", {"bundle": base64.b64encode(bundle).decode("ascii"),
                                       "wait": wait, "origin": origin}, wait_forever=wait)

    def events(self, hangup_fd: int | None = None) -> Iterator[dict[str, Any]]:
        """The event stream (``hello`` first), until the daemon stops; no timeout."""
        return self.call("events", wait_forever=True, hangup_fd=hangup_fd)


def _lines(s: socket.socket, timeout_s: Callable[[], float | None],
           hangup_fd: int | None) -> Iterator[bytes]:
    """Reply lines from ``s``; ``TimeoutError`` if none for ``timeout_s()`` seconds."""
    poller = select.poll()
    poller.register(s, select.POLLIN)
    if hangup_fd is not None:
        poller.register(hangup_fd, 0)     # 0: only error/hang-up are reported
    buf = b""
    while True:
        while (nl := buf.find(b"\n")) >= 0:
            line, buf = buf[:nl], buf[nl + 1:]
            yield line
        timeout = timeout_s()
        ready = poller.poll(None if timeout is None else timeout * 1000)
        if not ready:
            raise TimeoutError(f"no reply within {timeout:g}s")
        if any(fd == hangup_fd for fd, _ in ready):
            raise BrokenPipeError("the reader of our output has gone")
        data = s.recv(65536)
        if not data:
            if buf:
                yield buf
            return
        buf += data


def denied_hint(path: Path) -> str:
    """Why this user cannot open the socket, and the one fix that applies.

    The usual fix is joining the socket's group, but a member who still gets "permission
    denied" needs another: a new login (the membership is newer than the session), or a
    directory on the way that the group cannot enter."""
    for d in reversed(path.parents):
        if d.exists() and not os.access(d, os.X_OK):
            st = d.stat()
            return (f"permission denied: the directory {d} (group {_group(st.st_gid)!r}, mode "
                    f"{stat.S_IMODE(st.st_mode):04o}) does not let you reach {path.name}; "
                    f"it should be group edged, mode 0750 (`sudo chgrp edged {d} && sudo "
                    f"chmod 0750 {d}`)")
    try:
        group = _group(path.stat().st_gid)
        gid = path.stat().st_gid
    except OSError:
        return f"permission denied on {path}: run as root or as a member of group edged"
    if gid in os.getgroups():
        return (f"permission denied on {path}, although you are in its group {group!r}: "
                "check the socket's mode (0660)")
    try:
        member = pwd.getpwuid(os.getuid()).pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        member = False
    if member:
        return (f"permission denied on {path}: you were added to group {group!r} after this "
                f"login; log out and in again (or run `newgrp {group}`)")
    return (f"permission denied on {path}: run as root or join its group {group!r} "
            f"(`sudo usermod -aG {group} $USER`, then log in again)")


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


__all__ = ["ControlClient", "Denied", "ErrorCode", "NotRunning", "RemoteError"]
