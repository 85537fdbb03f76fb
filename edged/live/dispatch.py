"""Runs the model's function calls for the Live session: one task per call, one response each.

A missing ``functionResponse`` silences the model with no error, so every call the server still
wants gets exactly one response: the :class:`~edged.tools.ToolRegistry` already turns failures
and timeouts into error payloads, and this module sends them with the call's ``id`` and
``name``. A call the server cancels (``toolCallCancellation``), or one whose connection ended
(its answer could not be delivered; the resumed session asks again), is cancelled and answered
with nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import websockets
from google.genai import live, types

from edged.events import Event, ToolCallFinished, ToolCallStarted, now
from edged.tools import ToolRegistry

log = logging.getLogger(__name__)


class ToolDispatcher:
    """Starts, cancels and answers tool calls; counts them for ``status()``."""

    def __init__(self, registry: ToolRegistry, publish: Callable[[Event], None],
                 on_change: Callable[[], None]) -> None:
        """``on_change`` runs when a call finishes or is cancelled (the supervisor re-checks
        whether it is between turns); ``publish`` puts events on the bus."""
        self.registry = registry
        self._publish = publish
        self._on_change = on_change
        self._tasks: dict[str, tuple[asyncio.Task[None], str, float]] = {}
        self.counts = {"started": 0, "ok": 0, "error": 0, "cancelled": 0}

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def start(self, fc: types.FunctionCall, session: live.AsyncSession,
              on_sent: Callable[[], None]) -> None:
        """Run one call in its own task; ``on_sent`` runs once its response is on the wire."""
        key, name, args = fc.id or fc.name or "", fc.name or "", dict(fc.args or {})
        self.counts["started"] += 1
        self._publish(ToolCallStarted(key, name, args))
        task = asyncio.create_task(self._run(key, fc.id, name, args, session, on_sent),
                                   name=f"tool:{name}:{key}")
        self._tasks[key] = (task, name, now())

        def done(t: asyncio.Task[None]) -> None:
            entry = self._tasks.get(key)
            if entry is not None and entry[0] is t:
                del self._tasks[key]
                self._on_change()

        task.add_done_callback(done)

    def cancel(self, key: str, why: str) -> None:
        """Cancel a running call; no response is sent for it (the server no longer wants one)."""
        entry = self._tasks.get(key)
        if entry is None or entry[0].done() or entry[0].cancelling():
            return
        task, name, started = entry
        task.cancel()
        log.info("tool call %s (%s) %s", key, name, why)
        self.counts["cancelled"] += 1
        self._publish(ToolCallFinished(key, name, False, now() - started, error=why))

    def cancel_all(self, why: str) -> None:
        for key in list(self._tasks):
            self.cancel(key, why)

    async def _run(self, key: str, call_id: str | None, name: str, args: dict[str, Any],
                   session: live.AsyncSession, on_sent: Callable[[], None]) -> None:
        outcome = await self.registry.call(name, args)
        self.counts["ok" if outcome.ok else "error"] += 1
        try:
            await session.send_tool_response(function_responses=[types.FunctionResponse(
                id=call_id, name=name, response=outcome.response)])
            on_sent()
        except websockets.ConnectionClosed:
            log.warning("tool %s (%s) finished after the connection closed; the resumed "
                        "session will ask again", name, key)
        self._publish(ToolCallFinished(key, name, outcome.ok, outcome.duration_s, outcome.error,
                                       outcome.response if outcome.ok else None))
