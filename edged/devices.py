"""What every hardware device thread shares: its health as ``edgectl status`` shows it, and the
recovery loop that opens it, serves it, and opens it again after a failure.

A device that fails to open, vanishes (USB unplugged, camera cable loose) or errors mid-use must
never turn into a crash loop or a log flood: the owner thread logs once per distinct failure,
shows the error in its status, waits ``retry_base_s * 2**n`` (capped, with jitter:
:class:`edged.backoff.Backoff`) and tries again. The sound devices (``edged.audio``) and the
camera (``edged.camera``) run the same loop; only how a device is opened, served and closed,
and which exceptions mean "the device failed", differ.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from edged.backoff import Backoff

DeviceState = Literal["stopped", "opening", "running", "retrying"]
D = TypeVar("D")


@dataclass(slots=True)
class DeviceHealth:
    """Mutable status of one device; written by its thread, read by ``status()``."""

    device: str
    state: DeviceState = "stopped"
    error: str | None = None   # the current problem; cleared when the device works again
    last_error: str | None = None
    failures: int = 0          # consecutive failures (drives the backoff)
    reopens: int = 0           # successful opens after the first
    xruns: int = 0             # overruns (capture) or underruns (playback)
    frames: int = 0
    retry_in_s: float | None = None
    # Called (from the device thread) after every change of state or error; the owner turns it
    # into a DeviceChanged event, so status and health need no polling.
    listener: Callable[[DeviceHealth], None] | None = field(default=None, repr=False)
    _opened_once: bool = field(default=False, repr=False)

    def set_state(self, state: DeviceState) -> None:
        if state != self.state:
            self.state = state
            self._changed()

    def _changed(self) -> None:
        if self.listener is not None:
            self.listener(self)

    def failed(self, log: logging.Logger, what: str, err: Exception) -> None:
        """Record a failure and log it: WARNING when it differs from the last one, DEBUG when
        it repeats, so a device that stays missing does not flood the journal."""
        msg = f"{what} {self.device!r}: {err}"
        self.failures += 1
        if msg != self.last_error:
            log.warning("%s (retrying with backoff)", msg)
        else:
            log.debug("%s (again)", msg)
        changed = msg != self.error
        self.error = self.last_error = msg
        if changed:
            self._changed()

    def opened(self) -> None:
        if self._opened_once:
            self.reopens += 1
        self._opened_once = True
        self.error = None
        self.retry_in_s = None
        self.state = "running"
        self._changed()

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "state": self.state, "error": self.error,
                "last_error": self.last_error, "failures": self.failures,
                "reopens": self.reopens, "frames": self.frames,
                "retry_in_s": self.retry_in_s}


def wait_retry(backoff: Backoff, stop: threading.Event, health: DeviceHealth) -> bool:
    """Sleep the next backoff delay unless ``stop`` is set first; True means "retry"."""
    delay = backoff.next_delay()
    health.set_state("retrying")
    health.retry_in_s = round(delay, 2)
    return not stop.wait(delay)


def keep_open(role: str, stop: threading.Event, health: DeviceHealth, backoff: Backoff,
              log: logging.Logger, open_device: Callable[[], D], serve: Callable[[D], None],
              close_device: Callable[[D], None], errors: tuple[type[Exception], ...],
              on_failure: Callable[[], None] | None = None) -> None:
    """The recovery loop a device thread runs until ``stop``: open the device, ``serve`` it
    until it fails with one of ``errors``, close it, back off, open it again. Exceptions not in
    ``errors`` are bugs and propagate."""
    while not stop.is_set():
        health.set_state("opening")
        try:
            dev = open_device()
        except errors as e:
            health.failed(log, f"cannot open {role} device", e)
            if not wait_retry(backoff, stop, health):
                break
            continue
        health.opened()
        try:
            serve(dev)
        except errors as e:
            health.failed(log, f"{role} device failed", e)
            if on_failure is not None:
                on_failure()
        finally:
            with contextlib.suppress(*errors):
                close_device(dev)
        if not stop.is_set() and not wait_retry(backoff, stop, health):
            break
    health.set_state("stopped")
