"""The secrets edged must never show, and the one function that blanks them out of text.

The Gemini API key reaches places we do not write: a server can echo it in a close reason, a
library can put it in an exception's text, a URL can carry it. So text from outside (close
reasons, exception messages, tool errors) is passed through :func:`redact` where it enters
edged's own state - the Live session's end reasons, component details, tool errors, control
error replies - and every output that people or other programs read (the control socket's
replies and events, the sd_notify ``STATUS=`` line, metric labels, log records) applies it once
more on the way out. The daemon registers the current key with :func:`set_secrets` at start
and on every reload, so a rotated key is covered too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "**********"
MIN_SECRET_LEN = 4       # shorter values would blank out ordinary words
# Google API keys have one public shape; one that is not registered (a key from another
# config, a key the server echoes after a rotation) is blanked out as well.
_GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{35}")

_secrets: tuple[str, ...] = ()


def set_secrets(values: Iterable[str | None]) -> None:
    """Register the secret values (the API key) that no output may contain."""
    global _secrets
    _secrets = tuple(sorted({v for v in values if v and len(v) >= MIN_SECRET_LEN},
                            key=len, reverse=True))


def secrets() -> tuple[str, ...]:
    return _secrets


def redact(text: str) -> str:
    """``text`` with every registered secret (and anything shaped like a Google API key)
    replaced by ``**********``."""
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    if "AIza" in text:
        text = _GOOGLE_KEY.sub(REDACTED, text)
    return text



def describe_error(e: BaseException) -> str:
    """``"TypeName: message"`` for an exception, redacted: the one way an exception's text
    enters edged's status, events and replies."""
    return redact(f"{type(e).__name__}: {e}")
