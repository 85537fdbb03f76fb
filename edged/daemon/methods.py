"""The control methods ``edgectl`` calls, as their own class (the daemon keeps the lifecycle).

Each method validates its params, does its work through the small :class:`DaemonAPI` the
daemon offers, and returns a result of the shape :mod:`edged.control.protocol` defines. Adding a
verb: write ``_m_<verb>`` here, list it in :meth:`ControlMethods.table`, add its typed call to
:class:`~edged.control.client.ControlClient` and its subcommand to ``edgectl``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from edged.camera.component import Camera, StillRefused
from edged.control.protocol import ControlError, ErrorCode, Health, ReloadResult, Status
from edged.control.server import Final, Method, Params, Peer
from edged.daemon import status as st
from edged.daemon.observers import TurnLog
from edged.daemon.supervisor import Supervisor
from edged.events import (
    LIVE_EVENTS,
    EventBus,
    FeedbackGiven,
    TurnFinished,
    TurnRecord,
    now,
)
from edged.feedback import FeedbackError, FeedbackStore
from edged.live.reply import AnswerFailed, LinkLost, Reply, ReplyWords, ToolUsed, stream_reply
from edged.live.session import LiveSession
from edged.metrics import Metrics
from edged.notify import Notifier
from edged.redact import describe_error

if TYPE_CHECKING:
    from edged.ota.apply import OtaManager

log = logging.getLogger("edged.daemon")

ASK_MAX_CHARS = 4000
DEBUG_ENV = "EDGED_DEBUG_HOOKS"   # "1" enables debug.* control methods (tests only)


class DaemonAPI(Protocol):
    """What the control methods may use of the daemon."""

    bus: EventBus
    metrics: Metrics
    notifier: Notifier
    turn_log: TurnLog
    feedback: FeedbackStore
    live: LiveSession | None
    camera: Camera
    supervisor: Supervisor
    ota: OtaManager | None

    def view(self) -> st.View: ...
    def refresh_snapshot(self) -> None: ...
    async def reload(self, why: str) -> ReloadResult: ...
    async def set_mute(self, muted: bool, uid: int) -> bool: ...
    async def listen(self, uid: int) -> dict[str, Any]: ...


class ControlMethods:
    def __init__(self, daemon: DaemonAPI) -> None:
        self.d = daemon
        self._ask_lock = asyncio.Lock()

    def table(self) -> dict[str, Method]:
        m = {
            "status": Method(self._m_status),
            "health": Method(self._m_health),
            "metrics": Method(self._m_metrics),
            "events": Method(self._m_events, streaming=True),
            "reload": Method(self._m_reload, mutating=True),
            "mute": Method(self._m_mute, mutating=True),
            "unmute": Method(self._m_unmute, mutating=True),
            # opens the microphone to the cloud: for the same people as mute
            "listen": Method(self._m_listen, mutating=True),
            "ask": Method(self._m_ask, mutating=True, streaming=True),
            "feedback": Method(self._m_feedback, mutating=True),
            # privacy: taking a photo is for members of control.group only, like mute
            "look": Method(self._m_look, mutating=True),
            "ota.apply": Method(self._m_ota_apply, mutating=True, streaming=True),
            "ota.status": Method(self._m_ota_status),
        }
        if os.environ.get(DEBUG_ENV) == "1":
            m["debug.stall"] = Method(self._m_debug_stall, mutating=True)
            m["debug.fail"] = Method(self._m_debug_fail, mutating=True)
            m["debug.memory"] = Method(self._m_debug_memory)
        return m

    async def _m_status(self, params: Params, peer: Peer) -> Status:
        return st.document(self.d.view())

    async def _m_health(self, params: Params, peer: Peer) -> Health:
        return st.health(self.d.view())

    async def _m_metrics(self, params: Params, peer: Peer) -> dict[str, Any]:
        self.d.refresh_snapshot()
        return {"content_type": "text/plain; version=0.0.4", "text": self.d.metrics.render()}

    async def _m_events(self, params: Params, peer: Peer) -> AsyncIterator[Any]:
        q = self.d.bus.subscribe(maxsize=256)
        try:
            v = self.d.view()
            yield {"type": "hello", "ts": time.time(), "state": st.conversation_state(v),
                   "session": st.session_state(v), "muted": v.muted}
            while True:
                item = (await q.get()).to_json()
                if item is not None:
                    yield {**item, "ts": time.time()}
        finally:
            self.d.bus.unsubscribe(q)

    async def _m_reload(self, params: Params, peer: Peer) -> ReloadResult:
        return await self.d.reload(f"control (uid {peer.uid})")

    async def _m_mute(self, params: Params, peer: Peer) -> dict[str, Any]:
        return {"muted": await self.d.set_mute(True, peer.uid)}

    async def _m_unmute(self, params: Params, peer: Peer) -> dict[str, Any]:
        return {"muted": await self.d.set_mute(False, peer.uid)}

    async def _m_listen(self, params: Params, peer: Peer) -> dict[str, Any]:
        """A button, a GPIO script or an automation: the next words go to the model, in any
        listening mode (over a reply, it stops the reply)."""
        return await self.d.listen(peer.uid)

    async def _m_ask(self, params: Params, peer: Peer) -> AsyncIterator[Any]:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ControlError(ErrorCode.INVALID_PARAMS,
                               'ask needs params {"text": "your question"}')
        if len(text) > ASK_MAX_CHARS:
            raise ControlError(ErrorCode.INVALID_PARAMS,
                               f"text is {len(text)} characters; the limit is {ASK_MAX_CHARS}")
        live = self.d.live
        if live is None:
            raise ControlError(ErrorCode.UNAVAILABLE, "the Live session is not running")
        # The daemon's own bound for an answer (the session's link wait, tries, stall
        # detection), announced first so edgectl waits for it rather than its own guess; an
        # ask queued behind another may wait for that one's bound too.
        bound = live.answer_bound_s()
        yield {"deadline_s": round(bound * (2 if self._ask_lock.locked() else 1), 1)}
        async with self._ask_lock:
            deadline = now() + bound
            q = self.d.bus.subscribe(*LIVE_EVENTS)
            try:
                record = TurnRecord(kind="text", mode="text", trigger="text", user_text=text)
                try:
                    await live.send_text(text)
                except Exception as e:
                    raise ControlError(ErrorCode.UNAVAILABLE, "could not send the question: "
                                       + describe_error(e)) from None
                record.speech_end = now()
                try:
                    async for item in stream_reply(q, max(0.0, deadline - now())):
                        if isinstance(item, ReplyWords):
                            yield {"text": item.text}
                        elif isinstance(item, ToolUsed):
                            yield {"tool": item.name}
                        elif isinstance(item, LinkLost):
                            # the words so far are void: the final result holds only the answer
                            # that completed
                            yield {"restart": "the link dropped; the answer starts again"}
                        elif isinstance(item, Reply):
                            record.first_reply_audio = item.first_reply_at
                            record.model_text, record.tools = item.text, item.tools
                            record.interrupted = "server" if item.interrupted else None
                            record.outcome = "interrupted" if item.interrupted else "answered"
                except TimeoutError:
                    raise ControlError(ErrorCode.TIMEOUT, f"no complete answer within "
                                       f"{bound:.0f} s") from None
                except AnswerFailed as e:
                    raise ControlError(ErrorCode.UNAVAILABLE, f"no answer: {e}") from None
                finished = TurnFinished(record)
                self.d.bus.publish(finished)
                yield Final({**finished.summary(),
                             "duration_s": round(now() - record.speech_end, 4)})
            finally:
                self.d.bus.unsubscribe(q)

    async def _m_feedback(self, params: Params, peer: Peer) -> dict[str, Any]:
        rating = params.get("rating")
        note = params.get("note", "")
        if not isinstance(note, str):
            raise ControlError(ErrorCode.INVALID_PARAMS, "note must be a string")
        last = self.d.turn_log.last()
        try:
            entry = await asyncio.to_thread(self.d.feedback.record, str(rating), note,
                                            dict(last) if last else None)
        except FeedbackError as e:
            raise ControlError(ErrorCode.INVALID_PARAMS, str(e)) from None
        self.d.bus.publish(FeedbackGiven(entry["rating"]))
        return {"stored": str(self.d.feedback.path), "rated_turn": last is not None,
                "counts": self.d.feedback.counts()}

    async def _m_look(self, params: Params, peer: Peer) -> dict[str, Any]:
        """A still for the owner to check the framing; never sent to the model."""
        try:
            still = await self.d.camera.take("edgectl")
        except StillRefused as e:
            raise ControlError(ErrorCode.UNAVAILABLE, str(e)) from None
        return {**still.summary(), "jpeg_base64": base64.b64encode(still.jpeg).decode("ascii")}
    def _ota(self) -> OtaManager:
        if self.d.ota is None:
            raise ControlError(ErrorCode.UNAVAILABLE, "OTA is not running (see the journal)")
        return self.d.ota

    async def _m_ota_status(self, params: Params, peer: Peer) -> dict[str, Any]:
        return self._ota().status()

    async def _m_ota_apply(self, params: Params, peer: Peer) -> AsyncIterator[Any]:
        """Apply a bundle: ``{"bundle": base64, "wait": bool, "origin": str}``. Yields the
        trial (version, changed sections, window), then the result: ``pending``, or with
        ``wait`` the health window's outcome (``committed`` / ``rolled_back``)."""
        from edged.ota.bundle import BundleError

        ota = self._ota()
        b64, origin = params.get("bundle"), params.get("origin", "")
        if not isinstance(b64, str) or not isinstance(origin, str):
            raise ControlError(ErrorCode.INVALID_PARAMS, 'ota.apply needs params {"bundle": '
                               '"<base64 of the bundle file>"} (edgectl ota apply FILE)')
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise ControlError(ErrorCode.INVALID_PARAMS, "bundle is not base64") from None
        origin = f"{origin[:80] or 'edgectl'} (uid {peer.uid})"
        try:
            trial = await ota.apply(raw, origin)
        except BundleError as e:
            code = ErrorCode.BUSY if e.reason == "busy" else ErrorCode.REJECTED
            raise ControlError(code, f"bundle rejected ({e.reason}): {e}") from None
        try:
            yield {"stage": "trial", **trial}
            if trial["restart"] or not params.get("wait"):
                yield Final({"result": "pending", **trial})
                return
            yield Final({**trial, **await ota.wait_verdict()})
        finally:
            ota.restart_if_needed()     # after the answer went out (or the caller left)

    async def _m_debug_stall(self, params: Params, peer: Peer) -> dict[str, Any]:
        """Test hook: block the event loop (as a deadlock would) so the watchdog lapses."""
        seconds = float(params.get("seconds", 1.0))
        self.d.notifier.status(f"debug: stalling the event loop for {seconds:g}s")
        time.sleep(min(seconds, 60.0))  # noqa: ASYNC251 - blocking on purpose
        return {"stalled_s": seconds}

    async def _m_debug_fail(self, params: Params, peer: Peer) -> dict[str, Any]:
        """Test hook: a component whose task raises ``message`` (as a library's exception
        would), so tests can follow exception text into status, events, STATUS= and logs."""
        message = str(params.get("message", "debug failure"))

        async def fail() -> None:
            raise RuntimeError(message)

        self.d.supervisor.spawn("debug", fail)
        return {"component": "debug"}

    async def _m_debug_memory(self, params: Params, peer: Peer) -> dict[str, Any]:
        """Benchmark hook: the modules loaded so far (scripts/bench_memory.py diffs them to
        show what the first questions loaded)."""
        return {"modules": sorted(sys.modules)}
