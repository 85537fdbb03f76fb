"""The two PCM formats Gemini Live speaks, defined once.

Live takes 16 kHz mono S16_LE from the microphone and answers with 24 kHz mono S16_LE. Capture,
the speech gate, the Live session, playback, ``edged chat``'s WAV files and the test rigs all
use these names instead of literals, so a rate can never disagree between two of them.
"""

from __future__ import annotations

import wave
from pathlib import Path

SAMPLE_BYTES = 2                      # S16_LE, mono
CAPTURE_RATE = 16000                  # microphone -> Live
REPLY_RATE = 24000                    # Live -> speaker
CAPTURE_MIME = f"audio/pcm;rate={CAPTURE_RATE}"


def bytes_per_ms(rate: int) -> int:
    """Bytes of mono S16_LE audio per millisecond at ``rate`` (32 at 16 kHz, 48 at 24 kHz)."""
    return rate * SAMPLE_BYTES // 1000


def seconds(pcm_bytes: int, rate: int) -> float:
    """Duration of ``pcm_bytes`` bytes of mono S16_LE audio at ``rate``."""
    return pcm_bytes / SAMPLE_BYTES / rate


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    """Write raw mono S16_LE PCM as a WAV file (``edged chat``'s reply recordings)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_BYTES)
        w.setframerate(rate)
        w.writeframes(pcm)
