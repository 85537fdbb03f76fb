"""Simulator state tests inspect: connection records, sessions, and the turn context.

Kept apart from the protocol code so a test (or a ``Reply(text=callable)``) can read what the
server saw and remembers without touching sockets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageRecord:
    """One image the client sent as realtime input (``realtimeInput.video``), as received.

    ``pending_calls`` are the ids of the function calls still waiting for a response when it
    arrived: a ``look``-style tool's image arrives after its ``toolCall`` and before its
    ``toolResponse``, so its id is here. ``turn`` is the user turn it arrived in (0 = before any).
    """

    received_at: float
    mime_type: str
    data: bytes
    width: int | None
    height: int | None
    turn: int
    pending_calls: tuple[str, ...]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass
class ConnectionRecord:
    """What one client connection did, as the server saw it (never the API key itself)."""

    index: int
    path: str
    api_key_present: bool
    opened_at: float
    setup: dict[str, Any] | None = None
    resumed_handle: str | None = None
    session_id: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None      # "server", "client", "drop"
    closed_at: float | None = None


@dataclass
class SessionState:
    """Server-side conversation of one session; resumption handles point into it."""

    id: str
    model: str
    history: list[dict[str, str]] = field(default_factory=list)   # {"role", "text"}
    handles: dict[str, int] = field(default_factory=dict)         # handle -> len(history)

    @property
    def user_turns(self) -> int:
        return sum(1 for h in self.history if h["role"] == "user")


@dataclass
class TurnContext:
    """What a reply template or callable can use about the current turn."""

    user_text: str
    turn: int
    history_turns: int          # user turns in this session before this one
    source: str
    via: str
    connection: int
    session: SessionState
    tool_result: Any = None      # the last toolResponse's ``response``
    images: list[ImageRecord] = field(default_factory=list)   # received during this turn

    @property
    def tool_error(self) -> str | None:
        """The ``error`` of the last tool response, if it was one."""
        r = self.tool_result
        return str(r["error"]) if isinstance(r, dict) and "error" in r else None

    def fields(self) -> dict[str, Any]:
        hit = first_hit(self.tool_result) or {}
        image = self.images[-1] if self.images else None
        return {
            "user_text": self.user_text, "turn": self.turn, "history_turns": self.history_turns,
            "source": self.source, "via": self.via, "connection": self.connection,
            "tool_result": "" if self.tool_result is None
            else json.dumps(self.tool_result, ensure_ascii=False),
            "tool_title": str(hit.get("title", "")), "tool_source": str(hit.get("source", "")),
            "tool_heading": str(hit.get("heading", "")), "tool_text": str(hit.get("text", "")),
            "tool_error": self.tool_error or "", "image_count": len(self.images),
            "image_bytes": len(image.data) if image else 0,
            "image_size": image.size if image else "",
            "image_mime": image.mime_type if image else "",
        }

    def render(self, text: Any) -> str:
        if callable(text):
            return str(text(self))
        return str(text).format_map(_Keep(self.fields()))

class _Keep(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def first_hit(value: Any) -> dict[str, Any] | None:
    """The first dict carrying a title or source anywhere in a tool response (any shape)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict):
        if "title" in value or "source" in value:
            return value
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            hit = first_hit(v)
            if hit is not None:
                return hit
    return None



NAME_RE = re.compile(r"\b(?:me llamo|my name is|soy)\s+([A-ZÁÉÍÓÚÑ][\wáéíóúñ]+)", re.IGNORECASE)


def remembered_name(history: list[dict[str, str]]) -> str | None:
    for h in history:
        if h["role"] == "user" and (m := NAME_RE.search(h["text"])):
            return m.group(1)
    return None
