"""The daemon's OTA component: apply a bundle, watch the health window, commit or roll back.

The daemon owns every apply (a push with ``edgectl ota apply`` and a pull by
``edged-ota-pull.service`` both arrive over the control socket as ``ota.apply``), because only
the running daemon sees whether the new config works: its event bus carries the Live session's
state, the audio devices and component health.

apply: verify (size, signature) -> admit (replay, expiry, target, minimum version, forbidden
keys, the typed config model) -> :meth:`~edged.ota.state.OtaStore.begin` (the candidate is on
trial) -> reload -> health window -> commit, or roll back and reload again. Keys that only a
restart applies (``audio.*``, ``knowledge.*``, ``session.turn_detection``) make the daemon exit
with :data:`EXIT_RESTART` after marking a clean stop; systemd starts it again
(``RestartForceExitStatus=75``) and the trial continues with a fresh window.

A refused bundle changes nothing on disk; the refusal is kept in memory for ``edgectl status``,
logged (``EDGED_EVENT=ota``) and published as :class:`~edged.events.OtaChanged`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from edged import __version__
from edged.config import Settings
from edged.control.protocol import ReloadResult
from edged.daemon.status import View
from edged.events import Event, EventBus, OtaChanged
from edged.logs import EV_OTA
from edged.ota import health
from edged.ota.bundle import Bundle, BundleError
from edged.ota.pull import shown_url
from edged.ota.state import OtaStore, crash_point, iso

log = logging.getLogger("edged.ota")


class OtaHost(Protocol):
    """What the OTA component needs from the daemon."""

    bus: EventBus
    settings: Settings

    def view(self) -> View: ...
    async def reload(self, why: str) -> ReloadResult: ...
    def request_restart(self, why: str) -> None: ...


def device_id(settings: Settings) -> str:
    return settings.ota.device_id or socket.gethostname()


def changed_sections(old: Settings, new: Settings) -> list[str]:
    return [name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)]


class OtaManager:
    def __init__(self, host: OtaHost, store: OtaStore, admin: Path | None) -> None:
        self.host = host
        self.store = store
        self.admin = admin
        self.last_rejected: dict[str, Any] | None = None
        self._restart_for: str | None = None
        self._lock = asyncio.Lock()
        self._trial: health.HealthWindow | None = None
        self._failed: asyncio.Future[str] | None = None
        self._verdict: asyncio.Future[dict[str, Any]] | None = None
        self._waiting = 0                  # callers waiting for the verdict (edgectl --wait)
        self._window_ends: float | None = None
        self._task: asyncio.Task[None] | None = None
        host.bus.observe(self._on_event, *health.EVENTS)

    # --- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``edgectl ota status --json`` and the ``ota`` part of ``edgectl status``."""
        s = self.host.settings.ota
        out = {**self.store.status(), "device_id": device_id(self.host.settings),
               "groups": list(s.groups), "last_rejected": self.last_rejected,
               "pull_url": shown_url(s.pull_url) if s.pull_url else None,
               "health_window_s": s.health_window_s,
               "window_left_s": None}
        if self._window_ends is not None and self.store.pending is not None:
            out["window_left_s"] = round(max(0.0, self._window_ends - time.monotonic()), 1)
        return out

    def _publish(self, action: str, version: int | None, reason: str = "") -> None:
        self.host.bus.publish(OtaChanged(action, version, self.store.version,
                                         self.store.pending is not None, reason))

    # --- start and stop --------------------------------------------------------------------

    def start(self, boot_note: str | None = None) -> None:
        """Called once the daemon runs: a trial that continues after a restart gets its fresh
        window now."""
        self._publish("loaded", self.store.version, boot_note or "")
        p = self.store.pending
        if p is not None:
            log.info("OTA: version %s continues its trial after a restart (start %s)",
                     p["version"], p.get("starts"),
                     extra={"EDGED_EVENT": EV_OTA, "EDGED_OTA_VERSION": p["version"],
                            "EDGED_OTA_RESULT": "trial"})
            self._open_window(health.Baseline.from_dict(p.get("baseline")),
                              p.get("changed") or [], float(p["window_s"]))

    def on_stop(self) -> None:
        """The daemon stops on purpose: a trial in progress continues at the next start."""
        self._trial = None          # components stopping now are not the candidate's fault
        if self.store.pending is not None:
            self.store.mark_clean_stop()
        if self._task is not None:
            self._task.cancel()

    # --- apply -----------------------------------------------------------------------------

    async def apply(self, raw: bytes, origin: str) -> dict[str, Any]:
        """Verify, admit, put on trial and reload. Returns the trial's description; raises
        BundleError (nothing changed) when the bundle is refused. If it lists ``restart``,
        call :meth:`restart_if_needed` once the caller has the answer."""
        if self._lock.locked() or self.store.pending is not None:
            p = self.store.pending
            raise BundleError("busy", f"version {p['version'] if p else '?'} is on trial; "
                              "wait for its health window to end (edgectl ota status)")
        async with self._lock:
            try:
                bundle, settings = await asyncio.to_thread(self._admit, raw)
            except BundleError as e:
                self._rejected(e, origin)
                raise
            return await self._begin(bundle, settings, origin)

    def _admit(self, raw: bytes) -> tuple[Bundle, Settings]:
        from edged.ota.admit import Device, admit
        from edged.ota.bundle import verify
        from edged.ota.keys import TrustedKeys

        s = self.host.settings
        trusted = TrustedKeys.load(s.ota.trusted_keys_dir)
        for problem in trusted.problems:
            log.warning("OTA: trusted key %s", problem, extra={"EDGED_EVENT": EV_OTA})
        bundle = verify(raw, trusted)
        crash_point("verified")
        dev = Device(device_id(s), tuple(s.ota.groups), __version__, self.store.highest_version)
        return bundle, admit(bundle, dev, datetime.now(UTC), self.admin)

    def _rejected(self, e: BundleError, origin: str) -> None:
        self.last_rejected = {"at": iso(), "reason": e.reason, "message": str(e),
                              "origin": origin, "superseded": False}
        log.warning("OTA: bundle from %s rejected (%s): %s", origin, e.reason, e,
                    extra={"EDGED_EVENT": EV_OTA, "EDGED_OTA_RESULT": "rejected",
                           "EDGED_OTA_REASON": e.reason})
        self._publish("rejected", None, f"{e.reason}: {e}")

    async def _begin(self, bundle: Bundle, new: Settings, origin: str) -> dict[str, Any]:
        v = self.host.view()
        baseline = health.Baseline(
            session_ready=(v.session or {}).get("state") == "ready",
            devices={role: dev.get("state") == "running"
                     for role, dev in _devices(v.audio).items()},
            components_ok=frozenset(n for n, h in v.components.items() if h.state == "ok"))
        changed = changed_sections(self.host.settings, new)
        window_s = self.host.settings.ota.health_window_s
        try:
            await asyncio.to_thread(self.store.begin, bundle, window_s,
                                    {"baseline": baseline.as_dict(), "changed": changed,
                                     "origin": origin})
        except OSError as e:        # disk full, read-only: undo what was written, say so
            if self.store.pending is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.store.rollback,
                                            f"could not write the candidate: {e}")
            raise BundleError("storage", f"cannot write the OTA state in {self.store.dir}: "
                              f"{e}") from None
        version = bundle.meta.version
        if self.last_rejected is not None:     # a later bundle was accepted: old news
            self.last_rejected["superseded"] = True
        log.info("OTA: version %d from %s (key %s) on trial for %.0fs; changes: %s",
                 version, origin, bundle.key_id, window_s, ", ".join(changed) or "nothing",
                 extra={"EDGED_EVENT": EV_OTA, "EDGED_OTA_VERSION": version,
                        "EDGED_OTA_RESULT": "trial", "EDGED_OTA_KEY_ID": bundle.key_id})
        self._publish("trial", version, f"changes: {', '.join(changed) or 'nothing'}")
        self._open_window(baseline, changed, window_s)
        result = await self.host.reload(f"OTA version {version}")
        crash_point("reloaded")
        restart = list(result.get("restart_needed") or [])
        if not result.get("ok"):
            self._fail(f"the reload could not apply it ({result.get('error')})")
        elif restart:
            self._restart_for = f"OTA version {version} changes {', '.join(restart)}"
        return {"version": version, "key_id": bundle.key_id, "changes": changed,
                "window_s": window_s, "restart": restart}

    def restart_if_needed(self) -> None:
        """After the caller has been answered: restart edged when the bundle on trial changed
        settings that only a start applies (the trial continues after it)."""
        why, self._restart_for = self._restart_for, None
        if why is not None:
            self.host.request_restart(why)

    # --- the health window -----------------------------------------------------------------

    def _open_window(self, baseline: health.Baseline, changed: list[str],
                     window_s: float) -> None:
        v = self.host.view()
        self._trial = health.HealthWindow(
            baseline, changed, (v.session or {}).get("state"),
            {role: (dev.get("state", "?"), dev.get("error"))
             for role, dev in _devices(v.audio).items()},
            {n: (h.state, h.detail) for n, h in v.components.items()})
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        self._verdict = loop.create_future()
        self._window_ends = time.monotonic() + window_s
        self._task = asyncio.create_task(self._watch(window_s), name="ota-window")

    def _on_event(self, ev: Event) -> None:
        if self._trial is not None:
            reason = self._trial.observe(ev)
            if reason is not None:
                self._fail(reason)

    def _fail(self, reason: str) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(reason)

    async def _watch(self, window_s: float) -> None:
        trial, failed = self._trial, self._failed
        assert trial is not None and failed is not None
        crash_point("window")
        try:
            reason: str | None = await asyncio.wait_for(asyncio.shield(failed), window_s)
        except TimeoutError:
            reason = trial.verdict()
        self._trial = None
        self._window_ends = None
        crash_point("verdict")
        try:
            if reason is None:
                outcome = await asyncio.to_thread(self.store.commit,
                                                  f"healthy for {window_s:g}s")
                v = outcome["version"]
                log.info("OTA: version %s committed (healthy for %gs)", v, window_s,
                         extra={"EDGED_EVENT": EV_OTA, "EDGED_OTA_VERSION": v,
                                "EDGED_OTA_RESULT": "committed"})
                self._publish("committed", v)
            else:
                outcome = await self.roll_back(reason)
        except OSError as e:
            # The record still names the candidate as pending; the next start settles it.
            log.error("OTA: cannot record the outcome (%s): %s", reason or "healthy", e,
                      extra={"EDGED_EVENT": EV_OTA})
            outcome = {"version": self.store.version, "result": "error", "reason": str(e)}
        if self._verdict is not None and not self._verdict.done():
            self._verdict.set_result(outcome)
        if not self._waiting:          # else the waiter restarts once it has answered
            self.restart_if_needed()

    async def roll_back(self, reason: str) -> dict[str, Any]:
        outcome = await asyncio.to_thread(self.store.rollback, reason)
        v = outcome["version"]
        log.error("OTA: version %s rolled back to %s: %s", v,
                  self.store.version if self.store.version is not None else "no OTA config",
                  reason, extra={"EDGED_EVENT": EV_OTA, "EDGED_OTA_VERSION": v,
                                 "EDGED_OTA_RESULT": "rolled_back", "EDGED_OTA_REASON": reason})
        self._publish("rolled_back", v, reason)
        result = await self.host.reload(f"OTA rollback of version {v}")
        if result.get("restart_needed"):
            self._restart_for = (f"OTA rollback of version {v} changes "
                                 f"{', '.join(result.get('restart_needed') or [])}")
        return outcome

    async def wait_verdict(self) -> dict[str, Any]:
        """The outcome (committed / rolled_back) of the trial in progress."""
        if self._verdict is None:
            raise RuntimeError("no trial in progress")
        self._waiting += 1
        try:
            return await asyncio.shield(self._verdict)
        finally:
            self._waiting -= 1


def _devices(audio: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {role: dev for role in ("capture", "playback")
            if isinstance(dev := (audio or {}).get(role), dict)}
