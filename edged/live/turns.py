"""Where the conversation stands on the current connection, and what has been said so far.

The supervisor needs three answers from this, each kept here in one place:

* **Is a reply owed?** After a text turn, an ``activityEnd`` or a tool response, until
  ``generationComplete``/``turnComplete``. Only then can silence from the server mean a dead
  socket (stall detection), and a reconnect between turns loses nothing (:meth:`idle`).
* **What to re-send** after a drop: a typed question whose reply had not completed
  (:attr:`pending_text`) - a resumed session is restored to before that turn, because the
  server marks handles non-resumable while it generates.
* **What to re-seed** a fresh session with when resumption was impossible: the last
  ``HISTORY_TURNS`` exchanges, at most ``HISTORY_CHARS`` characters, as text.
"""

from __future__ import annotations

from google.genai import types

from edged.events import now

HISTORY_TURNS = 20           # text exchanges kept to re-seed a session that could not resume
HISTORY_CHARS = 8000


class TurnTracker:
    """Per-connection turn state plus the conversation's text history."""

    def __init__(self) -> None:
        self.in_turn = False
        self.reply_due_since: float | None = None
        self.last_rx = now()
        self.activity_open = False        # activityStart sent on this connection, no end yet
        self.pending_text: str | None = None
        self.history: list[types.Content] = []
        self._user: list[str] = []
        self._model: list[str] = []

    # --- connection and server activity --------------------------------------------------

    def new_connection(self) -> None:
        """A fresh socket: nothing is owed on it yet; a half-received reply is forgotten."""
        self.in_turn = False
        self.reply_due_since = None
        self.last_rx = now()
        self.activity_open = False
        self._model.clear()

    def received(self) -> None:
        self.last_rx = now()

    def reply_due(self) -> None:
        self.in_turn = True
        self.reply_due_since = now()

    def reply_streaming(self) -> None:
        self.in_turn = True

    def tool_running(self) -> None:
        """The model waits for us now, not the other way round: no stall clock."""
        self.in_turn = True
        self.reply_due_since = None

    def generation_complete(self) -> None:
        self.reply_due_since = None

    def turn_complete(self) -> None:
        self.reply_due_since = None
        self.in_turn = False
        self._commit()

    def silent_for(self) -> float | None:
        """Seconds without a server message while a reply is owed (``None``: none owed)."""
        if self.reply_due_since is None:
            return None
        return now() - max(self.reply_due_since, self.last_rx)

    def idle(self, tools_busy: bool) -> bool:
        """Between turns: nothing owed either way, so a reconnect loses nothing."""
        return (not self.in_turn and not tools_busy and self.reply_due_since is None
                and not self.activity_open)

    # --- words -----------------------------------------------------------------------------

    def typed(self, text: str) -> None:
        self.pending_text = text
        self._user.append(text)

    def heard(self, text: str) -> None:
        """Input transcription of the user's speech (ignored while a typed turn is open)."""
        if self.pending_text is None:
            self._user.append(text)

    def said(self, text: str) -> None:
        """Words of the model's reply (text or output transcription)."""
        self._model.append(text)

    def _commit(self) -> None:
        user = "".join(self._user).strip()
        model = "".join(self._model).strip()
        self._user.clear()
        self._model.clear()
        self.pending_text = None
        if user:
            self.history.append(types.Content(role="user", parts=[types.Part(text=user)]))
        if model:
            self.history.append(types.Content(role="model", parts=[types.Part(text=model)]))
        while len(self.history) > 2 * HISTORY_TURNS or (
                len(self.history) > 1
                and sum(len(c.parts[0].text or "") for c in self.history if c.parts)
                > HISTORY_CHARS):
            self.history.pop(0)
