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


def say(text: str, voice: str = "en-us", dbfs: float = -20.0, rate: int = RATE,
        wpm: int = 160) -> bytes:
    """espeak-ng speech at a conversational level (``wpm`` words per minute), trimmed of
    espeak's trailing silence."""
    pcm = scale_to(speech.synthesize(text, voice, rate=rate, speed_wpm=wpm), dbfs)
    x = np.frombuffer(pcm, dtype="<i2")
    loud = np.nonzero(np.abs(x) > 300)[0]
    return x[: loud[-1] + 1].tobytes() if loud.size else pcm


def echo_of(reply24k: bytes, gain_db: float = -25.0, delay_ms: int = 5) -> bytes:
    """What the mic hears of the device's own 24 kHz reply: 16 kHz, attenuated, delayed."""
    return silence(delay_ms) + _pcm(_arr(speech.resample(reply24k, REPLY_RATE, RATE))
                                    * 10 ** (gain_db / 20))


# --- noise beds --------------------------------------------------------------------------
#
# No recorded noise can be downloaded here, so each kind is synthesised to have what makes it
# hard for a speech gate: steady broadband energy (fan), slow swells and low rumble (street),
# impulses and running water (kitchen), harmonic tones with a beat (music), and other voices
# (babble, café). All are deterministic for a given seed.

NOISE_KINDS = ("white", "fan", "street", "kitchen", "music", "babble", "cafe", "door")
NON_SPEECH_NOISE = ("white", "fan", "street", "kitchen", "music", "door")

_BABBLE_LINES = (
    ("es", "Pues ayer fuimos al mercado y no había casi nada de fruta."),
    ("en-us", "I told him the meeting was moved to Thursday afternoon."),
    ("es", "¿Has visto las noticias de esta mañana sobre el tráfico?"),
    ("en-gb", "We should probably book the tickets before the weekend."),
    ("es-419", "La verdad es que el café de aquí está bastante bueno."),
    ("fr", "Je crois que le train part dans dix minutes."),
    ("en-us", "She said the new office is much closer to the station."),
    ("es", "Mi hermano empieza a trabajar en el hospital el lunes."),
)


def _shaped(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    f[0] = f[1]
    spec /= f ** (exponent / 2)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, len(x))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _bursts(n: int, rng: np.random.Generator, every_s: tuple[float, float],
            decay_s: float, ring_hz: float | None = None) -> np.ndarray:
    """Impulsive events (clatter, a door) at random intervals, each a decaying burst."""
    out = np.zeros(n)
    t = int(rng.uniform(*every_s) * RATE)
    while t < n:
        m = min(n - t, int(decay_s * 6 * RATE))
        k = np.arange(m)
        burst = rng.standard_normal(m) * np.exp(-k / (decay_s * RATE))
        if ring_hz is not None:
            burst += 3 * np.sin(2 * np.pi * ring_hz * k / RATE) * np.exp(-k / (decay_s * RATE))
        out[t:t + m] += burst * rng.uniform(0.5, 1.0)
        t += int(rng.uniform(*every_s) * RATE)
    return out


def _voices(n: int, rng: np.random.Generator, talkers: int) -> np.ndarray:
    """Several people talking at once (espeak-ng voices, each at a random level and offset)."""
    out = np.zeros(n)
    for _ in range(talkers):
        t = int(rng.uniform(0, 1.0) * RATE)
        while t < n:
            voice, line = _BABBLE_LINES[int(rng.integers(len(_BABBLE_LINES)))]
            x = _arr(speech_clip(line, voice)) * rng.uniform(0.5, 1.0)
            m = min(len(x), n - t)
            out[t:t + m] += x[:m]
            t += m + int(rng.uniform(0.2, 1.0) * RATE)
    return _unit(out)


def speech_clip(text: str, voice: str) -> bytes:
    """espeak-ng speech at a fixed level (cached per process: babble reuses lines a lot)."""
    key = (text, voice)
    if key not in _clip_cache:
        _clip_cache[key] = say(text, voice)
    return _clip_cache[key]


_clip_cache: dict[tuple[str, str], bytes] = {}


def noise_bed(kind: str, ms: int, dbfs: float, seed: int = 0) -> bytes:
    """``ms`` of noise of ``kind`` (one of :data:`NOISE_KINDS`) at RMS level ``dbfs``."""
    rng = np.random.default_rng(seed)
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "fan":
        hum = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k
                  for k, f in enumerate((110.0, 220.0, 330.0), start=1))
        x = _unit(_shaped(n, rng, 1.0)) + 0.3 * _unit(hum)
    elif kind == "street":
        swell = 0.6 + 0.4 * np.sin(2 * np.pi * t / rng.uniform(3, 6)) ** 2
        x = _shaped(n, rng, 2.0) * swell + 0.4 * _unit(_band(rng.standard_normal(n), 300, 3000))
        x += 0.5 * _unit(_bursts(n, rng, (2.0, 5.0), 0.08))
    elif kind == "kitchen":
        water = _band(rng.standard_normal(n), 1000, 5000)
        x = _unit(water) + 1.5 * _unit(_bursts(n, rng, (0.4, 1.5), 0.03, ring_hz=2400))
        x += 0.2 * _unit(np.sin(2 * np.pi * 50 * t))
    elif kind == "music":
        x = np.zeros(n)
        bar = RATE // 2
        chords = ((220, 277, 330), (247, 311, 370), (196, 247, 294), (262, 330, 392))
        for i in range(0, n, bar):
            m = min(bar, n - i)
            k = np.arange(m) / RATE
            for f in chords[(i // bar) % len(chords)]:
                x[i:i + m] += (np.sin(2 * np.pi * f * k) + 0.3 * np.sin(4 * np.pi * f * k)) \
                    * np.exp(-k * 2)
        x = _unit(x) + 0.5 * _unit(_bursts(n, rng, (0.5, 0.5), 0.02))
    elif kind == "babble":
        x = _voices(n, rng, 5)
    elif kind == "cafe":
        x = _voices(n, rng, 4) + 0.6 * _unit(_bursts(n, rng, (0.3, 1.2), 0.03, ring_hz=3100))
    elif kind == "door":
        x = 0.05 * rng.standard_normal(n) + _bursts(n, rng, (1.5, 4.0), 0.05)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; one of {', '.join(NOISE_KINDS)}")
    return _pcm(_unit(x) * 32768 * 10 ** (dbfs / 20))


def in_noise(pcm: bytes, kind: str, snr_db: float, lead_ms: int = 1000, tail_ms: int = 1500,
             seed: int = 0) -> tuple[bytes, int]:
    """Speech ``snr_db`` above a noise bed that starts ``lead_ms`` before it and goes on
    ``tail_ms`` after; returns (audio, offset of the speech in bytes)."""
    total = lead_ms + len(pcm) * 1000 // (2 * RATE) + tail_ms
    bed = noise_bed(kind, total, level_dbfs(pcm) - snr_db, seed)
    return mix(bed, pcm, offset_ms=lead_ms), lead_ms * RATE // 1000 * 2
