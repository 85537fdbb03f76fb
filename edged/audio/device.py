"""What capture and playback share: the ALSA form of the device recovery loop.

Device health and the loop itself live in :mod:`edged.devices` (the camera runs the same loop);
here they are bound to ALSA: an ``alsaaudio.ALSAAudioError`` is what "the device failed" means,
and a PCM is closed with ``pcm.close()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import alsaaudio

from edged.backoff import Backoff
from edged.devices import DeviceHealth
from edged.devices import keep_open as _keep_open

__all__ = ["DeviceHealth", "keep_open"]


def keep_open(role: str, stop: threading.Event, health: DeviceHealth, backoff: Backoff,
              log: logging.Logger, open_pcm: Callable[[], alsaaudio.PCM],
              serve: Callable[[alsaaudio.PCM], None],
              on_failure: Callable[[], None] | None = None) -> None:
    """The recovery loop capture and playback threads both run until ``stop``: open the
    device, ``serve`` it until it fails, close it, back off, open it again."""
    _keep_open(role, stop, health, backoff, log, open_pcm, serve, lambda pcm: pcm.close(),
               (alsaaudio.ALSAAudioError,), on_failure)
