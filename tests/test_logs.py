"""Logging: journald fields under systemd, stderr otherwise, and the API key never written."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.config import load_settings
from edged.logs import setup_logging, under_systemd
from edged.redact import REDACTED, set_secrets

KEY = "AIzaSyD-secret-KEY-value-0123456789"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    set_secrets([])
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _emit_everything(settings_repr: Any) -> None:
    """Log the key every way a careless caller or a library might."""
    log = logging.getLogger("edged.test")
    log.info("settings: %s", settings_repr)
    log.info("key in the format string itself: " + KEY)
    log.warning("key as an argument: %r", {"api_key": KEY})
    log.info("turn done", extra={"EDGED_EVENT": "turn", "EDGED_DETAIL": f"url?key={KEY}",
                                 "EDGED_LATENCY_S": 0.5})
    try:
        raise ConnectionError(f"403 for wss://host/ws?key={KEY}")
    except ConnectionError:
        log.exception("Live connection failed")
    logging.getLogger("websockets.client").error("library says %s", KEY)


def test_under_systemd_detection() -> None:
    assert under_systemd({"JOURNAL_STREAM": "8:1234"})
    assert under_systemd({"INVOCATION_ID": "abc"})
    assert not under_systemd({})


def test_journald_fields_and_no_key(tmp_path: Path) -> None:
    settings = load_settings(None, tmp_path / "absent.toml", env={"GEMINI_API_KEY": KEY})
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, /, **fields: Any) -> None:   # systemd.journal.send's signature
        sent.append((MESSAGE, fields))

    setup_logging(journal=True, journal_sender=sender)
    set_secrets([settings.api_key()])
    _emit_everything(settings.model_dump())      # the unredacted dump, as a bug would log it
    assert len(sent) == 6
    dump = repr(sent)
    assert KEY not in dump
    assert dump.count(REDACTED) >= 6
    msg, fields = sent[3]
    assert msg == "turn done"
    assert fields["SYSLOG_IDENTIFIER"] == "edged"
    assert fields["EDGED_EVENT"] == "turn" and fields["EDGED_LATENCY_S"] == 0.5
    assert fields["EDGED_DETAIL"] == f"url?key={REDACTED}"
    exc_msg, exc_fields = sent[4]
    assert "ConnectionError: 403 for wss://host/ws?key=" + REDACTED in exc_msg
    assert "Traceback" in exc_fields["EXCEPTION_TEXT"]


def test_stderr_format_and_no_key() -> None:
    stream = io.StringIO()
    setup_logging(journal=False, stream=stream)
    set_secrets([KEY])
    _emit_everything({"gemini": {"api_key": KEY}})
    out = stream.getvalue()
    assert KEY not in out
    assert "[EDGED_DETAIL=url?key=" + REDACTED in out
    assert "Traceback (most recent call last)" in out      # the traceback is kept, redacted
    assert "ERROR   websockets.client: library says " + REDACTED in out


def test_rotated_key_is_redacted_too() -> None:
    stream = io.StringIO()
    setup_logging(journal=False, stream=stream)
    set_secrets([KEY])
    set_secrets(["new-key-after-reload-999"])
    logging.getLogger("edged").warning("new-key-after-reload-999")
    assert "new-key-after-reload-999" not in stream.getvalue()
