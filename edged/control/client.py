"""A typed client for the control socket: what ``edgectl`` (and the tests) use.

Blocking on purpose: ``edgectl`` is a short-lived command, often run over SSH or from a shell
script, and has no event loop. Each call opens its own connection, so a stream (``events``)
never blocks another call.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator
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


class ControlClient:
    def __init__(self, socket_path: Path, timeout: float | None = 30.0) -> None:
        """``timeout``: seconds to wait for each reply line (``None``: forever)."""
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             wait_forever: bool = False) -> Iterator[Any]:
        """Send one request; yield each ``result`` (partials first, the final one last).
        ``wait_forever``: no reply timeout (for streams that may stay quiet)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(None if wait_forever else self.timeout)
        try:
            s.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            raise NotRunning(f"no daemon listening on {self.socket_path} ({e.strerror})"
                             ) from None
        except PermissionError:
            s.close()
            raise Denied(f"permission denied on {self.socket_path}: run as root or as a member "
                         "of the socket's group (see control.group; `sudo usermod -aG edged "
                         "$USER`)") from None
        req_id = next(_ids)
        with s, s.makefile("rb") as f:
            s.sendall(protocol.request(req_id, method, params))
            for raw in f:
                msg = json.loads(raw)
                if msg.get("id") not in (req_id, None):
                    continue
                if not msg.get("ok"):
                    err = msg.get("error") or {}
                    raise RemoteError(err.get("code", "error"),
                                      err.get("message", "unknown error"))
                yield msg.get("result")
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

    def metrics(self) -> str:
        return str(self.call1("metrics")["text"])

    def look(self) -> dict[str, Any]:
        """A fresh still for the owner: ``jpeg_base64`` plus width, height, bytes, times."""
        return cast(dict[str, Any], self.call1("look"))

    def feedback(self, rating: str, note: str = "") -> dict[str, Any]:
        return cast(dict[str, Any], self.call1("feedback", {"rating": rating, "note": note}))

    def ask(self, text: str) -> Iterator[dict[str, Any]]:
        """Partials ``{"text": ...}`` / ``{"tool": ...}``, then the finished turn."""
        return self.call("ask", {"text": text})

    def events(self) -> Iterator[dict[str, Any]]:
        """The event stream (``hello`` first), until the daemon stops; no timeout."""
        return self.call("events", wait_forever=True)


__all__ = ["ControlClient", "Denied", "ErrorCode", "NotRunning", "RemoteError"]
