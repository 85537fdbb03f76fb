"""What to do after a Live connection ends: a pure function of how it ended.

Kept apart from the socket code so every rule of docs/live-session.md ("Reconnect policy") is a
unit test on plain values: :func:`classify` turns the exception that ended a connection into an
:class:`End`, and :class:`ReconnectPolicy` turns an ``End`` into a :class:`Decision` (how long
to wait, what state to show, whether the resumption handle is still worth using, whether to
check the network before trying again, what to log).

Two kinds of failure are told apart because they need opposite answers:

* the **server** answered and refused (a close code, an HTTP error at the handshake): back off
  exponentially with full jitter, so a fleet does not hammer a server that is struggling;
* the **network** failed (no route, refused or unanswered connect, a connection lost without a
  close frame, a stall): the delay still comes from the same backoff, but the supervisor first
  probes the network (``check_link``), and when it sees the network come back after being down
  it calls :meth:`ReconnectPolicy.link_returned` and connects at once - so however long the
  outage lasted, its grown backoff never delays the return.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Literal

import websockets
from google.genai import errors

from edged.backoff import Backoff
from edged.config import ConfigError, SessionSettings
from edged.redact import describe_error, redact

CONFIG_ERROR_CODES = frozenset({1007, 1008})
HINTS = {
    1007: "the server rejected a setup field or the API key (invalid/expired key, unsupported "
          "voice/language, bad tool declaration): check gemini.api_key / GEMINI_API_KEY, "
          "gemini.voice, gemini.language and the registered tools",
    1008: "the model or API version is not available for this key: check gemini.model "
          "(a Live model, e.g. gemini-3.8-live) and gemini.api_version",
}

MID_SESSION_HINT = ("the server accepted the setup but then closed the session, also a fresh "
                    "one: it rejects something sent mid-session (a tool response, a message); "
                    "the reason names it")
# A fresh session is tried this many times after a 1007/1008 that arrives mid-session (after
# setupComplete) before the close is called a configuration error: such closes are reported
# after tool responses ("Requested entity was not found.") on setups that work.
MID_SESSION_FRESH_TRIES = 1

EndKind = Literal["closed", "goaway", "reconfigure", "stall", "config", "api", "network", "error"]


@dataclass(frozen=True, slots=True)
class End:
    """Why one connection ended."""

    kind: EndKind
    code: int | None = None
    reason: str = ""
    during_setup: bool = False
    resumed: bool = False

    @property
    def cause(self) -> str:
        """The close code as text, or the kind when there was none (the metrics label)."""
        return str(self.code) if self.code is not None else self.kind


@dataclass(frozen=True, slots=True)
class Decision:
    """What the supervisor does next."""

    delay_s: float
    reconnect: bool            # False only for a close we asked for
    state: Literal["connecting", "backoff", "config_error"] = "connecting"
    detail: str = ""
    drop_handle: str | None = None     # why the resumption handle must not be used again
    log_level: int = logging.INFO
    message: str = ""
    check_link: bool = False   # probe the network first; its return cuts the delay short


def classify(e: BaseException, during_setup: bool) -> End:
    """The :class:`End` for the exception that ended a connection (or its setup).

    1006 means no close frame arrived - the link, not the server, ended it (the SDK reports a
    lost TCP connection and websockets' keepalive timeout that way).

    Its ``reason`` is redacted here, where the server's words enter edged: a close reason
    can echo the API key, and from here it would reach status, events and ``STATUS=``."""
    end = _classify(e, during_setup)
    return dataclasses.replace(end, reason=redact(end.reason))


def _classify(e: BaseException, during_setup: bool) -> End:
    if isinstance(e, errors.APIError):
        reason = e.details if isinstance(e.details, str) else (e.message or str(e.details))
        kind: EndKind = ("config" if e.code in CONFIG_ERROR_CODES
                         else "network" if e.code == 1006 else "api")
        return End(kind, e.code, reason, during_setup)
    if isinstance(e, websockets.ConnectionClosed):
        if e.rcvd is None:
            return End("network", 1006, "abnormal closure", during_setup)
        return End("api", e.rcvd.code, e.rcvd.reason, during_setup)
    if isinstance(e, websockets.InvalidStatus):      # the server answered the handshake: refused
        return End("api", None, f"HTTP {e.response.status_code} at the WebSocket handshake",
                   during_setup)
    if isinstance(e, ssl.SSLCertVerificationError):
        return End("config", None, f"TLS verification failed ({e.verify_message}); set "
                   "gemini.ca_file to the server's CA (PEM)", during_setup)
    if isinstance(e, ConfigError):
        return End("config", None, str(e), during_setup)
    if isinstance(e, TimeoutError):
        return End("network", None, "no setupComplete within session.connect_timeout_s",
                   during_setup)
    if isinstance(e, OSError | websockets.InvalidHandshake):
        return End("network", None, describe_error(e), during_setup)
    return End("error", None, describe_error(e), during_setup)


class ReconnectPolicy:
    """The reconnect rules. State: the transient-failure count (its :class:`Backoff`) and how
    many fresh sessions were tried after mid-session 1007/1008 closes."""

    def __init__(self, settings: SessionSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.backoff = Backoff(settings.backoff_base_s, settings.backoff_cap_s, "full", rng)
        self.fresh_tries = 0

    def link_returned(self) -> None:
        """The network was seen down and is usable again: what the outage added to the backoff
        says nothing about the server, so the next failure starts from ``backoff_base_s``."""
        self.backoff.reset()

    def session_works(self) -> None:
        """A turn completed: the setup is good, so a later mid-session 1007/1008 gets its fresh
        session again."""
        self.fresh_tries = 0

    def update(self, settings: SessionSettings) -> None:
        """New knobs from a reload; the failure count is kept."""
        self.settings = settings
        self.backoff.base_s, self.backoff.cap_s = settings.backoff_base_s, settings.backoff_cap_s

    def decide(self, end: End, age_s: float, resuming: bool) -> Decision:
        """``age_s``: how long the connection lived; ``resuming``: a handle is still held."""
        s = self.settings
        if end.kind == "closed":
            return Decision(0.0, reconnect=False)
        if end.kind in ("goaway", "reconfigure"):
            self.backoff.reset()
            return Decision(0.0, True, message=f"Live reconnecting ({end.reason})")
        if age_s >= s.stable_after_s:
            self.backoff.reset()
            self.fresh_tries = 0
        if end.kind == "config" or end.code in CONFIG_ERROR_CODES:
            if end.code in CONFIG_ERROR_CODES and end.resumed and end.during_setup:
                # A stale or rejected handle (seen after long sessions): a fresh session is
                # the fix, not a five-minute wait.
                return Decision(0.0, True, drop_handle="resumption was refused",
                                log_level=logging.WARNING,
                                message=f"Live refused to resume (close {end.code}: "
                                        f"{end.reason}); starting a new session")
            if (end.code in CONFIG_ERROR_CODES and not end.during_setup
                    and self.fresh_tries < MID_SESSION_FRESH_TRIES):
                # The setup was accepted, so the configuration is not (yet) the suspect: the
                # server lost this session. A fresh one, re-seeded with the conversation.
                self.fresh_tries += 1
                return Decision(0.0, True, drop_handle=f"the server closed the session with "
                                f"{end.code} mid-session",
                                log_level=logging.WARNING,
                                message=f"Live closed the session mid-way (close {end.code}: "
                                        f"{end.reason}); starting a fresh session re-seeded "
                                        f"with the conversation")
            hint = (HINTS.get(end.code or 0, "") if end.during_setup or end.code is None
                    else MID_SESSION_HINT)
            detail = f"{end.code}: {end.reason}" if end.code else end.reason
            return Decision(
                s.config_error_retry_s, True, "config_error",
                f"{detail} (hint: {hint})" if hint else detail,
                drop_handle="configuration error", log_level=logging.ERROR,
                message=f"Gemini Live rejected the configuration (close {end.code}: "
                        f"{end.reason}){f'. Hint: {hint}' if hint else ''}; retrying in "
                        f"{s.config_error_retry_s:g}s or on reload")
        delay = self.backoff.next_delay()
        code = f" {end.code}" if end.code is not None else ""
        why = f": {end.reason}" if end.reason else ""
        link = end.kind in ("network", "stall")
        return Decision(
            delay, True, "backoff", f"{end.cause}: {end.reason}",
            log_level=logging.INFO if end.code == 1000 else logging.WARNING,
            message=f"Live connection ended ({end.kind}{code}{why}) after {age_s:.1f}s; "
                    f"reconnecting in {delay:.2f}s{' (resuming)' if resuming else ''}"
                    f"{', or as soon as the network is back' if link else ''}",
            check_link=link)
