"""sd_notify for a ``Type=notify`` service: READY / RELOADING / STOPPING / STATUS / WATCHDOG.

Thin on purpose: python-systemd's ``systemd.daemon.notify`` already returns ``False`` without
doing anything when ``$NOTIFY_SOCKET`` is unset, so the daemon runs the same code under
systemd, in a terminal and in tests (where a test binds the datagram socket itself).

The watchdog interval is *not* pinged from here on a timer: the daemon pings from its main
event loop after a liveness check (edge_ops.md §1), so a stalled loop stops the pings and
systemd kills and restarts the process. This module only says how often to ping.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from systemd import daemon as sd_daemon

log = logging.getLogger(__name__)


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


class Notifier:
    """Sends sd_notify messages; every call is a no-op outside systemd."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            sd_daemon.notify(message)
        except OSError as e:  # a vanished notify socket must never take the daemon down
            log.warning("sd_notify failed: %s", e)

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
