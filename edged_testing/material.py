"""Test, demo and benchmark audio built with numpy from real espeak-ng speech
(:mod:`edged_testing.speech`).

Hard cases are made, not recorded: speech at a chosen level, noise mixed at a chosen SNR, and
the device's own reply leaking back into the microphone (attenuated and delayed, as from a
speaker a few centimetres away). Never used on the device's audio path.
"""

from __future__ import annotations

import numpy as np

from edged.formats import CAPTURE_RATE, REPLY_RATE
from edged_testing import speech

RATE = CAPTURE_RATE


def silence(ms: int, rate: int = RATE) -> bytes:
    return bytes(rate * ms // 1000 * 2)


def _arr(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def level_dbfs(pcm: bytes) -> float:
    """RMS of the voiced part (samples above -60 dBFS), so leading silence doesn't count."""
    x = _arr(pcm)
    x = x[np.abs(x) > 32768 * 1e-3]
    return -120.0 if x.size == 0 else float(20 * np.log10(np.sqrt(np.mean(x * x)) / 32768))


def scale_to(pcm: bytes, dbfs: float) -> bytes:
    """Scale so that :func:`level_dbfs` is ``dbfs``."""
    return _pcm(_arr(pcm) * 10 ** ((dbfs - level_dbfs(pcm)) / 20))


def noise(ms: int, dbfs: float, seed: int = 0, rate: int = RATE) -> bytes:
    """White noise with RMS ``dbfs`` (a fan, street noise)."""
    rng = np.random.default_rng(seed)
    n = rate * ms // 1000
    return _pcm(rng.standard_normal(n) * 32768 * 10 ** (dbfs / 20))


def mix(base: bytes, other: bytes, offset_ms: int = 0, gain_db: float = 0.0,
        rate: int = RATE) -> bytes:
    """``base`` with ``other`` added at ``offset_ms`` (extends base if needed)."""
    a, b = _arr(base), _arr(other) * 10 ** (gain_db / 20)
    start = rate * offset_ms // 1000
    out = np.zeros(max(len(a), start + len(b)))
    out[:len(a)] += a
    out[start:start + len(b)] += b
    return _pcm(out)


def with_noise(pcm: bytes, snr_db: float, seed: int = 0, rate: int = RATE) -> bytes:
    """Speech plus white noise ``snr_db`` below the speech level, over the whole clip."""
    n = noise(len(pcm) * 1000 // (2 * rate), level_dbfs(pcm) - snr_db, seed, rate)
    return mix(pcm, n, rate=rate)


def say(text: str, voice: str = "en-us", dbfs: float = -20.0, rate: int = RATE) -> bytes:
    """espeak-ng speech at a conversational level, trimmed of espeak's trailing silence."""
    pcm = scale_to(speech.synthesize(text, voice, rate=rate), dbfs)
    x = np.frombuffer(pcm, dtype="<i2")
    loud = np.nonzero(np.abs(x) > 300)[0]
    return x[: loud[-1] + 1].tobytes() if loud.size else pcm


def echo_of(reply24k: bytes, gain_db: float = -25.0, delay_ms: int = 5) -> bytes:
    """What the mic hears of the device's own 24 kHz reply: 16 kHz, attenuated, delayed."""
    return silence(delay_ms) + _pcm(_arr(speech.resample(reply24k, REPLY_RATE, RATE))
                                    * 10 ** (gain_db / 20))
