"""Logging: journald under systemd, readable stderr otherwise, and secrets never written.

Under systemd (``$JOURNAL_STREAM`` or ``$INVOCATION_ID`` set) records go to journald through
python-systemd's ``JournalHandler`` with ``SYSLOG_IDENTIFIER=edged``, so ``extra={"EDGED_EVENT":
"turn", ...}`` become journal fields an operator can query::

    journalctl -u edged EDGED_EVENT=reconnect -o json

Elsewhere a one-line-per-record stderr format is used (the structured fields are appended as
``key=value`` so nothing is lost in a terminal or a test log).

Secrets: :class:`RedactingFilter` sits on every handler and applies :func:`edged.redact.redact`
to the message, its arguments, the traceback and the structured fields, wherever the key
appears - including inside an exception text from a library we do not control.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from systemd.journal import JournalHandler

from edged.redact import redact

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

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        if record.exc_info:
            exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = exc_text
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key.startswith(FIELD_PREFIX) and not isinstance(value, int | float):
                record.__dict__[key] = redact(str(value))
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
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (websockets frames, httpx requests) is not operator information.
    for noisy in ("websockets", "httpx", "httpcore", "google_genai", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return handler
