"""What to do after a Live connection ends: a pure function of how it ended.

Kept apart from the socket code so every rule of docs/live-session.md ("Reconnect policy") is a
unit test on plain values: :func:`classify` turns the exception that ended a connection into an
:class:`End`, and :class:`ReconnectPolicy` turns an ``End`` into a :class:`Decision` (how long
to wait, what state to show, whether the resumption handle is still worth using, what to log).
"""

from __future__ import annotations

import logging
import random
import ssl
from dataclasses import dataclass
from typing import Literal

import websockets
from google.genai import errors

from edged.backoff import Backoff
from edged.config import ConfigError, SessionSettings

CONFIG_ERROR_CODES = frozenset({1007, 1008})
HINTS = {
    1007: "the server rejected a setup field or the API key (invalid/expired key, unsupported "
          "voice/language, bad tool declaration): check gemini.api_key / GEMINI_API_KEY, "
          "gemini.voice, gemini.language and the registered tools",
    1008: "the model or API version is not available for this key: check gemini.model "
          "(a Live model, e.g. gemini-3.8-live) and gemini.api_version",
}

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


def classify(e: BaseException, during_setup: bool) -> End:
    """The :class:`End` for the exception that ended a connection (or its setup)."""
    if isinstance(e, errors.APIError):
        reason = e.details if isinstance(e.details, str) else (e.message or str(e.details))
        return End("config" if e.code in CONFIG_ERROR_CODES else "api", e.code, reason,
                   during_setup)
    if isinstance(e, websockets.ConnectionClosed):
        code = e.rcvd.code if e.rcvd else 1006
        return End("api", code, e.rcvd.reason if e.rcvd else "abnormal closure", during_setup)
    if isinstance(e, ssl.SSLCertVerificationError):
        return End("config", None, f"TLS verification failed ({e.verify_message}); set "
                   "gemini.ca_file to the server's CA (PEM)", during_setup)
    if isinstance(e, ConfigError):
        return End("config", None, str(e), during_setup)
    if isinstance(e, TimeoutError):
        return End("network", None, "no setupComplete within session.connect_timeout_s",
                   during_setup)
    if isinstance(e, OSError | websockets.InvalidHandshake):
        return End("network", None, f"{type(e).__name__}: {e}", during_setup)
    return End("error", None, f"{type(e).__name__}: {e}", during_setup)


class ReconnectPolicy:
    """The reconnect rules; holds only the transient-failure count (in its :class:`Backoff`)."""

    def __init__(self, settings: SessionSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.backoff = Backoff(settings.backoff_base_s, settings.backoff_cap_s, "full", rng)

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
        if end.kind == "config" or end.code in CONFIG_ERROR_CODES:
            if end.code in CONFIG_ERROR_CODES and end.resumed and end.during_setup:
                # A stale or rejected handle (seen after long sessions): a fresh session is
                # the fix, not a five-minute wait.
                return Decision(0.0, True, drop_handle="resumption was refused",
                                log_level=logging.WARNING,
                                message=f"Live refused to resume (close {end.code}: "
                                        f"{end.reason}); starting a new session")
            hint = HINTS.get(end.code or 0, "")
            detail = f"{end.code}: {end.reason}" if end.code else end.reason
            return Decision(
                s.config_error_retry_s, True, "config_error",
                f"{detail} (hint: {hint})" if hint else detail,
                drop_handle="configuration error", log_level=logging.ERROR,
                message=f"Gemini Live rejected the configuration (close {end.code}: "
                        f"{end.reason}){f'. Hint: {hint}' if hint else ''}; retrying in "
                        f"{s.config_error_retry_s:g}s or on reload")
        if age_s >= s.stable_after_s:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        code = f" {end.code}" if end.code is not None else ""
        why = f": {end.reason}" if end.reason else ""
        return Decision(
            delay, True, "backoff", f"{end.cause}: {end.reason}",
            log_level=logging.INFO if end.code == 1000 else logging.WARNING,
            message=f"Live connection ended ({end.kind}{code}{why}) after {age_s:.1f}s; "
                    f"reconnecting in {delay:.2f}s{' (resuming)' if resuming else ''}")
