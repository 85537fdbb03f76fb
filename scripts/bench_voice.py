#!/usr/bin/env python3
"""Voice-loop benchmark: local VAD vs server VAD, same room, same questions, real time.

The device side (VoiceLoop + LiveSession, exactly the daemon's classes) runs alone in a child
process (``python -m edged_testing.voice_rig``) so its CPU time and peak RSS are not mixed with the
simulator's; this process owns the room: the Live simulator, a virtual microphone paced at
real time (FIFO fed one 20 ms period per 20 ms) and a virtual speaker drained at real time.
CLOCK_MONOTONIC is system-wide, so the child's turn timestamps compare with the room's.

Per mode it measures:
  (a) end of speech -> activityEnd sent (local) / -> first reply audio received (both)
  (b) first reply audio received -> written to ALSA, and -> first sound at the speaker
  (c) speech onset during playback -> playback flushed (pcm.drop) and -> speaker silent
  (d) CPU seconds per audio second and peak RSS of the device process, idle and talking
  (e) bytes uplinked per minute: idle room (faint noise), and a mostly-silent minute
Prints numbers only (p50/p95 where there are several samples); never passes or fails.
Run alone: .venv/bin/python scripts/bench_voice.py (about 3 minutes).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from edged.formats import REPLY_RATE, bytes_per_ms
from edged_testing import material as m
from edged_testing.alsa import PacedSink, PacedSource, VirtualAlsa
from edged_testing.sim import LiveSimulator, Reply, Rule, Scenario
from edged_testing.voice_rig import MIC, SPEAKER, poll_until, rig_settings_data

QUESTIONS = [("¿Qué es la gobernanza en el contexto de MLOps?", "es"),
             ("What is a feature store?", "en-us"),
             ("¿Cómo se monitoriza un modelo en producción?", "es")]
LONG_Q = ("Cuéntame todo sobre el despliegue en el borde, por favor.", "es")
STOP = ("Espera, espera, para un momento.", "es")
IDLE_S = 10.0
MOSTLY_SILENT_S = 20.0
BARGE_INS = 3
WAIT_S = 60.0


def pct(values: list[float]) -> str:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return "n/a"
    p50 = statistics.median(vals)
    p95 = vals[min(len(vals) - 1, round(0.95 * (len(vals) - 1)))]
    return f"p50 {p50:7.0f}  p95 {p95:7.0f}  (n={len(vals)})"


class Device:
    """The child process running VoiceLoop + LiveSession; reads its JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ps = psutil.Process(proc.pid)
        self.turns: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.final: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, settings: dict[str, Any], env: dict[str, str]) -> Device:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edged_testing.voice_rig", json.dumps(settings),
            stdout=asyncio.subprocess.PIPE, env={**os.environ, **env})
        dev = cls(proc)
        await asyncio.wait_for(dev.ready.wait(), 30)
        return dev

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if msg.get("ready"):
                self.ready.set()
            elif "turn" in msg:
                self.turns.put_nowait(msg["turn"])
            else:
                self.final = msg

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    async def next_turn(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.turns.get(), WAIT_S)

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self.proc.wait(), 30)
        await self._reader


def uplinked(sim: LiveSimulator) -> int:
    return sum(len(b["realtimeInput"]["audio"]["data"]) for _, b in sim.messages("realtimeInput")
               if "audio" in b["realtimeInput"])


def first_sound_after(sink: PacedSink, t: float) -> float | None:
    for mt, _ in sink.marks_list():
        if mt > t:
            return mt
    return None


def silent_from(sink: PacedSink, t: float, gap_s: float = 0.04) -> float | None:
    """When the speaker went quiet after ``t``: the last read before a >= 40 ms gap."""
    prev = None
    for mt, _ in sink.marks_list():
        if mt < t:
            continue
        if prev is not None and mt - prev >= gap_s:
            return prev
        prev = mt
    return prev


async def say(mic: PacedSource, pcm: bytes) -> tuple[float, float]:
    """Speak ``pcm`` now; returns (first sample time, end time)."""
    clip = mic.play(pcm)
    await asyncio.to_thread(clip.done.wait, WAIT_S)
    assert clip.started_at is not None and clip.ended_at is not None
    return clip.started_at, clip.ended_at


async def run_mode(mode: str, workdir: Path, clips: dict[str, bytes]) -> dict[str, Any]:
    va = VirtualAlsa(workdir / mode)
    mic = va.add_paced_capture(MIC, period_ms=20, speed=1.0)
    sink = va.add_paced_playback(SPEAKER, speed=1.0)
    scenario = Scenario(
        rules=[Rule(on="turn", match="despliegue", actions=[Reply("largo", tone_seconds=12)])],
        transcripts=[QUESTIONS[0][0], *[q for q, _ in QUESTIONS]]
        + [LONG_Q[0], STOP[0]] * BARGE_INS)
    r: dict[str, Any] = {"end_to_activity_end": [], "end_to_reply": [], "reply_to_alsa": [],
                         "reply_to_speaker": [], "onset_to_flush": [], "onset_to_silent": []}
    try:
        async with LiveSimulator(scenario) as sim:
            dev = await Device.start(rig_settings_data(sim, mode), va.env()
                                     | {"NO_PROXY": "127.0.0.1,localhost"})
            try:
                await run_script(dev, sim, mic, sink, clips, r)
                r["peak_rss_mb"] = dev.peak_rss_mb()
            finally:
                await dev.stop()
            r["status"] = dev.final.get("status", {})
    finally:
        va.close()
    return r


def record_turn(t: dict[str, Any], speech_end: float, sink: PacedSink,
                r: dict[str, Any]) -> None:
    ms = 1000.0
    if t.get("activity_end_sent"):
        r["end_to_activity_end"].append((t["activity_end_sent"] - speech_end) * ms)
    if t.get("first_reply_audio"):
        r["end_to_reply"].append((t["first_reply_audio"] - speech_end) * ms)
        if t.get("first_audio_written"):
            r["reply_to_alsa"].append((t["first_audio_written"] - t["first_reply_audio"]) * ms)
        heard = first_sound_after(sink, t["first_reply_audio"])
        if heard is not None:
            r["reply_to_speaker"].append((heard - t["first_reply_audio"]) * ms)


async def run_script(dev: Device, sim: LiveSimulator, mic: PacedSource, sink: PacedSink,
                     clips: dict[str, bytes], r: dict[str, Any]) -> None:
    # (d, e) idle room: faint noise only
    cpu0, up0, t0 = dev.cpu_s(), uplinked(sim), time.monotonic()
    await say(mic, clips["idle"])
    r["idle_cpu_per_s"] = (dev.cpu_s() - cpu0) / (time.monotonic() - t0)
    r["idle_bytes_per_min"] = (uplinked(sim) - up0) * 60 / IDLE_S
    # (e) a mostly silent 20 s with one question in it
    up0, t0 = uplinked(sim), time.monotonic()
    q = clips["q0"]
    _, end = await say(mic, clips["quiet_lead"] + q)
    record_turn(await dev.next_turn(), end, sink, r)
    rest = MOSTLY_SILENT_S - (time.monotonic() - t0)
    if rest > 0:
        await say(mic, m.silence(int(rest * 1000)))
    r["mostly_silent_bytes_per_min"] = (uplinked(sim) - up0) * 60 / (time.monotonic() - t0)
    # (a, b, d) conversation: questions back to back, each after the previous answer
    cpu0, t0 = dev.cpu_s(), time.monotonic()
    for i in range(len(QUESTIONS)):
        _, end = await say(mic, clips[f"q{i}"])
        record_turn(await dev.next_turn(), end, sink, r)
        await say(mic, m.silence(300))
    r["talk_cpu_per_s"] = (dev.cpu_s() - cpu0) / (time.monotonic() - t0)
    # (c) barge-in: talk over a long answer once it has played for ~1 s
    for _ in range(BARGE_INS):
        before = len(sink.data())
        await say(mic, clips["long"] + m.silence(800))
        await poll_until(lambda b=before: len(sink.data()) >= b + bytes_per_ms(REPLY_RATE) * 1000,
                         WAIT_S)
        onset, _ = await say(mic, clips["stop"])
        t1 = await dev.next_turn()
        if t1.get("playback_stopped"):
            r["onset_to_flush"].append((t1["playback_stopped"] - onset) * 1000)
        quiet = silent_from(sink, onset)
        if quiet is not None:
            r["onset_to_silent"].append((quiet - onset) * 1000)
        await dev.next_turn()                     # the answer to the interruption
        await say(mic, m.silence(300))


def main() -> int:
    print(f"machine: {platform.node()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    print("material: espeak-ng questions at -20 dBFS; idle room = white noise at -65 dBFS; "
          "Live = edged_testing.sim (replies streamed at 4x real time)")
    clips = {f"q{i}": m.say(q, v) for i, (q, v) in enumerate(QUESTIONS)}
    clips["long"] = m.say(*LONG_Q)
    clips["stop"] = m.say(*STOP)
    clips["idle"] = m.noise(int(IDLE_S * 1000), -65, seed=1)
    clips["quiet_lead"] = m.noise(8000, -65, seed=2)
    results = {}
    with tempfile.TemporaryDirectory(prefix="edged-bench-voice-") as d:
        for mode in ("local", "server"):
            print(f"running {mode} turn detection ...", flush=True)
            results[mode] = asyncio.run(run_mode(mode, Path(d), clips))
    loc, srv = results["local"], results["server"]
    print("\nlatencies in ms                          local VAD                          "
          "server VAD")
    rows = [("(a) end of speech -> activityEnd sent", "end_to_activity_end"),
            ("(a) end of speech -> first reply audio", "end_to_reply"),
            ("(b) reply received -> written to ALSA", "reply_to_alsa"),
            ("(b) reply received -> heard (speaker)", "reply_to_speaker"),
            ("(c) onset over reply -> playback flushed", "onset_to_flush"),
            ("(c) onset over reply -> speaker silent", "onset_to_silent")]
    for label, key in rows:
        print(f"{label:42s} {pct(loc[key]):34s} {pct(srv[key])}")
    print("\nresources (device process)               local VAD        server VAD   ratio")
    for label, key, fmt in (("(d) CPU s per audio s, idle listening", "idle_cpu_per_s", ".4f"),
                            ("(d) CPU s per audio s, in conversation", "talk_cpu_per_s", ".4f"),
                            ("(d) peak RSS, MB", "peak_rss_mb", ".1f"),
                            ("(e) bytes up per minute, idle room", "idle_bytes_per_min", ".0f"),
                            ("(e) bytes up per minute, mostly silent",
                             "mostly_silent_bytes_per_min", ".0f")):
        a, b = loc[key], srv[key]
        ratio = f"{a / b:.3f}" if b else "n/a"
        print(f"{label:42s} {a:12{fmt}} {b:16{fmt}}   {ratio}")
    for mode, res in results.items():
        st = res.get("status") or {}
        print(f"{mode}: gate speech ratio {st.get('vad', {}).get('speech_ratio')}, "
              f"gated ratio {st.get('vad', {}).get('gated_ratio')}, "
              f"capture overruns {st.get('capture', {}).get('overruns')}, playback underruns "
              f"{st.get('playback', {}).get('underruns')}, starved "
              f"{st.get('playback', {}).get('starved')}")
    print("\nnotes: (a) local includes vad.end_silence_ms (700 ms default) by design; server "
          "mode's end of turn is the simulator's energy VAD (500 ms), not Gemini's. "
          "(c) includes echo.bargein_min_ms (400 ms) of sustained speech under the guard policy "
          "in local mode; in server mode it is the simulator's speech-start detection plus the "
          "interrupted round trip. 'speaker silent' adds the virtual codec FIFO (85 ms).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
