"""The control methods ``edgectl`` calls, as their own class (the daemon keeps the lifecycle).

Each method validates its params, does its work through the small :class:`DaemonAPI` the
daemon offers, and returns a result of the shape :mod:`edged.control.protocol` defines. Adding a
verb: write ``_m_<verb>`` here, list it in :meth:`ControlMethods.table`, add its typed call to
:class:`~edged.control.client.ControlClient` and its subcommand to ``edgectl``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from edged.camera.component import Camera, StillRefused
from edged.control.protocol import ControlError, ErrorCode, Health, ReloadResult, Status
from edged.control.server import Final, Method, Params, Peer
from edged.daemon import status as st
from edged.daemon.observers import TurnLog
from edged.events import (
    LIVE_EVENTS,
    EventBus,
    FeedbackGiven,
    TurnFinished,
    TurnRecord,
    now,
)
from edged.feedback import FeedbackError, FeedbackStore
from edged.live.reply import Reply, ReplyWords, ToolUsed, stream_reply
from edged.live.session import LiveSession
from edged.metrics import Metrics
from edged.notify import Notifier

log = logging.getLogger("edged.daemon")

ASK_MAX_CHARS = 4000
ASK_TIMEOUT_S = 90.0
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

    def view(self) -> st.View: ...
    def refresh_snapshot(self) -> None: ...
    async def reload(self, why: str) -> ReloadResult: ...
    async def set_mute(self, muted: bool, uid: int) -> bool: ...


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
            "ask": Method(self._m_ask, mutating=True, streaming=True),
            "feedback": Method(self._m_feedback, mutating=True),
            # privacy: taking a photo is for members of control.group only, like mute
            "look": Method(self._m_look, mutating=True),
        }
        if os.environ.get(DEBUG_ENV) == "1":
            m["debug.stall"] = Method(self._m_debug_stall, mutating=True)
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
        async with self._ask_lock:
            q = self.d.bus.subscribe(*LIVE_EVENTS)
            try:
                record = TurnRecord(kind="text", mode="text", user_text=text)
                try:
                    await live.send_text(text)
                except Exception as e:
                    raise ControlError(ErrorCode.UNAVAILABLE, f"could not send the question: "
                                       f"{type(e).__name__}: {e}") from None
                record.speech_end = now()
                try:
                    async for item in stream_reply(q, ASK_TIMEOUT_S):
                        if isinstance(item, ReplyWords):
                            yield {"text": item.text}
                        elif isinstance(item, ToolUsed):
                            yield {"tool": item.name}
                        elif isinstance(item, Reply):
                            record.first_reply_audio = item.first_reply_at
                            record.model_text, record.tools = item.text, item.tools
                            record.interrupted = "server" if item.interrupted else None
                            record.outcome = "interrupted" if item.interrupted else "answered"
                except TimeoutError:
                    raise ControlError(ErrorCode.TIMEOUT, f"no complete answer within "
                                       f"{ASK_TIMEOUT_S:.0f} s") from None
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

    async def _m_debug_stall(self, params: Params, peer: Peer) -> dict[str, Any]:
        """Test hook: block the event loop (as a deadlock would) so the watchdog lapses."""
        seconds = float(params.get("seconds", 1.0))
        self.d.notifier.status(f"debug: stalling the event loop for {seconds:g}s")
        time.sleep(min(seconds, 60.0))  # noqa: ASYNC251 - blocking on purpose
        return {"stalled_s": seconds}
