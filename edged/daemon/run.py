"""The daemon object: composes the components, runs them, and owns the systemd lifecycle.

What lives elsewhere: restarting failed components (:mod:`~edged.daemon.supervisor`), the status
document and problem list (:mod:`~edged.daemon.status`, pure functions), the control verbs
(:mod:`~edged.daemon.methods`), the turn log and journal lines
(:mod:`~edged.daemon.observers`). What stays here: start-up, signals, ``READY``/``RELOADING``/
``STOPPING``/``WATCHDOG``, reload and the shutdown order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edged import __version__
from edged.camera.component import Camera
from edged.config import DEFAULT_OVERRIDE_CONFIG, ConfigError, Settings, load_settings
from edged.control.protocol import ControlError, ErrorCode, ReloadResult
from edged.control.server import ControlServer
from edged.daemon import status as st
from edged.daemon.methods import ControlMethods
from edged.daemon.observers import TurnLog, journal
from edged.daemon.supervisor import Supervisor
from edged.device_tools import device_tools
from edged.events import (
    ComponentChanged,
    ConfigReloaded,
    DeviceChanged,
    Event,
    EventBus,
    HealthChanged,
    MuteChanged,
    OtaChanged,
    Reconnecting,
    SessionChanged,
    ToolCallFinished,
    TurnComplete,
    TurnFailed,
    TurnFinished,
    VoiceStateChanged,
)
from edged.feedback import FeedbackStore
from edged.logs import EV_ERROR, EV_LIFECYCLE, EV_OTA, EV_RELOAD, setup_logging
from edged.memory import release_free_memory
from edged.metrics import Metrics, Snapshot
from edged.notify import Notifier, watchdog_interval
from edged.redact import describe_error, set_secrets
from edged.tools import ToolRegistry

if TYPE_CHECKING:
    from edged.ota.state import OtaStore

log = logging.getLogger("edged.daemon")

EXIT_CONFIG = 78            # EX_CONFIG: RestartPreventExitStatus=78 in edged.service
EXIT_RESTART = 75           # EX_TEMPFAIL: RestartForceExitStatus=75 (an OTA change needs it)
HOUSEKEEPING_S = 1.0
INDEX_REFRESH_S = 30.0
READY_DEVICES_WITHIN_S = 5.0
# Events after which health and the STATUS= line may have changed.
_STATUS_INPUTS = (ComponentChanged, SessionChanged, DeviceChanged, VoiceStateChanged,
                  ConfigReloaded, MuteChanged, TurnFailed, TurnComplete, OtaChanged)


def config_version(settings: Settings) -> str:
    """Short content hash of the effective (redacted) config: changes iff the config does."""
    blob = json.dumps(settings.redacted(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


class Daemon:
    def __init__(self, settings: Settings, args: argparse.Namespace,
                 notifier: Notifier | None = None, ota_store: OtaStore | None = None,
                 ota_note: str | None = None) -> None:
        self.settings = settings
        self.args = args
        self.notifier = notifier or Notifier()
        self.bus = EventBus()
        self.supervisor = Supervisor(self.bus)
        self.metrics = Metrics()
        self.turn_log = TurnLog()
        self.feedback = FeedbackStore(settings.paths.state_dir)
        self.camera = Camera(settings.camera, self.bus)
        self.tools = ToolRegistry(settings.tools.timeout_s)
        self.live: Any = None          # LiveSession, once it could be created
        self.voice: Any = None         # VoiceLoop, once ALSA could be loaded
        self.control: ControlServer | None = None
        self.ota: Any = None           # OtaManager (edged.ota.apply), imported lazily
        self._ota_store, self._ota_note = ota_store, ota_note
        self.exit_code = 0
        self.index: dict[str, Any] = {"state": "unknown"}
        self.muted = False
        self.started_at = time.time()
        self.version = config_version(settings)
        self.loaded_at = time.time()
        self.last_reload: dict[str, Any] = {"ok": True, "at": None, "error": None,
                                            "restart_needed": []}
        self._stop = asyncio.Event()
        self._heartbeat = time.monotonic()
        self._reload_lock = asyncio.Lock()
        self._last_problems: list[str] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._tool_error: str | None = None
        self.bus.observe(self.metrics.on_event, *Metrics.EVENTS)
        self.bus.observe(self.turn_log.on_turn, TurnFinished)
        self.bus.observe(journal, TurnFinished, Reconnecting, ToolCallFinished)
        self.bus.observe(self._status_changed, *_STATUS_INPUTS)
        self._trim_due = True          # after start-up, then after every finished turn
        self.bus.observe(self._after_turn, TurnFinished)

    # --- what status and the control methods read --------------------------------------------

    def view(self) -> st.View:
        control = None
        if self.control is not None:
            control = {"socket": str(self.settings.control.socket_path),
                       "group": self.settings.control.group,
                       "group_problem": self.control.group_problem}
        return st.View(
            components=dict(self.supervisor.health),
            session=self.live.status() if self.live is not None else None,
            audio=self.voice.status() if self.voice is not None else None,
            camera=self.camera.status(), index=self.index,
            config={"version": self.version, "loaded_at": st.iso(self.loaded_at),
                    "loaded_at_epoch": self.loaded_at,
                    "admin_file": str(self.args.config) if self.args.config else None,
                    "override_file": str(self.args.override) if self.args.override else None,
                    "last_reload": self.last_reload},
            control=control,      # type: ignore[arg-type]
            muted=self.muted, feedback=self.feedback.counts(), turns=self.turn_log.recent(),
            started_at=self.started_at, ota=self.ota.status() if self.ota is not None else None)

    def refresh_snapshot(self) -> None:
        """Copy component state into the metrics snapshot (the HTTP thread reads only that)."""
        v = self.view()
        session, sync = v.session or {}, self.index.get("last_sync")
        sync_ok = sync_ts = None
        if isinstance(sync, dict):
            sync_ok = sync.get("status") in ("ok", "skipped")
            with contextlib.suppress(TypeError, ValueError):
                sync_ts = datetime.fromisoformat(str(sync.get("time"))).timestamp()
        self.metrics.snapshot = Snapshot(
            healthy=not st.problems(v), muted=self.muted,
            bytes_up=session.get("bytes_up"), bytes_down=session.get("bytes_down"),
            vad_gated_ratio=((v.audio or {}).get("vad") or {}).get("gated_ratio"),
            index_generation=self.index.get("generation"),
            index_bytes=self.index.get("db_bytes"), index_docs=self.index.get("documents"),
            index_chunks=self.index.get("chunks"), last_sync_ok=sync_ok,
            last_sync_timestamp=sync_ts, config_reload_ok=bool(self.last_reload["ok"]),
            components={n: h.state for n, h in v.components.items()})

    def _status_changed(self, ev: Event | None = None) -> None:
        """Observer: health and the STATUS= line follow every event that can change them."""
        v = self.view()
        problems = st.problems(v)
        if problems != self._last_problems:
            self._last_problems = problems
            self.bus.publish(HealthChanged("degraded" if problems else "healthy",
                                           tuple(problems)))
        self.notifier.status(st.status_line(v))

    # --- components ------------------------------------------------------------------------

    async def _open_index(self) -> None:
        try:
            self.tools = device_tools(self.settings, self.camera)
        except Exception as e:
            self._tool_error = f"search tool unavailable: {describe_error(e)}"
            log.warning("knowledge: %s", self._tool_error, extra={"EDGED_EVENT": EV_ERROR})
            self.tools = device_tools(self.settings, self.camera, knowledge=False)
        await self._refresh_index()

    async def _refresh_index(self) -> None:
        """Re-read the index status (generation, size, last sync) in a thread."""
        try:
            from edged.knowledge.status import index_status
            self.index = await asyncio.to_thread(index_status, self.settings)
        except Exception as e:
            self.index = {"state": "unavailable", "error": describe_error(e)}
        problem = self._tool_error or self.index.get("error")
        self.supervisor.set("knowledge", "degraded" if problem else "ok", str(problem or ""))
        self._status_changed()

    def _start_live(self) -> None:
        try:
            from edged.live.handles import HANDLE_FILE
            from edged.live.session import LiveSession
            self.live = LiveSession(self.settings, self.tools, self.bus,
                                    handle_file=self.settings.paths.state_dir / HANDLE_FILE)
        except Exception as e:
            self.supervisor.set("session", "failed",
                                f"cannot create the Live session: {describe_error(e)}")
            log.error("session: %s", self.supervisor.health["session"].detail,
                      extra={"EDGED_EVENT": EV_ERROR})
            return
        self.supervisor.set("session", "ok")
        self.supervisor.spawn("session", self.live.run)
        self.camera.attach(self.live)

    async def _start_voice(self) -> None:
        if self.live is None:
            self.supervisor.set("voice", "disabled", "no Live session")
            return
        try:
            from edged.audio.alsalog import route_alsa_errors_to_log
            from edged.audio.voice import VoiceLoop
            route_alsa_errors_to_log()
            self.voice = VoiceLoop(self.settings, self.live, self.bus)
        except Exception as e:
            self.supervisor.set("voice", "degraded",
                                f"audio unavailable: {describe_error(e)}")
            log.warning("voice: %s", self.supervisor.health["voice"].detail,
                        extra={"EDGED_EVENT": EV_ERROR})
            return
        self.supervisor.set("voice", "ok")
        tried = asyncio.Event()
        self.bus.observe(lambda ev: tried.set() if self._devices_tried() else None,
                         DeviceChanged)
        self.supervisor.spawn("voice", self.voice.run)
        try:
            # READY waits (bounded) until capture and playback were tried: open, or degraded.
            await asyncio.wait_for(tried.wait(), READY_DEVICES_WITHIN_S)
        except TimeoutError:
            log.warning("audio devices not tried within %.0fs of start",
                        READY_DEVICES_WITHIN_S)

    def _devices_tried(self) -> bool:
        states = [self.voice.capture.health.state, self.voice.playback.health.state]
        return all(s not in ("stopped", "opening") for s in states)

    def _start_camera(self) -> None:
        """The camera component runs even when disabled (it idles), so enabling it by reload
        needs no restart unless the look tool was not offered at start."""
        self.supervisor.set("camera", "ok" if self.settings.camera.enabled else "disabled")
        self.supervisor.spawn("camera", self.camera.run)

    async def set_mute(self, muted: bool, uid: int) -> bool:
        if self.voice is None:
            raise ControlError(ErrorCode.UNAVAILABLE, "the voice loop is not running (see "
                               "edgectl status); there is no microphone to mute")
        if muted:
            self.voice.mute()
        else:
            self.voice.unmute()
        self.muted = muted
        log.info("microphone %s by uid %d", "muted" if muted else "unmuted", uid,
                 extra={"EDGED_EVENT": "mute", "EDGED_MUTED": int(muted)})
        self.bus.publish(MuteChanged(muted, uid))
        return muted

    async def listen(self, uid: int) -> dict[str, Any]:
        """``edgectl listen``: open a turn now (see :meth:`VoiceLoop.listen`)."""
        if self.voice is None:
            raise ControlError(ErrorCode.UNAVAILABLE, "the voice loop is not running (see "
                               "edgectl status); there is no microphone to listen with")
        if self.muted:
            raise ControlError(ErrorCode.UNAVAILABLE, "the microphone is muted; "
                               "`edgectl unmute` first")
        result: dict[str, Any] = self.voice.listen()
        log.info("listening opened by uid %d (edgectl listen): %s", uid,
                 result.get("reason", "waiting for the question"))
        return result

    def _start_ota(self) -> None:
        if self._ota_store is None:
            return
        from edged.ota.apply import OtaManager
        self.ota = OtaManager(self, self._ota_store, self.args.config)
        self.ota.start(self._ota_note)

    def request_restart(self, why: str) -> None:
        """Stop gracefully with EXIT_RESTART; systemd starts edged again at once."""
        log.warning("restarting: %s", why, extra={"EDGED_EVENT": EV_LIFECYCLE})
        self.exit_code = EXIT_RESTART
        self._stop.set()

    # --- reload ------------------------------------------------------------------------------

    async def reload(self, why: str) -> ReloadResult:
        """Re-read the config and apply it. ``RELOADING=1`` is always followed by ``READY=1``,
        whatever happens in between."""
        async with self._reload_lock:
            self.notifier.reloading()
            log.info("reloading configuration (%s)", why, extra={"EDGED_EVENT": EV_RELOAD})
            try:
                return await self._reload()
            finally:
                self.notifier.ready(st.status_line(self.view()))

    async def _reload(self) -> ReloadResult:
        try:
            new = await asyncio.to_thread(load_settings, self.args.config, self.args.override)
            set_secrets([new.api_key()])
        except ConfigError as e:
            self.last_reload = {"ok": False, "at": st.iso(time.time()), "error": str(e),
                                "restart_needed": []}
            log.error("reload rejected, keeping config %s: %s", self.version, e,
                      extra={"EDGED_EVENT": EV_RELOAD, "EDGED_OK": 0})
            self.bus.publish(ConfigReloaded(False, self.version, str(e)))
            return {"ok": False, "error": str(e), "version": self.version}
        restart_needed, errors = await self._apply(new)
        old_version, self.version = self.version, config_version(new)
        self.settings, self.loaded_at = new, time.time()
        error = "; ".join(errors) or None
        self.last_reload = {"ok": not errors, "at": st.iso(self.loaded_at), "error": error,
                            "restart_needed": restart_needed}
        if errors:
            log.error("configuration %s applied except: %s", self.version, error,
                      extra={"EDGED_EVENT": EV_RELOAD, "EDGED_OK": 0,
                             "EDGED_CFG_VERSION": self.version})
        else:
            log.info("configuration reloaded: %s -> %s%s", old_version, self.version,
                     f" (needs a restart for: {', '.join(restart_needed)})"
                     if restart_needed else "",
                     extra={"EDGED_EVENT": EV_RELOAD, "EDGED_OK": 1,
                            "EDGED_CFG_VERSION": self.version})
        self.bus.publish(ConfigReloaded(not errors, self.version, error, tuple(restart_needed)))
        return {"ok": not errors, "version": self.version, "previous": old_version,
                "error": error, "restart_needed": restart_needed}

    async def _apply(self, new: Settings) -> tuple[list[str], list[str]]:
        """Give each component the new settings. Returns (keys that need a restart, errors):
        one component failing to apply does not stop the others."""
        old = self.settings
        restart: list[str] = []
        errors: list[str] = []

        async def apply(name: str, step: Callable[[], Awaitable[list[str]] | list[str]]
                        ) -> None:
            try:
                result = step()
                restart.extend(await result if isinstance(result, Awaitable) else result)
            except Exception as e:
                errors.append(f"{name}: {describe_error(e)}")
                self.supervisor.set(name, "degraded", f"reload: {describe_error(e)}")

        if self.live is not None:
            await apply("session", lambda: self.live.apply_settings(new))
        if self.voice is not None:
            await apply("voice", lambda: self.voice.apply_settings(new))
        await apply("camera", lambda: self.camera.apply_settings(new.camera))
        if new.camera.enabled != old.camera.enabled:
            self.supervisor.set("camera", "ok" if new.camera.enabled else "disabled")
        if new.camera.enabled and "look" not in self.tools.names:
            restart.append("camera.enabled")      # the look tool is declared at start
        self.tools.timeout_s = new.tools.timeout_s
        # stopping the old HTTP server waits for its thread: not on the event loop
        await apply("metrics", lambda: asyncio.to_thread(self.metrics.apply_settings,
                                                         new.metrics))
        if self.control is not None:
            control = self.control
            await apply("control", lambda: control.apply_settings(new.control))
        if new.knowledge != old.knowledge:
            restart.append("knowledge")
        if new.paths != old.paths:
            restart.append("paths.state_dir")
        return restart, errors

    # --- main loop ---------------------------------------------------------------------------

    def _after_turn(self, ev: Event) -> None:
        self._trim_due = True

    async def _housekeeping(self) -> None:
        """Once a second: the liveness heartbeat, the metrics snapshot and textfile, the index
        status (every INDEX_REFRESH_S), any sd_notify message the socket could not take, and,
        between turns after one finished, free heap pages back to the kernel (edged.memory)."""
        index_due = textfile_due = 0.0
        while True:
            t = time.monotonic()
            self._heartbeat = t
            if t >= index_due:
                index_due = t + INDEX_REFRESH_S
                await self._refresh_index()
            self.refresh_snapshot()
            if self.settings.metrics.textfile and t >= textfile_due:
                textfile_due = t + self.settings.metrics.textfile_interval_s
                await self._write_textfile()
            self.notifier.flush()
            if self._trim_due and st.conversation_state(self.view()) == "idle":
                self._trim_due = False
                await asyncio.to_thread(release_free_memory)
            await asyncio.sleep(HOUSEKEEPING_S)

    async def _write_textfile(self) -> None:
        path = self.settings.metrics.textfile
        if path is None:
            return
        try:
            await asyncio.to_thread(self.metrics.write_textfile, path)
        except OSError as e:
            log.warning("metrics.textfile %s: %s", path, e, extra={"EDGED_EVENT": EV_ERROR})

    def _alive(self) -> str | None:
        """Liveness check before each watchdog ping; returns why we are *not* alive."""
        stale = time.monotonic() - self._heartbeat
        if stale > max(5 * HOUSEKEEPING_S, 3.0):
            return f"housekeeping heartbeat is {stale:.1f}s old"
        return self.supervisor.dead()

    async def _watchdog(self, interval: float) -> None:
        while True:
            problem = self._alive()
            if problem is None:
                self.notifier.watchdog()
            else:
                log.error("liveness check failed (%s): withholding the watchdog ping", problem,
                          extra={"EDGED_EVENT": EV_ERROR})
            await asyncio.sleep(interval)

    def _spawn_background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)            # keep a reference until it finishes
        task.add_done_callback(self._background.discard)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: self._spawn_background(self.reload("SIGHUP")))
        set_secrets([self.settings.api_key()])
        log.info("edged %s starting (config %s)", __version__, self.version,
                 extra={"EDGED_EVENT": EV_LIFECYCLE})
        self.notifier.status("starting")
        await self._open_index()
        self._start_live()
        await self._start_voice()
        self._start_camera()
        await self._start_control()
        self._start_ota()
        try:
            await asyncio.to_thread(self.metrics.apply_settings, self.settings.metrics)
        except OSError as e:
            self.supervisor.set("metrics", "degraded", f"http port: {e}")
        self.supervisor.spawn_once("housekeeping", self._housekeeping())
        interval = watchdog_interval()
        if interval is not None:
            self.supervisor.spawn_once("watchdog", self._watchdog(interval))
        line = st.status_line(self.view())
        self.notifier.ready(line)
        log.info("edged ready: %s", line, extra={"EDGED_EVENT": EV_LIFECYCLE})
        await self._stop.wait()
        return await self._shutdown()

    async def _start_control(self) -> None:
        self.control = ControlServer(self.settings.control, ControlMethods(self).table())
        try:
            await self.control.start()
        except OSError as e:
            log.error("control socket %s: %s", self.settings.control.socket_path, e,
                      extra={"EDGED_EVENT": EV_ERROR})
            self.supervisor.set("control", "failed", str(e))
        else:
            problem = self.control.group_problem
            self.supervisor.set("control", "degraded" if problem else "ok", problem or "")

    async def _shutdown(self) -> int:
        """Stop in order: no new requests, close the Live session (it says goodbye with 1000),
        stop the rest (the camera closes its device), write the last metrics - within
        stop_timeout_s."""
        sup = self.supervisor
        if self.ota is not None:
            self.ota.on_stop()             # an OTA trial in progress continues next start
        await sup.cancel("watchdog")       # systemd stops watching once we say STOPPING
        self.notifier.stopping("stopping")
        log.info("stopping", extra={"EDGED_EVENT": EV_LIFECYCLE})
        sup.stopping.set()
        try:
            async with asyncio.timeout(self.settings.control.stop_timeout_s):
                if self.control is not None:
                    await self.control.close()
                if self.live is not None:
                    await self.live.close()
                await sup.cancel(*(n for n in list(sup.tasks) if n != "session"))
                session = sup.tasks.pop("session", None)
                if session is not None:
                    await asyncio.gather(session, return_exceptions=True)
        except TimeoutError:
            log.error("graceful stop exceeded control.stop_timeout_s=%.0fs; exiting anyway",
                      self.settings.control.stop_timeout_s, extra={"EDGED_EVENT": EV_ERROR})
        if self.settings.metrics.textfile:
            await self._write_textfile()
        await asyncio.to_thread(self.metrics.stop_http)
        self.notifier.flush()
        log.info("stopped", extra={"EDGED_EVENT": EV_LIFECYCLE})
        return self.exit_code


def main(args: argparse.Namespace) -> int:
    """Entry point of ``edged run`` (wired in :mod:`edged.cli`)."""
    setup_logging(logging.DEBUG if os.environ.get("EDGED_LOG_LEVEL") == "debug"
                  else logging.INFO)
    notifier = Notifier()
    try:
        store, note = _ota_boot(args)
        settings = _load(args, store)
        set_secrets([settings.api_key()])
    except ConfigError as e:
        log.error("%s", e, extra={"EDGED_EVENT": EV_ERROR})
        notifier.status(f"invalid configuration: {str(e).splitlines()[-1].strip()}")
        return EXIT_CONFIG
    except OSError as e:
        log.error("OTA state: %s", e, extra={"EDGED_EVENT": EV_ERROR})
        notifier.status(f"unusable OTA state: {e}")
        return EXIT_CONFIG
    return asyncio.run(Daemon(settings, args, notifier, store, note).run())


def _ota_boot(args: argparse.Namespace) -> tuple[OtaStore, str | None]:
    """Before the config is read: settle an OTA trial the last run left (a crash during its
    health window rolls it back), so the layer loaded next is a whole old or new config."""
    from edged.ota.state import OtaStore
    store = OtaStore(args.override or DEFAULT_OVERRIDE_CONFIG)
    boot = store.boot()
    note = None
    if boot.rolled_back:
        note = boot.rolled_back
        log.error("OTA: rolled back at start: %s", boot.rolled_back,
                  extra={"EDGED_EVENT": EV_OTA, "EDGED_OTA_RESULT": "rolled_back"})
    elif boot.trial is not None:
        note = f"version {boot.trial} continues its trial"
    if boot.repaired:
        log.warning("OTA: %s did not match the OTA record; restored it", store.current_path,
                    extra={"EDGED_EVENT": EV_OTA})
    return store, note


def _load(args: argparse.Namespace, store: OtaStore) -> Settings:
    """The config; a candidate on trial that does not even load is rolled back first."""
    try:
        return load_settings(args.config, args.override)
    except ConfigError as e:
        if store.pending is None:
            raise
        store.rollback(f"it does not load at start: {e}")
        log.error("OTA: candidate rolled back at start: %s", e,
                  extra={"EDGED_EVENT": EV_OTA, "EDGED_OTA_RESULT": "rolled_back"})
        return load_settings(args.config, args.override)
