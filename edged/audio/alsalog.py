"""alsa-lib's own error messages, through edged's logger instead of straight to stderr.

alsa-lib prints a line such as ``ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM mic``
to stderr for every failed open, so a missing sound card retried with backoff wrote dozens of
unstructured lines a minute into the journal, past the log filter and without EDGED_ fields.
pyalsaaudio offers no hook for them, so :func:`route_alsa_errors_to_log` installs one with
alsa-lib's ``snd_lib_error_set_handler`` through ctypes.

The handler is variadic in C; a ctypes callback cannot read the variable arguments, so what
reaches the log is the message's format string (``Unknown PCM %s``) with the source location.
Those lines go to the debug level (``EDGED_LOG_LEVEL=debug``); the reason is logged once, and
the errors that matter are reported by edged itself (the device's error in ``edgectl status``,
one warning per failure from the device thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger("edged.alsa")

# void (*snd_lib_error_handler_t)(const char *file, int line, const char *function, int err,
#                                 const char *fmt, ...)
_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_char_p)
_installed: Any = None       # the ctypes callback: alive as long as alsa-lib may call it


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace")


def _on_alsa_error(file: bytes | None, line: int, function: bytes | None, err: int,
                   fmt: bytes | None) -> None:
    log.debug("alsa-lib %s:%d (%s): %s%s", _text(file), line, _text(function), _text(fmt),
              f" (error {err})" if err else "")


def route_alsa_errors_to_log() -> bool:
    """Install the handler once per process; False if libasound cannot be loaded."""
    global _installed
    if _installed is not None:
        return True
    name = ctypes.util.find_library("asound") or "libasound.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        log.warning("alsa-lib's own error messages stay on stderr: cannot load %s (%s)", name, e)
        return False
    _installed = _HANDLER_TYPE(_on_alsa_error)
    lib.snd_lib_error_set_handler(_installed)
    log.info("alsa-lib's own error messages go to the debug log (EDGED_LOG_LEVEL=debug); "
             "device problems are reported by edged (edgectl status)")
    return True
