"""Real synthetic speech from espeak-ng, as raw S16_LE mono PCM at a chosen rate.

Used where a human voice is needed without a human: the simulator's spoken replies, the demo's
questions, and test/benchmark material. Not used on the device's audio path.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from edged.formats import CAPTURE_RATE

ESPEAK = "espeak-ng"


def available() -> bool:
    return shutil.which(ESPEAK) is not None


def resample(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """Linear-interpolation resampling; fine for test material, never used on live audio."""
    if src_rate == dst_rate:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    n = round(len(x) * dst_rate / src_rate)
    y = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)
    return np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes()


def synthesize(text: str, voice: str = "es", rate: int = CAPTURE_RATE,
               speed_wpm: int = 160) -> bytes:
    """Speak ``text`` with espeak-ng voice ``voice`` ("es", "en-us", ...); raw S16_LE mono."""
    if not available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "speech.wav"
        subprocess.run([ESPEAK, "-v", voice, "-s", str(speed_wpm), "-w", str(out), text],
                       check=True, capture_output=True, timeout=60)
        with wave.open(str(out), "rb") as w:
            src_rate = w.getframerate()
            pcm = w.readframes(w.getnframes())
    return resample(pcm, src_rate, rate)


def tone(seconds: float, rate: int, freq: float = 440.0, dbfs: float = -12.0) -> bytes:
    """A sine tone: the fallback 'voice' when espeak-ng is missing."""
    t = np.arange(int(seconds * rate)) / rate
    amp = 32767 * 10 ** (dbfs / 20)
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()
