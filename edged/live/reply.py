"""Collect one reply from the Live event stream: the one loop behind ``edgectl ask`` and
``edged chat``.

Both send a typed question and then read events until ``turnComplete``. They differ only in
what they do with the pieces (stream them to a socket, print them), so :func:`stream_reply`
yields the pieces as they arrive and the finished :class:`Reply` last:

* :class:`ReplyWords` - words of the answer (text, or the transcription of spoken audio);
* :class:`ToolUsed` - the model called a tool;
* :class:`LinkLost` - the connection dropped mid-reply; the session re-sends the question on the
  next connection, so what was collected so far is discarded and the answer starts again.

``interrupted`` (the user spoke over the answer) discards the audio collected so far, as the
speaker would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from edged.events import (
    Interrupted,
    ModelAudio,
    SessionChanged,
    ToolCallStarted,
    TurnComplete,
    now,
    reply_chunk,
)

# Session states that mean the link is (re)establishing rather than usable or shut down.
_LINK_DOWN = frozenset({"connecting", "resuming", "backoff", "config_error"})


@dataclass(frozen=True, slots=True)
class ReplyWords:
    text: str


@dataclass(frozen=True, slots=True)
class ToolUsed:
    name: str


@dataclass(frozen=True, slots=True)
class LinkLost:
    state: str


@dataclass(slots=True)
class Reply:
    """The whole answer to one question."""

    text: str = ""
    audio: bytes = b""
    tools: list[str] = field(default_factory=list)
    first_reply_at: float | None = None       # events.now() of the first text or audio
    interrupted: bool = False
    link_lost: bool = False


ReplyItem = ReplyWords | ToolUsed | LinkLost | Reply


async def stream_reply(events: asyncio.Queue[object],
                       timeout_s: float) -> AsyncIterator[ReplyItem]:
    """Read ``events`` (a bus subscription made *before* the question was sent) until the
    turn completes; the last item is the :class:`Reply`. ``TimeoutError`` after ``timeout_s``
    without a complete turn."""
    text: list[str] = []
    audio = bytearray()
    reply = Reply()
    async with asyncio.timeout(timeout_s):
        while True:
            ev = await events.get()
            if (chunk := reply_chunk(ev)) is not None:   # type: ignore[arg-type]
                if reply.first_reply_at is None:
                    reply.first_reply_at = now()
                text.append(chunk)
                yield ReplyWords(chunk)
            elif isinstance(ev, ModelAudio):
                if reply.first_reply_at is None:
                    reply.first_reply_at = ev.t
                audio += ev.pcm
            elif isinstance(ev, ToolCallStarted):
                reply.tools.append(ev.name)
                yield ToolUsed(ev.name)
            elif isinstance(ev, Interrupted):
                reply.interrupted = True
                audio.clear()
            elif isinstance(ev, SessionChanged) and ev.state in _LINK_DOWN:
                if not reply.link_lost:
                    yield LinkLost(ev.state)
                reply.link_lost = True
                text.clear()
                audio.clear()
            elif isinstance(ev, TurnComplete):
                reply.text = "".join(text)
                reply.audio = bytes(audio)
                yield reply
                return
