"""Event-bus observers the daemon installs: the turn log and the journal's event lines.

Each is a small function of the event stream (pipecat's observers are the model): nothing here
asks a component for anything, so a component can be replaced or tested without them.
Metrics are counted by :meth:`edged.metrics.Metrics.on_event` the same way.
"""

from __future__ import annotations

import logging
from collections import deque

from edged.control.protocol import TurnSummary
from edged.events import Event, Reconnecting, ToolCallFinished, TurnFinished
from edged.logs import EV_RECONNECT, EV_TOOL_CALL, EV_TURN

log = logging.getLogger("edged.daemon")

LAST_TURNS = 10


class TurnLog:
    """The last turns (spoken and typed), for ``edgectl status`` and ``edgectl feedback``."""

    def __init__(self, size: int = LAST_TURNS) -> None:
        self._turns: deque[TurnSummary] = deque(maxlen=size)

    def on_turn(self, ev: Event) -> None:
        if isinstance(ev, TurnFinished):
            self._turns.append(ev.summary())   # type: ignore[arg-type]

    def recent(self) -> list[TurnSummary]:
        return list(self._turns)

    def last(self) -> TurnSummary | None:
        return self._turns[-1] if self._turns else None


def journal(ev: Event) -> None:
    """One structured log line per turn, tool call and reconnect (``EDGED_EVENT=`` fields)."""
    if isinstance(ev, TurnFinished):
        kind, latency = ev.record.kind, ev.record.latency_s
        log.info("%s turn %s (latency %s)", kind, ev.record.outcome,
                 f"{latency:.3f}s" if latency is not None else "n/a",
                 extra={"EDGED_EVENT": EV_TURN, "EDGED_KIND": kind,
                        "EDGED_LATENCY_S": latency if latency is not None else ""})
    elif isinstance(ev, ToolCallFinished):
        outcome = "ok" if ev.ok else "error"
        log.info("tool %s %s in %.3fs%s", ev.name, outcome, ev.duration_s,
                 f": {ev.error}" if ev.error else "",
                 extra={"EDGED_EVENT": EV_TOOL_CALL, "EDGED_TOOL": ev.name,
                        "EDGED_OK": int(ev.ok), "EDGED_DURATION_S": ev.duration_s})
    elif isinstance(ev, Reconnecting):
        log.info("Live session reconnect after %s (%s)", ev.cause, ev.reason,
                 extra={"EDGED_EVENT": EV_RECONNECT, "EDGED_CLOSE_CODE": ev.cause})
