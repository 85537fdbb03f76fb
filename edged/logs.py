"""Logging: journald under systemd, readable stderr otherwise, and secrets never written.

Under systemd (``$JOURNAL_STREAM`` or ``$INVOCATION_ID`` set) records go to journald through
python-systemd's ``JournalHandler`` with ``SYSLOG_IDENTIFIER=edged``, so ``extra={"EDGED_EVENT":
"turn", ...}`` become journal fields an operator can query::

    journalctl -u edged EDGED_EVENT=reconnect -o json

Elsewhere a one-line-per-record stderr format is used (the structured fields are appended as
``key=value`` so nothing is lost in a terminal or a test log).

Secrets: :class:`RedactingFilter` sits on every handler and replaces each registered secret
(the Gemini API key) in the message, its arguments, the traceback and the structured fields,
wherever it appears - including inside an exception text from a library we do not control.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from systemd.journal import JournalHandler

REDACTED = "**********"
FIELD_PREFIX = "EDGED_"

# Structured event names (the value of EDGED_EVENT); one place so queries stay stable.
EV_TURN = "turn"
EV_RECONNECT = "reconnect"
EV_TOOL_CALL = "tool_call"
EV_SYNC = "sync"
EV_ERROR = "error"
EV_RELOAD = "reload"
EV_LIFECYCLE = "lifecycle"
EV_CONTROL = "control"
EV_OTA = "ota"


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class RedactingFilter(logging.Filter):
    """Replaces secret values everywhere in a record before any handler formats it.

    The record is rewritten in place (message fully rendered, ``args`` cleared, traceback
    rendered into ``exc_text``) because ``JournalHandler`` also ships the raw ``args``,
    ``exc_info`` and every attribute of the record as fields.
    """

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def _redact(self, text: str, secrets: list[str]) -> str:
        for s in secrets:
            text = text.replace(s, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for s in self._secrets() if s and len(s) >= 4]
        if not secrets:
            return True
        record.msg = self._redact(record.getMessage(), secrets)
        record.args = ()
        if record.exc_info:
            exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = exc_text
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info, secrets)
        for key, value in list(record.__dict__.items()):
            if key.startswith(FIELD_PREFIX) and not isinstance(value, int | float):
                record.__dict__[key] = self._redact(str(value), secrets)
        return True


class _StderrFormatter(logging.Formatter):
    """``LEVEL logger: message [EDGED_X=y ...]`` - short enough to read over SSH."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={v}" for k, v in sorted(record.__dict__.items())
                  if k.startswith(FIELD_PREFIX)]
        if fields:
            first, sep, rest = line.partition("\n")
            line = f"{first} [{' '.join(fields)}]{sep}{rest}"
        return line


class _SecretBox:
    """The current secrets; replaced on reload so a rotated key is redacted too."""

    def __init__(self) -> None:
        self.values: tuple[str, ...] = ()

    def __call__(self) -> tuple[str, ...]:
        return self.values


_secrets = _SecretBox()


def set_secrets(values: Iterable[str | None]) -> None:
    """Register the secret values that must never appear in any log output."""
    _secrets.values = tuple(v for v in values if v)


def setup_logging(
    level: int = logging.INFO,
    *,
    journal: bool | None = None,
    stream: TextIO | None = None,
    journal_sender: Callable[..., Any] | None = None,
) -> logging.Handler:
    """Install the one root handler edged uses and return it.

    ``journal``: force journald (True) or stderr (False); default: detect systemd.
    ``journal_sender``: replaces ``systemd.journal.send`` (tests capture the exact fields).
    """
    use_journal = under_systemd() if journal is None else journal
    handler: logging.Handler
    if use_journal:
        kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": "edged"}
        if journal_sender is not None:
            kwargs["sender_function"] = journal_sender
        handler = JournalHandler(**kwargs)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_StderrFormatter())
    handler.addFilter(RedactingFilter(_secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (websockets frames, httpx requests) is not operator information.
    for noisy in ("websockets", "httpx", "httpcore", "google_genai", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return handler
