"""alsa-lib's own error lines go through the logger (debug level), not raw to stderr."""

from __future__ import annotations

import subprocess
import sys

SNIPPET = """
import logging, sys
import alsaaudio
from edged.logs import setup_logging
from edged.audio.alsalog import route_alsa_errors_to_log
setup_logging(logging.DEBUG if sys.argv[1] == "debug" else logging.INFO, journal=False)
if sys.argv[2] == "route":
    assert route_alsa_errors_to_log()
for _ in range(3):
    try:
        alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="edged_test_no_such_pcm")
    except alsaaudio.ALSAAudioError:
        pass
"""


def _stderr(level: str, route: str) -> str:
    return subprocess.run([sys.executable, "-c", SNIPPET, level, route], capture_output=True,
                          text=True, timeout=60, check=True).stderr


def test_without_the_handler_alsa_writes_to_stderr() -> None:
    """The problem exists (so the test below can fail): raw lines, one per failed open."""
    assert _stderr("info", "no").count("ALSA lib pcm.c") == 3


def test_alsa_errors_go_to_the_debug_log_with_the_reason_logged_once() -> None:
    err = _stderr("info", "route")
    assert "ALSA lib" not in err
    assert err.count("alsa-lib's own error messages go to the debug log") == 1
    debug = _stderr("debug", "route")
    assert "ALSA lib" not in debug
    lines = [ln for ln in debug.splitlines() if "edged.alsa: alsa-lib pcm.c:" in ln]
    assert len(lines) == 3 and "Unknown PCM %s" in lines[0]
