"""Runs the model's function calls for the Live session: one task per call, one response each.

A missing ``functionResponse`` silences the model with no error, so every call the server still
wants gets exactly one response: the :class:`~edged.tools.ToolRegistry` already turns failures
and timeouts into error payloads, and this module sends them with the call's ``id`` and
``name``. A call the server cancels (``toolCallCancellation``), or one whose connection ended
(its answer could not be delivered; the resumed session asks again), is cancelled and answered
with nothing.

Malformed calls are logged and answered where they can be: a call without an ``id`` can only
be answered on Vertex AI (the Gemini API matches responses by id and the SDK refuses a response
without one), so there it is answered by name and on the Gemini API it is logged and skipped; a
call whose arguments are not an object gets an error response saying so; a call that reuses the
id of one still running is answered with an error instead of replacing it. Nothing a call does
can kill its task silently: an unexpected failure is logged and still answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import websockets
from google.genai import live, types

from edged.events import Event, ToolCallFinished, ToolCallStarted, now
from edged.tools import ECHO_MAX_CHARS, ToolOutcome, ToolRegistry, clip, error_payload

log = logging.getLogger(__name__)


class ToolDispatcher:
    """Starts, cancels and answers tool calls; counts them for ``status()``."""

    def __init__(self, registry: ToolRegistry, publish: Callable[[Event], None],
                 on_change: Callable[[], None], ids_required: bool = True) -> None:
        """``on_change`` runs when a call finishes or is cancelled (the supervisor re-checks
        whether it is between turns); ``publish`` puts events on the bus; ``ids_required``:
        responses must carry the call's id (the Gemini API; not Vertex AI)."""
        self.registry = registry
        self.ids_required = ids_required
        self._publish = publish
        self._on_change = on_change
        self._tasks: dict[str, tuple[asyncio.Task[None], str, float]] = {}
        self.counts = {"started": 0, "ok": 0, "error": 0, "cancelled": 0}
        self._orphans: set[asyncio.Task[None]] = set()    # error answers to duplicate ids

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def start(self, fc: types.FunctionCall, session: live.AsyncSession,
              on_sent: Callable[[], None]) -> None:
        """Run one call in its own task; ``on_sent`` runs once its response is on the wire."""
        name = fc.name or ""
        key = fc.id or f"(no id):{name}"
        args: Any = fc.args if fc.args is not None else {}
        self.counts["started"] += 1
        self._publish(ToolCallStarted(key, name, args if isinstance(args, dict) else {}))
        if not fc.id and self.ids_required:
            why = "the call has no id, so no response can be matched to it"
            log.warning("tool call %s without an id: cannot be answered on the Gemini API; "
                        "skipped", clip(repr(name), ECHO_MAX_CHARS))
            self.counts["error"] += 1
            self._publish(ToolCallFinished(key, name, False, 0.0, error=why))
            return
        if key in self._tasks:
            log.warning("tool call id %s reused while the first call still runs; answering "
                        "the second with an error", key)
            self._answer_later(key, fc.id, name, session, on_sent, "a call with this id is "
                               "still running; wait for its result")
            return
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

    async def _run(self, key: str, call_id: str | None, name: str, args: Any,
                   session: live.AsyncSession, on_sent: Callable[[], None]) -> None:
        try:
            outcome = await self.registry.call(name, args)
        except Exception as e:   # registry.call promises not to raise; if it does, still answer
            log.exception("tool call %s (%s) failed unexpectedly", key, name)
            outcome = _failed(f"{name} failed: {type(e).__name__}")
        self.counts["ok" if outcome.ok else "error"] += 1
        await self._respond(key, call_id, name, outcome, session, on_sent)

    def _answer_later(self, key: str, call_id: str | None, name: str,
                      session: live.AsyncSession, on_sent: Callable[[], None], why: str) -> None:
        self.counts["error"] += 1
        task = asyncio.create_task(self._respond(key, call_id, name, _failed(why), session,
                                                 on_sent))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _respond(self, key: str, call_id: str | None, name: str, outcome: ToolOutcome,
                       session: live.AsyncSession, on_sent: Callable[[], None]) -> None:
        try:
            await session.send_tool_response(function_responses=[types.FunctionResponse(
                id=call_id, name=name, response=outcome.response)])
            on_sent()
        except websockets.ConnectionClosed:
            log.warning("tool %s (%s) finished after the connection closed; the resumed "
                        "session will ask again", name, key)
        except Exception:
            log.exception("could not send the response to tool call %s (%s)", key, name)
        self._publish(ToolCallFinished(key, name, outcome.ok, outcome.duration_s, outcome.error,
                                       outcome.response if outcome.ok else None))


def _failed(why: str) -> ToolOutcome:
    payload = error_payload(why, False)
    return ToolOutcome(payload, False, 0.0, payload["error"])
