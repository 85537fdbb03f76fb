"""``edged run``: compose the components and run them like a real systemd daemon.

Lifecycle (``Type=notify``, systemd 252 - no ``notify-reload``):

* start: load config (invalid -> exit 78/EX_CONFIG, which the unit does not restart), open the
  knowledge index and register its tool, start the Live session, the voice loop (ALSA) and the
  camera, each in its **own supervised task** with its own recovery loop, then listen on the
  control socket. ``READY=1`` is sent when the config is valid, the devices have been tried
  (open, or marked degraded), the index has been tried and the socket listens.
* running: ``STATUS=`` always describes now (health, state, session, index generation, config
  version); ``WATCHDOG=1`` is sent by a task *on the main event loop* after a liveness check
  (housekeeping heartbeat fresh, no supervisor died), so a stalled loop is killed by systemd.
* SIGHUP: ``RELOADING=1`` -> re-read the config -> invalid: keep the old one, say why (log,
  ``STATUS=``, ``edgectl status``) -> valid: apply live what can be (Live setup reconnects
  between turns, audio/VAD settings, camera, metrics) -> ``READY=1``.
* SIGTERM/SIGINT: ``STOPPING=1`` -> stop accepting control requests, stop components, close
  the session, write the metrics textfile - all within ``control.stop_timeout_s``.

A component that fails marks the daemon *degraded* and is restarted with backoff; it never
takes the daemon down. Components that are not importable (e.g. no ALSA library) are simply
reported as unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from edged import __version__
from edged.camera import Camera, CameraUnavailable
from edged.config import ConfigError, Settings, load_settings
from edged.control import ControlError, ControlServer, Final, Method, Params, Peer
from edged.events import (
    Interrupted,
    LiveEvent,
    ModelAudio,
    ModelText,
    SessionChanged,
    ToolCallFinished,
    ToolCallStarted,
    Transcription,
    TurnComplete,
)
from edged.feedback import FeedbackError, FeedbackStore
from edged.logs import (
    EV_ERROR,
    EV_LIFECYCLE,
    EV_RECONNECT,
    EV_RELOAD,
    EV_TOOL_CALL,
    EV_TURN,
    set_secrets,
    setup_logging,
)
from edged.metrics import Metrics, Snapshot
from edged.notify import Notifier, watchdog_interval
from edged.tools import ToolRegistry, device_tools

log = logging.getLogger("edged.daemon")

EXIT_CONFIG = 78            # EX_CONFIG: RestartPreventExitStatus=78 in edged.service
STATUS_SCHEMA_VERSION = 1
HOUSEKEEPING_S = 1.0
STATE_POLL_S = 0.05
INDEX_REFRESH_S = 30.0
LAST_TURNS = 10
ASK_MAX_CHARS = 4000
ASK_TIMEOUT_S = 90.0
DEBUG_ENV = "EDGED_DEBUG_HOOKS"   # "1" enables debug.* control methods (tests only)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def config_version(settings: Settings) -> str:
    """Short content hash of the effective (redacted) config: changes iff the config does."""
    blob = json.dumps(settings.redacted(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


@dataclasses.dataclass
class ComponentHealth:
    state: str = "starting"     # starting | ok | degraded | disabled | failed | stopped
    detail: str = ""
    since: float = dataclasses.field(default_factory=time.time)

    def set(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail, self.since = state, detail, time.time()


class EventBus:
    """Fan-out of daemon events (dicts) to ``edgectl events`` streams and ``ask`` turns.

    A slow subscriber loses its oldest events; publishing never blocks the daemon.
    """

    def __init__(self) -> None:
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()

    def subscribe(self, maxsize: int = 256) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subs.discard(q)

    def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", time.time())
        for q in self._subs:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)


def _live_event_dict(ev: LiveEvent) -> dict[str, Any] | None:
    """A LiveEvent as an ``events`` stream item (audio is summarised, never streamed)."""
    if isinstance(ev, ModelAudio):
        return None
    if isinstance(ev, SessionChanged):
        return {"type": "session", "state": ev.state, "detail": ev.detail}
    if isinstance(ev, Transcription):
        return {"type": "transcription", "role": ev.role, "text": ev.text,
                "finished": ev.finished}
    if isinstance(ev, ModelText):
        return {"type": "model_text", "text": ev.text}
    if isinstance(ev, ToolCallStarted):
        return {"type": "tool_call", "id": ev.id, "name": ev.name}
    if isinstance(ev, ToolCallFinished):
        return {"type": "tool_result", "id": ev.id, "name": ev.name, "ok": ev.ok,
                "duration_s": round(ev.duration_s, 4), "error": ev.error}
    if isinstance(ev, Interrupted):
        return {"type": "interrupted"}
    if isinstance(ev, TurnComplete):
        return {"type": "turn_complete"}
    return {"type": type(ev).__name__.lower()}


def _as_dict(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return dict(obj)
    return {"value": str(obj)}


class Daemon:
    def __init__(self, settings: Settings, args: argparse.Namespace,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.args = args
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.bus = EventBus()
        self.health: dict[str, ComponentHealth] = {}
        self.started_at = time.time()
        self.version = config_version(settings)
        self.loaded_at = time.time()
        self.last_reload: dict[str, Any] = {"ok": True, "at": None, "error": None,
                                            "restart_needed": []}
        self.turns: deque[dict[str, Any]] = deque(maxlen=LAST_TURNS)
        self.feedback = FeedbackStore(settings.paths.state_dir)
        self.camera = Camera(settings.camera)
        self.tools = ToolRegistry(settings.tools.timeout_s)
        self.live: Any = None
        self.voice: Any = None
        self.index: dict[str, Any] = {"state": "unknown"}
        self.control: ControlServer | None = None
        self.muted = False
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._heartbeat = time.monotonic()
        self._reload_lock = asyncio.Lock()
        self._ask_lock = asyncio.Lock()
        self._live_q: asyncio.Queue[LiveEvent] | None = None
        self._textfile_due = 0.0
        self._index_due = 0.0
        self._tool_error: str | None = None
        self._reconnects_seen: dict[str, int] = {}
        self._last_problems: list[str] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    # --- health and status ------------------------------------------------------------------

    def _component(self, name: str) -> ComponentHealth:
        return self.health.setdefault(name, ComponentHealth())

    def problems(self) -> list[str]:
        """Human-readable reasons the daemon is not healthy, most important first."""
        out = [f"{name}: {h.detail or h.state}" for name, h in self.health.items()
               if h.state in ("degraded", "failed")]
        if self.voice is not None:
            with contextlib.suppress(Exception):
                vs = self.voice.status()
                for key in ("capture", "playback"):
                    dev = vs.get(key) if isinstance(vs, dict) else None
                    if isinstance(dev, dict) and (dev.get("error")
                                                  or dev.get("state") == "retrying"):
                        out.append(f"{key}: {dev.get('error') or 'retrying'}")
        if self.live is not None:
            st = self.live.status()
            if st.get("state") in ("config_error", "backoff"):
                out.append(f"session: {st['state']} ({st.get('detail', '')})")
        if not self.last_reload["ok"]:
            out.append("config: last reload rejected (old config kept)")
        return out

    def _session_state(self) -> str:
        return str(self.live.status().get("state")) if self.live is not None else "unavailable"

    def _conversation_state(self) -> str:
        if self.voice is not None:
            with contextlib.suppress(Exception):
                return str(self.voice.status().get("state", "idle"))
        return "idle"

    def status_line(self) -> str:
        problems = self.problems()
        gen = self.index.get("generation")
        line = (f"{'degraded' if problems else 'healthy'}; state={self._conversation_state()}"
                f"{' (muted)' if self.muted else ''} session={self._session_state()} "
                f"index=gen{gen if gen is not None else '-'} cfg={self.version}")
        if not self.last_reload["ok"]:
            err = str(self.last_reload["error"]).splitlines()
            line += f"; reload rejected: {' '.join(s.strip() for s in err[-1:])}"
        elif problems:
            line += f"; {problems[0]}"
        return line[:400]

    def status(self) -> dict[str, Any]:
        problems = self.problems()
        voice = None
        if self.voice is not None:
            with contextlib.suppress(Exception):
                voice = self.voice.status()
        return {
            "schema_version": STATUS_SCHEMA_VERSION,
            "edged_version": __version__,
            "health": "degraded" if problems else "healthy",
            "problems": problems,
            "state": self._conversation_state(),
            "muted": self.muted,
            "pid": os.getpid(),
            "started_at": _iso(self.started_at),
            "started_at_epoch": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 1),
            "components": {n: {"state": h.state, "detail": h.detail, "since": _iso(h.since),
                               "since_epoch": h.since} for n, h in self.health.items()},
            "session": self.live.status() if self.live is not None else None,
            "audio": voice,
            "camera": self.camera.status(),
            "index": self.index,
            "config": {"version": self.version, "loaded_at": _iso(self.loaded_at),
                       "loaded_at_epoch": self.loaded_at,
                       "admin_file": str(self.args.config) if self.args.config else None,
                       "override_file": str(self.args.override) if self.args.override else None,
                       "last_reload": self.last_reload},
            "turns": list(self.turns),
            "feedback": self.feedback.counts(),
            "control": {"socket": str(self.settings.control.socket_path),
                        "group": self.settings.control.group,
                        "group_problem": self.control.group_problem if self.control else None},
        }

    def _snapshot(self) -> Snapshot:
        live = self.live.status() if self.live is not None else {}
        ratio = None
        if self.voice is not None:
            with contextlib.suppress(Exception):
                vad = self.voice.status().get("vad") or {}
                ratio = vad.get("gated_ratio")
        sync = self.index.get("last_sync")
        sync_ok, sync_ts = None, None
        if isinstance(sync, dict):
            sync_ok = sync.get("status") in ("ok", "skipped")
            with contextlib.suppress(TypeError, ValueError):
                sync_ts = datetime.fromisoformat(str(sync.get("time"))).timestamp()
        return Snapshot(
            healthy=not self.problems(), muted=self.muted,
            bytes_up=live.get("bytes_up"), bytes_down=live.get("bytes_down"),
            vad_gated_ratio=ratio,
            index_generation=self.index.get("generation"),
            index_bytes=self.index.get("db_bytes"),
            index_docs=self.index.get("documents"), index_chunks=self.index.get("chunks"),
            last_sync_ok=sync_ok, last_sync_timestamp=sync_ts,
            config_reload_ok=bool(self.last_reload["ok"]),
            components={n: h.state for n, h in self.health.items()})

    # --- components ---------------------------------------------------------------------------

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run one component forever: a crash marks it degraded and restarts it with backoff."""
        delay = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await run()
                if self._stop.is_set():
                    return
                self._component(name).set("degraded", "stopped unexpectedly; restarting")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._component(name).set("degraded", f"{type(e).__name__}: {e}")
                log.error("%s failed: %s; restarting in %.0fs", name, e, delay,
                          exc_info=True, extra={"EDGED_EVENT": EV_ERROR,
                                                "EDGED_COMPONENT": name})
            if time.monotonic() - started > 60:
                delay = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30.0)

    def _spawn(self, name: str, coro: Awaitable[None]) -> None:
        self._tasks[name] = asyncio.ensure_future(coro)

    async def _open_index(self) -> None:
        try:
            self.tools = device_tools(self.settings)
        except Exception as e:
            self._tool_error = f"search tool unavailable: {type(e).__name__}: {e}"
            log.warning("knowledge: %s", self._tool_error, extra={"EDGED_EVENT": EV_ERROR})
        await self._refresh_index()

    async def _refresh_index(self) -> None:
        """Re-read the index status (generation, size, last sync) in a thread."""
        self._index_due = time.monotonic() + INDEX_REFRESH_S
        try:
            from edged.knowledge.status import index_status
            self.index = await asyncio.to_thread(index_status, self.settings)
        except Exception as e:
            self.index = {"state": "unavailable", "error": f"{type(e).__name__}: {e}"}
        problem = self._tool_error or self.index.get("error")
        self._component("knowledge").set("degraded" if problem else "ok", str(problem or ""))

    def _start_live(self) -> None:
        comp = self._component("session")
        try:
            from edged.live.session import LiveSession
            self.live = LiveSession(self.settings, self.tools)
        except Exception as e:
            comp.set("failed", f"cannot create the Live session: {type(e).__name__}: {e}")
            log.error("session: %s", comp.detail, extra={"EDGED_EVENT": EV_ERROR})
            return
        comp.set("ok")
        self._live_q = self.live.subscribe()
        self._spawn("session", self._supervise("session", self.live.run))
        self._spawn("live-events", self._pump_live_events())

    async def _start_voice(self) -> None:
        comp = self._component("voice")
        if self.live is None:
            comp.set("disabled", "no Live session")
            return
        try:
            from edged.audio.voice import VoiceLoop  # type: ignore[import-not-found]
            self.voice = VoiceLoop(self.settings, self.live, self.live.subscribe())
        except Exception as e:
            comp.set("degraded", f"audio unavailable: {type(e).__name__}: {e}")
            log.warning("voice: %s", comp.detail, extra={"EDGED_EVENT": EV_ERROR})
            return
        comp.set("ok")
        self._spawn("voice", self._supervise("voice", self.voice.run))
        if hasattr(self.voice, "subscribe_turns"):
            self._spawn("voice-turns", self._pump_voice_turns())
        self._spawn("voice-state", self._watch_voice_state())
        await self._wait_devices_tried(5.0)

    async def _wait_devices_tried(self, within_s: float) -> None:
        """READY waits (bounded) until capture/playback left 'opening': open or degraded."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                vs = self.voice.status()
            except Exception:
                return
            states = [vs.get(k, {}).get("state") for k in ("capture", "playback")
                      if isinstance(vs.get(k), dict)]
            if all(s not in ("stopped", "opening", None) for s in states):
                return
            await asyncio.sleep(0.05)

    async def _start_camera(self) -> None:
        comp = self._component("camera")
        if not self.settings.camera.enabled:
            comp.set("disabled")
            return
        try:
            await self.camera.open()
            comp.set("ok")
        except CameraUnavailable as e:
            comp.set("degraded", str(e))
            log.warning("camera: %s", e, extra={"EDGED_EVENT": EV_ERROR})

    # --- event pumps --------------------------------------------------------------------------

    async def _pump_live_events(self) -> None:
        assert self._live_q is not None
        while True:
            ev = await self._live_q.get()
            if isinstance(ev, ToolCallFinished):
                outcome = "ok" if ev.ok else "error"
                self.metrics.tool_calls.labels(ev.name, outcome).inc()
                self.metrics.tool_duration.labels(ev.name).observe(ev.duration_s)
                log.info("tool %s %s in %.3fs%s", ev.name, outcome, ev.duration_s,
                         f": {ev.error}" if ev.error else "",
                         extra={"EDGED_EVENT": EV_TOOL_CALL, "EDGED_TOOL": ev.name,
                                "EDGED_OK": int(ev.ok), "EDGED_DURATION_S": ev.duration_s})
            elif isinstance(ev, SessionChanged):
                self._on_session_changed(ev)
            item = _live_event_dict(ev)
            if item is not None:
                self.bus.publish(item)

    def _on_session_changed(self, ev: SessionChanged) -> None:
        self._count_reconnects()
        self.notifier.status(self.status_line())

    def _count_reconnects(self) -> None:
        """Mirror the session's reconnects-by-close-code counts into the metrics counter."""
        if self.live is None:
            return
        st = self.live.status()
        for code, n in (st.get("reconnects_by_code") or {}).items():
            delta = int(n) - self._reconnects_seen.get(code, 0)
            if delta > 0:
                self._reconnects_seen[code] = int(n)
                self.metrics.reconnects.labels(str(code)).inc(delta)
                log.info("Live session reconnect after %s (%s)", code,
                         st.get("last_close_reason") or st.get("detail") or "",
                         extra={"EDGED_EVENT": EV_RECONNECT, "EDGED_CLOSE_CODE": str(code)})

    async def _watch_voice_state(self) -> None:
        """Publish idle/listening/thinking/speaking changes (LEDs want them within ~50 ms).

        The voice loop exposes its state as a plain attribute and has no callback, so this
        polls it: an attribute read every 50 ms costs nothing measurable.
        """
        last = None
        while True:
            state = getattr(self.voice, "state", None)
            if state != last:
                self.bus.publish({"type": "state", "state": state, "previous": last})
                if state == "listening" and self.settings.camera.on_speech_start:
                    self._spawn_background(self._still_to_live())
                last = state
            await asyncio.sleep(STATE_POLL_S)

    async def _still_to_live(self) -> None:
        """camera.on_speech_start: send one still (rate-limited) as the user starts talking."""
        if self.camera.state != "ok" or self.live is None:
            return
        try:
            jpeg = await self.camera.capture_jpeg()
        except Exception as e:
            self._component("camera").set("degraded", f"capture failed: {e}")
            return
        if jpeg is not None:
            await self.live.send_image(jpeg)

    async def _pump_voice_turns(self) -> None:
        turns = self.voice.subscribe_turns()
        while True:
            rec = await turns.get()
            d = rec.as_dict() if hasattr(rec, "as_dict") else _as_dict(rec)
            if d.get("speech_ms") is None:
                continue   # the spoken reply to a text turn: `ask` records that turn itself
            ms = d.get("end_to_speaker_ms") or d.get("end_to_first_reply_ms")
            self._record_turn("voice", {
                "user": d.get("user_text", ""), "model": d.get("model_text", ""),
                "tools": d.get("tools", []), "outcome": d.get("outcome"),
                "latency_s": None if ms is None else ms / 1000, "detail": d})

    def _record_turn(self, kind: str, turn: dict[str, Any]) -> None:
        turn = {"kind": kind, "ts": time.time(), **turn}
        latency = turn.get("latency_s")
        if isinstance(latency, int | float):
            self.metrics.turn_latency.labels(kind).observe(latency)
        self.metrics.turns.labels(kind).inc()
        self.turns.append(turn)
        self.bus.publish({"type": "turn", **turn})
        log.info("%s turn done (latency %s)", kind,
                 f"{latency:.3f}s" if isinstance(latency, int | float) else "n/a",
                 extra={"EDGED_EVENT": EV_TURN, "EDGED_KIND": kind,
                        "EDGED_LATENCY_S": latency if latency is not None else ""})

    # --- control methods ----------------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        m = {
            "status": Method(self._m_status),
            "health": Method(self._m_health),
            "metrics": Method(self._m_metrics),
            "events": Method(self._m_events, streaming=True),
            "reload": Method(self._m_reload, mutating=True),
            "mute": Method(self._m_mute, mutating=True),
            "unmute": Method(self._m_unmute, mutating=True),
            "ask": Method(self._m_ask, mutating=True, streaming=True),
            "feedback": Method(self._m_feedback, mutating=True),
        }
        if os.environ.get(DEBUG_ENV) == "1":
            m["debug.stall"] = Method(self._m_debug_stall, mutating=True)
        return m

    async def _m_status(self, params: Params, peer: Peer) -> dict[str, Any]:
        return self.status()

    async def _m_health(self, params: Params, peer: Peer) -> dict[str, Any]:
        problems = self.problems()
        return {"health": "degraded" if problems else "healthy", "problems": problems}

    async def _m_metrics(self, params: Params, peer: Peer) -> dict[str, Any]:
        self.metrics.snapshot = self._snapshot()
        return {"content_type": "text/plain; version=0.0.4", "text": self.metrics.render()}

    async def _m_events(self, params: Params, peer: Peer) -> AsyncIterator[Any]:
        q = self.bus.subscribe()
        try:
            yield {"type": "hello", "state": self._conversation_state(),
                   "session": self._session_state(), "muted": self.muted}
            while True:
                yield await q.get()
        finally:
            self.bus.unsubscribe(q)

    async def _m_reload(self, params: Params, peer: Peer) -> dict[str, Any]:
        return await self.reload(f"control (uid {peer.uid})")

    async def _set_mute(self, muted: bool, peer: Peer) -> dict[str, Any]:
        if self.voice is None:
            raise ControlError("unavailable", "the voice loop is not running (see edgectl "
                               "status); there is no microphone to mute")
        await _maybe_await(self.voice.mute() if muted else self.voice.unmute())
        self.muted = muted
        log.info("microphone %s by uid %d", "muted" if muted else "unmuted", peer.uid,
                 extra={"EDGED_EVENT": "mute", "EDGED_MUTED": int(muted)})
        self.bus.publish({"type": "mute", "muted": muted})
        self.notifier.status(self.status_line())
        return {"muted": muted}

    async def _m_mute(self, params: Params, peer: Peer) -> dict[str, Any]:
        return await self._set_mute(True, peer)

    async def _m_unmute(self, params: Params, peer: Peer) -> dict[str, Any]:
        return await self._set_mute(False, peer)

    async def _m_ask(self, params: Params, peer: Peer) -> AsyncIterator[Any]:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ControlError("invalid_params", 'ask needs params {"text": "your question"}')
        if len(text) > ASK_MAX_CHARS:
            raise ControlError("invalid_params",
                               f"text is {len(text)} characters; the limit is {ASK_MAX_CHARS}")
        if self.live is None:
            raise ControlError("unavailable", "the Live session is not running")
        async with self._ask_lock:
            q = self.live.subscribe()
            try:
                t0 = time.monotonic()
                try:
                    await self.live.send_text(text)
                except Exception as e:
                    raise ControlError("unavailable", f"could not send the question: "
                                       f"{type(e).__name__}: {e}") from None
                answer: list[str] = []
                tools: list[str] = []
                first: float | None = None
                deadline = t0 + ASK_TIMEOUT_S
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ControlError("timeout", f"no complete answer within "
                                           f"{ASK_TIMEOUT_S:.0f} s")
                    try:
                        ev = await asyncio.wait_for(q.get(), left)
                    except TimeoutError:
                        continue
                    chunk = None
                    if isinstance(ev, ModelText) or (
                            isinstance(ev, Transcription) and ev.role == "model"):
                        chunk = ev.text
                    elif isinstance(ev, ModelAudio) and first is None:
                        first = time.monotonic() - t0
                    elif isinstance(ev, ToolCallStarted):
                        tools.append(ev.name)
                        yield {"tool": ev.name}
                    elif isinstance(ev, TurnComplete | Interrupted):
                        latency = first if first is not None else None
                        turn = {"user": text, "model": "".join(answer), "tools": tools,
                                "latency_s": None if latency is None else round(latency, 4),
                                "duration_s": round(time.monotonic() - t0, 4),
                                "interrupted": isinstance(ev, Interrupted)}
                        self._record_turn("text", turn)
                        yield Final(turn)
                        return
                    if chunk:
                        if first is None:
                            first = time.monotonic() - t0
                        answer.append(chunk)
                        yield {"text": chunk}
            finally:
                self.live.unsubscribe(q)

    async def _m_feedback(self, params: Params, peer: Peer) -> dict[str, Any]:
        rating = params.get("rating")
        note = params.get("note", "")
        if not isinstance(note, str):
            raise ControlError("invalid_params", "note must be a string")
        last = self.turns[-1] if self.turns else None
        try:
            entry = await asyncio.to_thread(self.feedback.record, str(rating), note, last)
        except FeedbackError as e:
            raise ControlError("invalid_params", str(e)) from None
        self.metrics.feedback.labels(entry["rating"]).inc()
        self.bus.publish({"type": "feedback", "rating": entry["rating"]})
        return {"stored": str(self.feedback.path), "rated_turn": last is not None,
                "counts": self.feedback.counts()}

    async def _m_debug_stall(self, params: Params, peer: Peer) -> dict[str, Any]:
        """Test hook: block the event loop (as a deadlock would) so the watchdog lapses."""
        seconds = float(params.get("seconds", 1.0))
        self.notifier.status(f"debug: stalling the event loop for {seconds:g}s")
        time.sleep(min(seconds, 60.0))  # noqa: ASYNC251 - blocking on purpose
        return {"stalled_s": seconds}

    # --- reload -------------------------------------------------------------------------------

    async def reload(self, why: str) -> dict[str, Any]:
        async with self._reload_lock:
            self.notifier.reloading()
            log.info("reloading configuration (%s)", why, extra={"EDGED_EVENT": EV_RELOAD})
            try:
                new = await asyncio.to_thread(load_settings, self.args.config, self.args.override)
                set_secrets([new.api_key()])
            except ConfigError as e:
                self.last_reload = {"ok": False, "at": _iso(time.time()), "error": str(e),
                                    "restart_needed": []}
                log.error("reload rejected, keeping config %s: %s", self.version, e,
                          extra={"EDGED_EVENT": EV_RELOAD, "EDGED_OK": 0})
                self.bus.publish({"type": "reload", "ok": False, "error": str(e)})
                self.notifier.ready(self.status_line())
                return {"ok": False, "error": str(e), "version": self.version}
            restart_needed = await self._apply(new)
            old_version, self.version = self.version, config_version(new)
            self.settings, self.loaded_at = new, time.time()
            self.last_reload = {"ok": True, "at": _iso(self.loaded_at), "error": None,
                                "restart_needed": restart_needed}
            log.info("configuration reloaded: %s -> %s%s", old_version, self.version,
                     f" (needs a restart for: {', '.join(restart_needed)})"
                     if restart_needed else "",
                     extra={"EDGED_EVENT": EV_RELOAD, "EDGED_OK": 1,
                            "EDGED_CFG_VERSION": self.version})
            self.bus.publish({"type": "reload", "ok": True, "version": self.version})
            self.notifier.ready(self.status_line())
            return {"ok": True, "version": self.version, "previous": old_version,
                    "restart_needed": restart_needed}

    async def _apply(self, new: Settings) -> list[str]:
        """Apply what can change live; return the dotted keys that need a restart."""
        old = self.settings
        if self.live is not None:
            self.live.update_settings(new)
        if self.voice is not None and hasattr(self.voice, "apply_settings"):
            await _maybe_await(self.voice.apply_settings(new))
        if new.camera != old.camera:
            await self.camera.close()
            self.camera = Camera(new.camera)
            self.settings = new
            await self._start_camera()
        self.tools.timeout_s = new.tools.timeout_s
        if new.metrics.http_port != old.metrics.http_port:
            self.metrics.start_http(new.metrics)
        restart = [f"control.{k}" for k in ("socket_path", "group")
                   if getattr(new.control, k) != getattr(old.control, k)]
        if new.knowledge != old.knowledge:
            restart.append("knowledge")
        if new.paths != old.paths:
            restart.append("paths.state_dir")
        if self.control is not None:
            self.control.settings = self.control.settings.model_copy(
                update={"max_request_bytes": new.control.max_request_bytes})
        return restart

    # --- main loop ----------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            now = time.monotonic()
            self._heartbeat = now
            if now >= self._index_due:
                await self._refresh_index()
            self._count_reconnects()
            self.metrics.snapshot = self._snapshot()
            problems = self.problems()
            if problems != self._last_problems:
                self.bus.publish({"type": "health",
                                  "health": "degraded" if problems else "healthy",
                                  "problems": problems})
                self._last_problems = problems
            if self.settings.metrics.textfile and now >= self._textfile_due:
                self._textfile_due = now + self.settings.metrics.textfile_interval_s
                await self._write_textfile()
            self.notifier.status(self.status_line())
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
        for name, task in self._tasks.items():
            if task.done():
                return f"supervisor task {name} ended"
        return None

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

    def _on_sighup(self) -> None:
        self._spawn_background(self.reload("SIGHUP"))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        set_secrets([self.settings.api_key()])
        log.info("edged %s starting (config %s)", __version__, self.version,
                 extra={"EDGED_EVENT": EV_LIFECYCLE})
        self.notifier.status("starting")
        await self._open_index()
        self._start_live()
        await self._start_voice()
        await self._start_camera()
        self.control = ControlServer(self.settings.control, self.methods())
        try:
            await self.control.start()
        except OSError as e:
            log.error("control socket %s: %s", self.settings.control.socket_path, e,
                      extra={"EDGED_EVENT": EV_ERROR})
            self._component("control").set("failed", str(e))
        else:
            self._component("control").set(
                "degraded" if self.control.group_problem else "ok",
                self.control.group_problem or "")
        try:
            self.metrics.start_http(self.settings.metrics)
        except OSError as e:
            self._component("metrics").set("degraded", f"http port: {e}")
        self._spawn("housekeeping", self._housekeeping())
        interval = watchdog_interval()
        if interval is not None:
            self._spawn("watchdog", self._watchdog(interval))
        self.notifier.ready(self.status_line())
        log.info("edged ready: %s", self.status_line(), extra={"EDGED_EVENT": EV_LIFECYCLE})
        await self._stop.wait()
        return await self._shutdown()

    async def _shutdown(self) -> int:
        self.notifier.stopping("stopping")
        log.info("stopping", extra={"EDGED_EVENT": EV_LIFECYCLE})
        try:
            async with asyncio.timeout(self.settings.control.stop_timeout_s):
                if self.control is not None:
                    await self.control.close()
                if self.live is not None:
                    await self.live.close()
                session = self._tasks.pop("session", None)
                for name, task in self._tasks.items():
                    if name != "watchdog":
                        task.cancel()
                await asyncio.gather(*(t for n, t in self._tasks.items() if n != "watchdog"),
                                     return_exceptions=True)
                if session is not None:
                    await asyncio.gather(session, return_exceptions=True)
                await self.camera.close()
        except TimeoutError:
            log.error("graceful stop exceeded control.stop_timeout_s=%.0fs; exiting anyway",
                      self.settings.control.stop_timeout_s, extra={"EDGED_EVENT": EV_ERROR})
        if self.settings.metrics.textfile:
            await self._write_textfile()
        if (wd := self._tasks.get("watchdog")) is not None:
            wd.cancel()
        log.info("stopped", extra={"EDGED_EVENT": EV_LIFECYCLE})
        return 0


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value


def main(args: argparse.Namespace) -> int:
    """Entry point of ``edged run`` (wired in :mod:`edged.cli`)."""
    setup_logging(logging.DEBUG if os.environ.get("EDGED_LOG_LEVEL") == "debug"
                  else logging.INFO)
    notifier = Notifier()
    try:
        settings = load_settings(args.config, args.override)
        set_secrets([settings.api_key()])
    except ConfigError as e:
        log.error("%s", e, extra={"EDGED_EVENT": EV_ERROR})
        notifier.status(f"invalid configuration: {str(e).splitlines()[-1].strip()}")
        return EXIT_CONFIG
    return asyncio.run(Daemon(settings, args, notifier).run())
