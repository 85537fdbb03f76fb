"""The health window's verdict: is the candidate config working? A pure function of events.

A candidate is blamed only for what it could have broken, so a device that was offline or had
no sound card before the update does not roll back a good bundle:

* **Live session**: a configuration error from Gemini (close 1007/1008 -> ``config_error``)
  fails at once. If the bundle changed ``gemini.*`` or ``session.*`` and the session was ready
  before, it must be ready again at the end of the window; a session that was not ready before
  (no network) is not judged beyond config errors - a network-only failure is not the
  bundle's fault.
* **Audio devices**: a device that was running before, or whose ``[audio]`` settings the
  bundle changed, must be running at the end.
* **Components**: one that was ``ok`` before must not be degraded or failed at the end.
* **The reload itself** must have applied (checked by the caller on the reload's result: a
  reload someone else asks for during the window is not the candidate's).
* **Crashes and watchdog kills** cannot be seen from inside; the next start rolls back
  (:meth:`edged.ota.state.OtaStore.boot`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from edged.events import ComponentChanged, DeviceChanged, Event, SessionChanged

# What the window listens to.
EVENTS: tuple[type[Event], ...] = (SessionChanged, DeviceChanged, ComponentChanged)
SESSION_SECTIONS = frozenset({"gemini", "session"})


@dataclass(frozen=True, slots=True)
class Baseline:
    """The daemon as it was before the candidate was loaded (stored with the trial, so a trial
    that continues after a restart is judged against the same picture)."""

    session_ready: bool = False
    devices: Mapping[str, bool] = field(default_factory=dict)   # role -> was running
    components_ok: frozenset[str] = frozenset()

    def as_dict(self) -> dict[str, Any]:
        return {"session_ready": self.session_ready, "devices": dict(self.devices),
                "components_ok": sorted(self.components_ok)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Baseline:
        d = d or {}
        return cls(bool(d.get("session_ready")), dict(d.get("devices") or {}),
                   frozenset(d.get("components_ok") or ()))


class HealthWindow:
    """Feed it every event of :data:`EVENTS`; :meth:`observe` returns a reason as soon as the
    candidate has definitely failed, :meth:`verdict` judges the end of the window."""

    def __init__(self, baseline: Baseline, changed: Collection[str],
                 session: str | None, devices: Mapping[str, tuple[str, str | None]],
                 components: Mapping[str, tuple[str, str]]) -> None:
        """``session``, ``devices``, ``components``: their state when the window opens."""
        self.baseline = baseline
        self.changed = frozenset(changed)
        self.session = session
        self.devices = dict(devices)
        self.components = dict(components)

    def observe(self, ev: Event) -> str | None:
        if isinstance(ev, SessionChanged):
            self.session = ev.state
            if ev.state == "config_error":
                return f"Gemini Live rejected the configuration ({ev.detail})"
        elif isinstance(ev, DeviceChanged):
            self.devices[ev.role] = (ev.state, ev.error)
        elif isinstance(ev, ComponentChanged):
            self.components[ev.name] = (ev.state, ev.detail)
        return None

    def verdict(self) -> str | None:
        """``None``: healthy; else why not."""
        if (self.changed & SESSION_SECTIONS and self.baseline.session_ready
                and self.session != "ready"):
            return (f"the Live session did not come back within the health window (state "
                    f"{self.session}; it was ready before the update)")
        for role, (state, error) in sorted(self.devices.items()):
            if ((self.baseline.devices.get(role) or "audio" in self.changed)
                    and state != "running"):
                return f"{role} device is {state}: {error or 'not open'}"
        for name in sorted(self.baseline.components_ok):
            state, detail = self.components.get(name, ("ok", ""))
            if state in ("degraded", "failed"):
                return f"component {name} is {state}: {detail or 'no detail'}"
        return None
