"""The still policy as pure functions: when is a still refused, and which events ask for one.

Kept apart from the device code so the rules (muted means nothing is captured, at most one still
per ``min_interval_s``, automatic stills only under ``camera.send_on``) are tests on plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edged.events import Event, VoiceStateChanged, WakeWordDetected

RefusalCode = Literal["disabled", "muted", "absent", "busy", "rate_limited", "failed"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why no still is taken; ``message`` is what the model (or the owner) is told."""

    code: RefusalCode
    message: str

    def __str__(self) -> str:
        return self.message


def refusal(*, enabled: bool, muted: bool, device_state: str, unavailable: str | None,
            busy: bool, since_last_s: float | None, min_interval_s: float,
            rate_limited: bool = True) -> Refusal | None:
    """``None`` if a still may be taken now, else why not - most fundamental reason first.

    ``unavailable`` is the last open failure's kind (absent/busy/failed) while the device is not
    running; ``since_last_s`` the age of the last still sent to the model (None: none yet);
    ``rate_limited`` is False for stills that never reach the model (``edgectl look``). The
    messages are short on purpose: the model says them to the user; the owner finds the
    device's own error (cable, apt package, ...) in ``edgectl status``.
    """
    if not enabled:
        return Refusal("disabled", "privacy: the camera is switched off in the settings "
                       "(camera.enabled = false)")
    if muted:
        return Refusal("muted", "privacy: the device is muted, so the camera is off; it works "
                       "again when the user unmutes it")
    if device_state != "running":
        if unavailable == "busy":
            return Refusal("busy", "camera busy: another program is using the camera")
        if unavailable == "failed":
            return Refusal("failed", "camera failed: it stopped answering and is being "
                           "restarted; try again in a moment")
        return Refusal("absent", "no camera: no camera is connected to the device")
    if busy:
        return Refusal("busy", "camera busy: another still is being taken right now")
    if rate_limited and since_last_s is not None and since_last_s < min_interval_s:
        return Refusal("rate_limited", f"rate limited: a still was sent {since_last_s:.1f} s ago "
                       f"(at most one every {min_interval_s:g} s); it shows the current view")
    return None


def automatic_reason(send_on: str, event: Event) -> str | None:
    """The reason for an automatic still this event asks for under ``camera.send_on``, if any:
    the wake word (``wake``) or the start of a spoken turn (``speech_start``)."""
    if send_on == "wake" and isinstance(event, WakeWordDetected):
        return "wake"
    if (send_on == "speech_start" and isinstance(event, VoiceStateChanged)
            and event.state == "listening" and event.previous != "listening"):
        return "speech_start"
    return None
