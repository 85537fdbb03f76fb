"""sd_notify for a ``Type=notify`` service: READY / RELOADING / STOPPING / STATUS / WATCHDOG.

The messages are sent on a **non-blocking** datagram socket owned here, not with
``systemd.daemon.notify``: libsystemd's ``sd_notify`` opens a blocking socket per call, and when
the receiver's queue is full (systemd busy, or a test that reads slowly) ``sendmsg`` blocks the
calling thread - here the event loop, so the whole daemon would freeze, watchdog included. A
message that does not fit right now is kept and re-sent by :meth:`Notifier.flush` (the daemon
calls it every second); of several pending ``STATUS=`` lines only the newest is kept, because
``STATUS=`` always describes *now*. Without ``$NOTIFY_SOCKET`` every call is a no-op, so the
daemon runs the same code under systemd, in a terminal and in tests.

The watchdog interval is *not* pinged from here on a timer: the daemon pings from its main
event loop after a liveness check, so a stalled loop stops the pings and systemd kills and
restarts the process. This module only says how often to ping.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_PENDING = 64       # messages kept while the notify socket is full (oldest dropped)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or ``None`` if off.

    ``$WATCHDOG_PID`` (when set) must be our pid: otherwise the watchdog is meant for another
    process (e.g. we were started by a wrapper) and pinging would keep a dead parent alive.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


def _address(value: str) -> str:
    """``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract socket."""
    return "\0" + value[1:] if value.startswith("@") else value


class Notifier:
    """Sends sd_notify messages without ever blocking; every call is a no-op outside systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._addr = _address(env.get("NOTIFY_SOCKET", ""))
        self.enabled = bool(self._addr)
        self._sock: socket.socket | None = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING)
        self._last_status = ""
        self.deferred = 0           # sends that found the socket full (retried later)

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        if message.startswith("STATUS=") and "\n" not in message:
            # a newer STATUS= replaces any pending one: only the current state matters
            self._pending = deque((m for m in self._pending if not m.startswith("STATUS=")
                                   or "\n" in m), maxlen=MAX_PENDING)
        self._pending.append(message)
        self.flush()

    def flush(self) -> None:
        """Send what is pending, in order, until the socket would block."""
        while self._pending:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)
                self._sock.sendto(self._pending[0].encode(), self._addr)
            except BlockingIOError:
                self.deferred += 1
                return
            except OSError as e:    # a vanished notify socket must never take the daemon down
                log.warning("sd_notify failed: %s", e)
                self._pending.popleft()
                continue
            self._pending.popleft()

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC is required by v253+ Type=notify-reload; harmless on 252.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str = "stopping") -> None:
        self._last_status = status
        self._send(f"STOPPING=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Send ``STATUS=`` only when it changed (it is shown by ``systemctl status``)."""
        status = status.replace("\n", " ")
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start/stop time (e.g. a slow index open on a Zero 2 W)."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
