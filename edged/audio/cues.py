"""Earcons: short sounds the device plays itself, so the wearer knows what it is doing.

Synthesised once (numpy, at the reply rate) rather than shipped as files: a few hundred
milliseconds of tones with soft edges, quiet enough not to startle (-20 dBFS), distinct enough
to tell apart without looking. Played through :meth:`edged.audio.playback.Playback.play_cue`,
which also hands them to the echo canceller, so the device does not hear its own chime as the
user speaking.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from edged.formats import REPLY_RATE

Cue = Literal["wake", "offline", "back", "error"]

# (frequency Hz, duration s) notes; a rising pair invites speech, a falling one says "no".
_NOTES: dict[str, tuple[tuple[float, float], ...]] = {
    "wake": ((880.0, 0.07), (1320.0, 0.09)),
    "offline": ((660.0, 0.12), (440.0, 0.18)),
    "back": ((523.3, 0.08), (659.3, 0.08), (784.0, 0.1)),
    "error": ((330.0, 0.25),),
}
LEVEL_DBFS = -20.0


@functools.cache
def sound(cue: Cue) -> bytes:
    """The cue as 24 kHz mono S16_LE."""
    parts = []
    amp = 32767 * 10 ** (LEVEL_DBFS / 20) * np.sqrt(2)
    for freq, dur in _NOTES[cue]:
        n = int(dur * REPLY_RATE)
        t = np.arange(n) / REPLY_RATE
        fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.008 * REPLY_RATE))
        tone = np.sin(2 * np.pi * freq * t) + 0.25 * np.sin(4 * np.pi * freq * t)
        parts.append(amp / 1.25 * tone * fade)
        parts.append(np.zeros(int(0.015 * REPLY_RATE)))
    return np.round(np.concatenate(parts)).astype("<i2").tobytes()
