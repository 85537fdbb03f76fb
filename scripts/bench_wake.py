#!/usr/bin/env python3
"""Wake-word benchmark: false wakes, misses, latency to the wire, CPU, idle uplink.

Everything runs the daemon's own classes. Offline parts feed audio period by period (20 ms, as
fast as it goes) through :class:`~edged.audio.frontend.FrontEnd` with the wake word from
``edged.audio.voice.make_wake_word`` (``listen.*`` defaults: okay_nabu, cutoff 0.9, refractory
2 s). Live parts use ``edged_testing.voice_rig``: VoiceLoop + LiveSession (the real SDK) against
the simulator, through the virtual sound card, ``listen.mode = "wake"``.

  (1) false wakes per hour: continuous streams without the wake word - every
      ``material.NOISE_KINDS`` bed (levels changing each minute), Spanish and English espeak-ng
      sentences (several voices, variants, speeds, levels, gaps, over a -65 dBFS floor);
      the audio hours behind each figure are printed with it
  (2) misses over the wake set: "okey nabu" (Spanish voices) / "okay nabu" (English voices)
      followed by a short question, over voices x variants x speeds x levels, in a quiet room
      and at 10 dB SNR in each noise kind in turn
  (3) wake word end -> wake detected, -> activityStart received by the simulator, -> first
      question audio received; real time (speed 1), daemon defaults (echo cancellation, noise
      suppression, Silero), p50/p95 over the trials
  (4) CPU per audio second of the front end with and without the wake word: offline on the
      same stream, and paced at real time in the rig (wake vs manual mode, same idle room)
  (5) uplink per idle hour in wake mode: noise beds and non-wake speech through the rig
      (speed > 1), bytes the simulator received, extrapolated to an hour

For (1)/(2) the wake word hears exactly what it hears in the daemon (AEC3 + high-pass, nothing
played); the speech detector and noise suppression do not feed it, so there they are the cheap
ones (webrtcvad, no suppression) to fit more hours in. All speech is espeak-ng: the rates are
comparable between runs and settings, not the rates of real voices in a real room.

Numbers only, never pass/fail. Run alone: .venv/bin/python scripts/bench_wake.py [--scale S]
(about 5 minutes here; --scale multiplies the false-wake hours).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.audio.frontend import EchoReference, FrontEnd, WakeHit, WakeWord
from edged.audio.voice import make_wake_word
from edged.config import Settings
from edged.events import AudioFrame, WakeWordDetected
from edged.formats import CAPTURE_RATE
from edged_testing import material as m
from edged_testing import speech
from edged_testing.sim import Reply, Scenario
from edged_testing.voice_rig import poll_until, voice_rig

RATE = CAPTURE_RATE
PERIOD_MS = 20
PERIOD = RATE * PERIOD_MS // 1000 * 2          # bytes per capture period
JOB_S = 600                                    # false-wake audio per worker job

# Everyday sentences, plus template sentences (subject, verb, object, tail) for variety.
ES_SENTENCES = (
    "¿Qué tiempo hace mañana en Madrid?", "Pon una alarma a las siete y media.",
    "¿Cuánto tarda el autobús en llegar al centro?", "Recuérdame comprar pan y leche.",
    "Hoy hemos comido paella en casa de mis padres.", "La reunión se ha movido al jueves.",
    "Baja el volumen, que el niño está durmiendo.", "¿A qué hora cierra la farmacia?",
    "Estoy buscando las llaves y no las encuentro.", "Vale, entonces quedamos a las ocho.",
    "No sé si llevar paraguas, parece que va a llover.", "¿Cuál es la capital de Australia?",
    "Mi hermana vive en Valencia desde hace tres años.", "Apaga las luces del salón.",
    "Necesito un taxi para ir al aeropuerto.", "Ayer vimos una película muy buena.",
    "Ok, lo apunto en la lista de la compra.", "Hay un atasco enorme en la autopista.",
    "¿Qué receta me recomiendas con calabacín?", "Llama a mamá al móvil.",
    "Estamos a punto de llegar, espéranos cinco minutos.", "La batería está al veinte por ciento.",
    "Nadie sabe dónde está el mando de la tele.", "Okey, ya voy.",
    "¿Nos vemos el sábado para cenar?", "El médico me ha dicho que camine más.",
    "Tengo que renovar el pasaporte antes de agosto.", "Hace un calor insoportable.",
    "Oye, ¿has visto mis gafas de sol?", "Nada, no te preocupes, ya lo hago yo.",
    "La cena está lista, venid a la mesa.", "A ver, explícame otra vez cómo funciona esto.",
    "Las naranjas de Valencia están buenísimas.", "El museo abre los domingos por la mañana.",
    "Calcula el quince por ciento de doscientos.", "¿Me avisas cuando llegue el paquete?",
)
ES_TEMPLATE = (
    ("Mi vecino", "La profesora", "Mi abuela", "El jefe", "Tu primo", "La doctora", "Ana",
     "Javier", "Lucía", "El camarero", "La panadera", "Nuestra hija"),
    ("ha comprado", "quiere vender", "está arreglando", "ha perdido", "busca", "ha pintado",
     "nunca encuentra", "ha traído", "necesita", "ha reservado"),
    ("una bicicleta nueva", "el coche de su padre", "las entradas del concierto",
     "la mesa del comedor", "el billete de avión", "el abrigo de invierno",
     "un ordenador portátil", "la lámpara del pasillo", "un ramo de flores", "la maleta grande"),
    ("esta mañana", "la semana pasada", "para el viernes", "sin decir nada a nadie",
     "porque estaba de oferta", "en el mercado del barrio", "después de comer", "por internet"),
)
EN_SENTENCES = (
    "What's the weather like tomorrow in London?", "Set a timer for twenty minutes.",
    "Can you read me my new messages?", "The meeting has been moved to Thursday afternoon.",
    "Turn off the kitchen lights, please.", "We watched a great movie last night.",
    "Remind me to call the dentist on Monday.", "I can't find my keys anywhere.",
    "Okay, I'll be there in five minutes.", "Play some relaxing music.",
    "The train is running about ten minutes late.", "My sister just moved to Seattle.",
    "Add eggs and butter to the shopping list.", "Nobody knows where the remote control is.",
    "Hey, have you seen my sunglasses?", "Book a table for four at eight o'clock.",
    "Let's go to the beach this weekend.", "What's fifteen percent of two hundred?",
)
EN_TEMPLATE = (
    ("My neighbor", "The teacher", "Our team", "Your cousin", "Anna", "James", "The waiter",
     "Our manager", "Grandma"),
    ("bought", "wants to sell", "is fixing", "lost", "borrowed", "painted", "forgot", "brought",
     "needs", "booked"),
    ("a new bicycle", "the concert tickets", "a cookbook", "the dining table", "the plane ticket",
     "a toolbox", "the winter coat", "a laptop", "a bunch of flowers", "an old painting"),
    ("this morning", "last week", "for Friday", "without telling anyone", "after lunch",
     "online", "again", "yesterday"),
)
# distinct renderings (text, voice, variant, speed) per language
RENDERS = {"es": 240, "en": 120}
ES_VOICES, EN_VOICES = ("es", "es-419"), ("en-us", "en-gb")
VARIANTS = ("", "+f2", "+m3", "+m7", "+klatt2")
WAKE_TEXT = {"es": "okey nabu", "es-419": "okey nabu", "en-us": "okay nabu", "en-gb": "okay nabu"}
WAKE_QUESTION = {"es": "¿qué hora es?", "es-419": "¿qué hora es?", "en-us": "what time is it?",
                 "en-gb": "what time is it?"}
WAKE_VARIANTS = ("", "+m3", "+f2")
WAKE_SPEEDS = (130, 160, 190)
WAKE_LEVELS = (-36.0, -26.0, -16.0)
WAKE_PAUSE_MS = 250
HIT_WINDOW_S = 1.0      # a detection within this after the end of "nabu" is a hit
FLOOR_DBFS = -65.0      # a real microphone is never digitally silent

LATENCY_TRIALS = 10
LATENCY_QUESTIONS = ("¿Qué hora es?", "¿Qué tiempo hace hoy?", "¿Qué es MLOps?")
IDLE_CPU_S = 15.0
UPLINK_SPEED = 5.0
UPLINK_SEGMENT_S = 25


# --- material ----------------------------------------------------------------------------


def render(text: str, voice: str, wpm: int) -> bytes:
    """espeak-ng at -20 dBFS, trimmed of leading and trailing silence (like ``material.say``,
    with a speaking rate)."""
    pcm = m.scale_to(speech.synthesize(text, voice, speed_wpm=wpm), -20.0)
    x = np.frombuffer(pcm, dtype="<i2")
    loud = np.nonzero(np.abs(x) > 300)[0]
    return x[loud[0]:loud[-1] + 1].tobytes() if loud.size else pcm


def render_all(jobs: list[tuple[str, str, int]]) -> list[bytes]:
    """Many espeak-ng renders at once (one process each: espeak-ng keeps no state between)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda j: render(*j), jobs))


def sentence_renders(seed: int) -> dict[str, list[bytes]]:
    """``RENDERS[lang]`` distinct renderings per language: every everyday sentence once, the
    rest from the templates; each with a random voice, variant and speed."""
    rng = np.random.default_rng(seed)
    out = {}
    for lang, fixed, template, voices in (("es", ES_SENTENCES, ES_TEMPLATE, ES_VOICES),
                                          ("en", EN_SENTENCES, EN_TEMPLATE, EN_VOICES)):
        texts = list(fixed)
        while len(texts) < RENDERS[lang]:
            texts.append(" ".join(str(rng.choice(words)) for words in template) + ".")
        jobs = [(t, f"{rng.choice(voices)}{rng.choice(VARIANTS)}", int(rng.integers(130, 201)))
                for t in texts]
        out[lang] = render_all(jobs)
    return out


def _f(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def speech_stream(renders: list[bytes], seconds: float, seed: int) -> tuple[bytes, int]:
    """Sentences one after another at -36..-18 dBFS with 0.2-1.5 s gaps over a faint floor;
    returns the audio and how many sentences it holds."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = _f(m.noise(int(seconds * 1000), FLOOR_DBFS, seed=seed))[:n]
    pos, count = int(rng.uniform(0.2, 1.5) * RATE), 0
    while pos < n:
        count += 1
        x = _f(renders[int(rng.integers(len(renders)))]) * 10 ** (rng.uniform(-16, 2) / 20)
        k = min(len(x), n - pos)
        out[pos:pos + k] += x[:k]
        pos += len(x) + int(rng.uniform(0.2, 1.5) * RATE)
    return _pcm(out), count


def noise_stream(kind: str, seconds: float, seed: int, levels: tuple[float, float]) -> bytes:
    """A noise bed whose level changes every minute (the kind's character is kept)."""
    rng = np.random.default_rng(seed)
    parts, left, i = [], seconds, 0
    while left > 0:
        s = min(60.0, left)
        parts.append(m.noise_bed(kind, int(s * 1000), float(rng.uniform(*levels)),
                                 seed=seed * 1000 + i))
        left -= s
        i += 1
    return b"".join(parts)


# --- the wake word's path, offline --------------------------------------------------------


def wake_path_settings() -> Settings:
    """Daemon defaults for everything that feeds the wake word (module docstring)."""
    return Settings.model_validate({"vad": {"engine": "webrtc"},
                                    "audio": {"noise_suppression": False}})


class WakePath:
    """FrontEnd + the daemon's wake word, fed one capture period at a time."""

    def __init__(self, settings: Settings, wake: bool = True) -> None:
        self.fe = FrontEnd(settings, EchoReference() if settings.echo.cancellation else None,
                           make_wake_word(settings) if wake else None)
        self.t = 0.0
        self.peak = 0.0                # highest probability the detector reported

    def feed(self, pcm: bytes) -> list[WakeHit]:
        hits = []
        for i in range(0, len(pcm) - PERIOD + 1, PERIOD):
            self.t += PERIOD_MS / 1000
            for item in self.fe.process(AudioFrame(pcm[i:i + PERIOD], self.t)):
                if isinstance(item, WakeHit):
                    hits.append(item)
                    self.peak = max(self.peak, item.probability)
            if self.fe.wake is not None:
                self.peak = max(self.peak, self.fe.wake.peak)
        return hits


_RENDERS: dict[str, list[bytes]] = {}


def _init_worker(renders: dict[str, list[bytes]]) -> None:
    _RENDERS.update(renders)


def false_wake_job(job: tuple[str, int, float]) -> dict[str, Any]:
    """One stream of ``seconds`` of kind ``kind``: its false wakes and peak probability."""
    kind, seed, seconds = job
    sentences = 0
    if kind in ("speech_es", "speech_en"):
        pcm, sentences = speech_stream(_RENDERS[kind[-2:]], seconds, seed)
    elif kind in ("babble", "cafe"):
        pcm = noise_stream(kind, seconds, seed, (-40.0, -24.0))
    else:
        pcm = noise_stream(kind, seconds, seed, (-50.0, -20.0))
    path = WakePath(wake_path_settings())
    hits = path.feed(pcm)
    return {"kind": kind, "seconds": len(pcm) / 2 / RATE, "wakes": len(hits),
            "sentences": sentences, "peak": path.peak, "cpu_s": path.fe.cpu_s}


@dataclass(frozen=True)
class WakeCase:
    voice: str
    variant: str
    wpm: int
    level: float
    noise: str           # "quiet" or a NOISE_KINDS kind at 10 dB SNR
    wake: bytes          # "okey nabu" at -20 dBFS
    question: bytes


def miss_job(cases: list[WakeCase]) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(cases):
        gain = 10 ** ((c.level + 20) / 20)
        said = _pcm(np.concatenate([_f(c.wake), np.zeros(RATE * WAKE_PAUSE_MS // 1000),
                                    _f(c.question)]) * gain)
        if c.noise == "quiet":
            lead = RATE * 2                               # bytes in 1 s
            clip = m.mix(m.noise(3000 + len(said) * 1000 // (2 * RATE), FLOOR_DBFS, seed=i),
                         said, offset_ms=1000)
        else:
            clip, lead = m.in_noise(said, c.noise, 10.0, lead_ms=1000, tail_ms=1500, seed=i)
        path = WakePath(wake_path_settings())
        hits = path.feed(clip)
        start = lead / 2 / RATE
        end = start + len(c.wake) / 2 / RATE
        hit = next((h for h in hits if start <= h.t <= end + HIT_WINDOW_S), None)
        out.append({"voice": c.voice, "variant": c.variant or "default", "wpm": c.wpm,
                    "level": c.level, "noise": c.noise, "hit": hit is not None,
                    "delay_ms": (hit.t - end) * 1000 if hit else None,
                    "others": len(hits) - (hit is not None)})
    return out


def wake_cases() -> list[WakeCase]:
    combos = [(v, var, wpm) for v in (*ES_VOICES, *EN_VOICES) for var in WAKE_VARIANTS
              for wpm in WAKE_SPEEDS]
    wakes = render_all([(WAKE_TEXT[v], v + var, wpm) for v, var, wpm in combos])
    questions = render_all([(WAKE_QUESTION[v], v + var, wpm) for v, var, wpm in combos])
    cases, k = [], 0
    for (v, var, wpm), w, q in zip(combos, wakes, questions, strict=True):
        for level in WAKE_LEVELS:
            kind = m.NOISE_KINDS[k % len(m.NOISE_KINDS)]
            k += 1
            for noise in ("quiet", kind):
                cases.append(WakeCase(v, var, wpm, level, noise, w, q))
    return cases


# --- CPU, offline -------------------------------------------------------------------------


def cpu_offline(pcm: bytes, repeats: int = 5) -> dict[str, float]:
    """CPU s per audio s of the daemon's default front end with and without the wake word, and
    of the wake word alone, on the same audio (the least of ``repeats``, alternating: other
    work on the machine only ever adds)."""
    settings = Settings()
    runs: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        for label, wake in (("with", True), ("without", False)):
            path = WakePath(settings, wake)
            path.feed(pcm)
            runs[label].append(path.fe.cpu_s / path.fe.audio_s)
        ww = WakeWord(settings.listen.wake_model, settings.listen.wake_cutoff,
                      settings.listen.wake_refractory_s)
        c0 = time.thread_time()
        for i in range(0, len(pcm) - PERIOD + 1, PERIOD):
            ww.feed(pcm[i:i + PERIOD], i / 2 / RATE)
        runs["alone"].append((time.thread_time() - c0) / (len(pcm) / 2 / RATE))
    return {k: min(v) for k, v in runs.items()}


# --- the rig: latency, paced CPU, idle uplink ------------------------------------------------


def rig_extra(mode: str, **listen: Any) -> dict[str, dict[str, Any]]:
    """The daemon's defaults (the rig turns echo cancellation and suppression off)."""
    return {"listen": {"mode": mode, **listen}, "echo": {"cancellation": True},
            "audio": {"noise_suppression": True}}


def pct(values: list[float]) -> str:
    vals = sorted(values)
    if not vals:
        return "n/a"
    p95 = vals[min(len(vals) - 1, round(0.95 * (len(vals) - 1)))]
    return f"p50 {statistics.median(vals):6.0f}  p95 {p95:6.0f}  (n={len(vals)})"


async def latency(workdir: Path) -> dict[str, Any]:
    """Wake phrase + 250 ms + question, real time; timings from the end of the phrase."""
    voices = [ES_VOICES[i % 2] for i in range(LATENCY_TRIALS)]
    questions = [LATENCY_QUESTIONS[i % len(LATENCY_QUESTIONS)] for i in range(LATENCY_TRIALS)]
    wakes = render_all([(WAKE_TEXT[v], v, 160) for v in voices])
    qs = render_all([(q, v, 160) for q, v in zip(questions, voices, strict=True)])
    pause = m.silence(WAKE_PAUSE_MS)
    r: dict[str, Any] = {"detect": [], "start": [], "audio": [], "onset_to_start": [],
                         "missed": 0, "trials": LATENCY_TRIALS}
    scenario = Scenario(fallback=[Reply("Vale.")], transcripts=questions)
    async with voice_rig(workdir, scenario, speed=1.0,
                         extra=rig_extra("wake", follow_up_s=1.0)) as rig:
        rig.mic.set_room(noise=m.noise(10_000, FLOOR_DBFS, seed=3))
        detections = rig.live.bus.subscribe(WakeWordDetected)
        for wake, q in zip(wakes, qs, strict=True):
            n0 = len(rig.sim.arrivals("realtimeInput"))
            # The wake phrase ends a clip on a period boundary: the card reports when that
            # clip has been said, on its own clock (it may catch up after a late tick).
            lead = m.silence(800)
            said = rig.mic.play(lead + bytes(-(len(lead) + len(wake)) % PERIOD) + wake)
            rig.mic.play(pause + q + m.silence(1200))
            try:
                await rig.next_turn(len(q) / 2 / RATE + 20)
            except TimeoutError:
                r["missed"] += 1
                continue
            finally:
                await poll_until(lambda: rig.mic.idle() and rig.voice.state == "idle", 30)
            assert said.ended_at is not None
            wake_end = said.ended_at
            onset = wake_end + WAKE_PAUSE_MS / 1000
            detected = None
            while not detections.empty():
                detected = detections.get_nowait().t
            arrivals = rig.sim.arrivals("realtimeInput")[n0:]
            t_start = next(t for t, msg in arrivals if "activityStart" in msg["realtimeInput"])
            t_audio = next(t for t, msg in arrivals if "audio" in msg["realtimeInput"])
            ms = 1000.0
            if detected is not None:
                r["detect"].append((detected - wake_end) * ms)
            r["start"].append((t_start - wake_end) * ms)
            r["audio"].append((t_audio - wake_end) * ms)
            r["onset_to_start"].append((t_start - onset) * ms)
        fe = rig.voice.frontend
        r["cpu"] = fe.cpu_s / fe.audio_s
    return r


async def paced_cpu(workdir: Path, room: bytes, mode: str) -> float:
    """Front-end CPU s per audio s over ``room`` at real time, in listen mode ``mode``."""
    async with voice_rig(workdir, speed=1.0, extra=rig_extra(mode)) as rig:
        fe = rig.voice.frontend
        cpu0, audio0 = fe.cpu_s, fe.audio_s
        clip = rig.mic.play(room)
        await asyncio.to_thread(clip.done.wait, len(room) / 2 / RATE + 30)
        return (fe.cpu_s - cpu0) / (fe.audio_s - audio0)


async def uplink(workdir: Path, segments: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Non-wake material through the rig in wake mode: what reached the simulator."""
    audio_s = sum(len(pcm) for _, pcm in segments) / 2 / RATE
    async with voice_rig(workdir, speed=UPLINK_SPEED, extra=rig_extra("wake")) as rig:
        n0 = len(rig.sim.messages())
        clips = [rig.mic.play(pcm) for _, pcm in segments]
        await asyncio.to_thread(clips[-1].done.wait, audio_s / UPLINK_SPEED * 3 + 60)
        await asyncio.sleep(0.5)           # anything still on its way to the simulator
        every = [msg for _, msg in rig.sim.messages()[n0:]]
        wire = [msg["realtimeInput"] for msg in every if "realtimeInput" in msg]
        st = rig.voice.status()
        return {"audio_s": audio_s, "audio_bytes": sum(len(b["audio"]["data"]) for b in wire
                                                       if "audio" in b),
                "activity_starts": sum("activityStart" in b for b in wire),
                "messages": len(every), "wakes": rig.voice.wakes,
                "turns": st["vad"]["turns"], "overruns": st["capture"].get("overruns")}


def uplink_material(renders: dict[str, list[bytes]]) -> list[tuple[str, bytes]]:
    """Noise beds, with and without non-wake speech over them."""
    out = []
    for i, (bed, lang) in enumerate((("fan", "es"), ("cafe", None), ("kitchen", "es"),
                                     ("street", "en"), ("babble", None), ("music", "es"))):
        pcm = m.noise_bed(bed, UPLINK_SEGMENT_S * 1000, -45.0 if lang else -30.0, seed=40 + i)
        if lang:
            pcm = m.mix(pcm, speech_stream(renders[lang], UPLINK_SEGMENT_S, seed=60 + i)[0])
        out.append((bed + (f" + {lang} speech" if lang else ""), pcm))
    return out


# --- report -------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (f"machine: {platform.node()} {platform.machine()} {model}, {os.cpu_count()} CPUs"
            f"{load}, python {platform.python_version()}")


def print_false_wakes(results: list[dict[str, Any]]) -> None:
    by: dict[str, dict[str, float]] = defaultdict(
        lambda: {"s": 0.0, "wakes": 0, "peak": 0.0, "sentences": 0})
    for res in results:
        b = by[res["kind"]]
        b["s"] += res["seconds"]
        b["wakes"] += res["wakes"]
        b["sentences"] += res["sentences"]
        b["peak"] = max(b["peak"], res["peak"])
    groups = (("noise beds", [k for k in m.NOISE_KINDS if k not in ("babble", "cafe")]),
              ("babble + cafe", ["babble", "cafe"]),
              ("speech, no wake word", ["speech_es", "speech_en"]))
    print("\n(1) false wakes per hour (FrontEnd + okay_nabu, cutoff "
          f"{Settings().listen.wake_cutoff}, offline)")
    print(f"  {'material':26s} {'audio h':>8s} {'wakes':>6s} {'per hour':>10s} "
          f"{'(95 % upper)':>13s} {'max p':>6s}")

    def row(name: str, s: float, wakes: float, peak: float) -> None:
        h = s / 3600
        upper = f"< {3 / h:.2f}" if wakes == 0 else ""
        print(f"  {name:26s} {h:8.2f} {int(wakes):6d} {wakes / h:10.2f} {upper:>13s} "
              f"{peak:6.3f}")

    for title, kinds in groups:
        for k in kinds:
            row(k, by[k]["s"], by[k]["wakes"], by[k]["peak"])
        row(f"= {title}", sum(by[k]["s"] for k in kinds), sum(by[k]["wakes"] for k in kinds),
            max(by[k]["peak"] for k in kinds))
    row("= all", sum(b["s"] for b in by.values()), sum(b["wakes"] for b in by.values()),
        max(b["peak"] for b in by.values()))
    print(f"  speech: {int(by['speech_es']['sentences'])} Spanish and "
          f"{int(by['speech_en']['sentences'])} English sentences drawn from {RENDERS['es']} and "
          f"{RENDERS['en']} distinct renderings; noise beds change level every minute")
    print("  (95 % upper: the Poisson bound 3/h-of-audio when no wake was seen; max p: the "
          "highest window probability the detector reported)")


def print_misses(results: list[dict[str, Any]]) -> None:
    quiet = [r for r in results if r["noise"] == "quiet"]
    noisy = [r for r in results if r["noise"] != "quiet"]

    def cell(rows: list[dict[str, Any]]) -> str:
        missed = sum(not r["hit"] for r in rows)
        return f"{missed:3d}/{len(rows):<3d} ({100 * missed / max(1, len(rows)):3.0f} %)"

    variants = "/".join(v or "default" for v in WAKE_VARIANTS)
    print(f"\n(2) misses over the wake set: {len(quiet)} renderings of the wake phrase + "
          f"{WAKE_PAUSE_MS} ms + a question (4 voices x variants {variants} x "
          f"{'/'.join(map(str, WAKE_SPEEDS))} wpm x "
          f"{'/'.join(f'{v:g}' for v in WAKE_LEVELS)} dBFS); a miss: no wake within "
          f"{HIT_WINDOW_S:g} s of the end of 'nabu'")
    print(f"  {'':24s} {'quiet (-65 dBFS floor)':>22s} {'noise at 10 dB SNR':>22s}")
    print(f"  {'all':24s} {cell(quiet):>22s} {cell(noisy):>22s}")
    for key, values in (("voice", (*ES_VOICES, *EN_VOICES)),
                        ("variant", tuple(v or "default" for v in WAKE_VARIANTS)),
                        ("wpm", WAKE_SPEEDS), ("level", WAKE_LEVELS)):
        for v in values:
            print(f"  {key + ' ' + str(v):24s} {cell([r for r in quiet if r[key] == v]):>22s} "
                  f"{cell([r for r in noisy if r[key] == v]):>22s}")
    kinds = Counter(r["noise"] for r in noisy)
    print("  by noise kind (10 dB): " + ", ".join(
        f"{k} {sum(not r['hit'] for r in noisy if r['noise'] == k)}/{n}"
        for k, n in kinds.items()))
    delays = [r["delay_ms"] for r in results if r["delay_ms"] is not None]
    print(f"  end of 'nabu' -> detection (offline, to the end of the period): {pct(delays)} ms")
    print(f"  wakes elsewhere in the clips (e.g. in the question): "
          f"{sum(r['others'] for r in results)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the false-wake hours")
    args = ap.parse_args()
    t_start = time.monotonic()
    print(machine())
    print("material: espeak-ng speech (Spanish and English voices); noise from "
          "edged_testing.material; Live = edged_testing.sim")
    renders = sentence_renders(seed=1)
    cases = wake_cases()
    # 10-minute jobs: speech 1.5 h (es 1 h, en 0.5 h), babble 0.5 h, each other bed 10 min
    plan = {"speech_es": 6, "speech_en": 3, "babble": 2, "cafe": 1}
    jobs = [(kind, 100 + 17 * i + j, JOB_S * args.scale)
            for i, kind in enumerate((*plan, *[k for k in m.NOISE_KINDS if k not in plan]))
            for j in range(plan.get(kind, 1))]
    print(f"running (1) and (2) offline in {min(2, os.cpu_count() or 1)} processes ...",
          flush=True)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(2, os.cpu_count() or 1), _init_worker, (renders,)) as pool:
        misses_async = pool.map_async(miss_job, [cases[i::8] for i in range(8)])
        fw = list(pool.imap_unordered(false_wake_job, jobs))
        misses = [r for part in misses_async.get() for r in part]
    print_false_wakes(fw)
    print(f"  (wake path CPU: {sum(r['cpu_s'] for r in fw) / sum(r['seconds'] for r in fw):.4f}"
          " s per audio s: AEC3 + webrtcvad + wake word)")
    print_misses(misses)

    print("\nrunning (3) latency at real time, (4) CPU, (5) idle uplink ...", flush=True)
    cpu_stream = m.mix(noise_stream("fan", 60, seed=5, levels=(-45.0, -45.0)),
                       speech_stream(renders["es"], 60, seed=6)[0])
    cpu = cpu_offline(cpu_stream)
    room = m.mix(m.noise_bed("fan", int(IDLE_CPU_S * 1000), -45.0, seed=7),
                 speech_stream(renders["es"], IDLE_CPU_S, seed=8)[0])
    segments = uplink_material(renders)
    with tempfile.TemporaryDirectory(prefix="edged-bench-wake-") as d:
        lat = asyncio.run(latency(Path(d) / "latency"))
        paced = {mode: asyncio.run(paced_cpu(Path(d) / mode, room, mode))
                 for mode in ("wake", "manual")}
        up = asyncio.run(uplink(Path(d) / "uplink", segments))

    print("\n(3) latency, ms from the end of the wake phrase (real time, listen.mode wake, "
          f"daemon defaults; the question starts {WAKE_PAUSE_MS} ms after it)")
    print("  on the virtual card's clock, which hands over a 20 ms period as its first sample is "
          "said; a real card does at its last sample: add 20 ms for a real microphone")
    print(f"  wake end -> wake detected           {pct(lat['detect'])}")
    print(f"  wake end -> activityStart received  {pct(lat['start'])}")
    print(f"  wake end -> first question audio    {pct(lat['audio'])}")
    print(f"  question onset -> activityStart     {pct(lat['onset_to_start'])}   "
          "(the speech gate: vad.min_speech_ms)")
    print(f"  trials without a wake: {lat['missed']}/{lat['trials']}")

    print("\n(4) CPU of the front end (AEC3 + Silero + noise suppression), % of one core")
    print(f"  offline, same 60 s, least of 5:  with wake word {100 * cpu['with']:.2f} %, without "
          f"{100 * cpu['without']:.2f} %, difference {100 * (cpu['with'] - cpu['without']):.2f}"
          f" %; the wake word alone {100 * cpu['alone']:.2f} %")
    print(f"  paced at real time, {IDLE_CPU_S:.0f} s idle room: wake mode "
          f"{100 * paced['wake']:.2f} %, manual mode (no detector) {100 * paced['manual']:.2f} %"
          f"; in the latency run (talking) {100 * lat['cpu']:.2f} %")
    print("  (thread CPU of FrontEnd.process; the paced figures are single runs and move by about "
          "a point with the machine's load)")

    per_h = 3600 / up["audio_s"]
    print(f"\n(5) uplink in wake mode, idle room ({up['audio_s'] / 60:.1f} min of audio at "
          f"{UPLINK_SPEED:g}x: {', '.join(name for name, _ in segments)})")
    print(f"  audio bytes received by the simulator: {up['audio_bytes']} -> "
          f"{up['audio_bytes'] * per_h:.0f} bytes per idle hour")
    print(f"  activityStart: {up['activity_starts']}, client messages meanwhile: "
          f"{up['messages']} -> {up['messages'] * per_h:.0f} per hour; wakes {up['wakes']}; "
          f"speech turns the gate saw (vad mode would have sent them) {up['turns']}; "
          f"capture overruns {up['overruns']}")
    print(f"\nbench_wake: {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
