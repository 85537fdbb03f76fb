#!/usr/bin/env python3
"""Demo section "voice": spoken questions through the daemon's voice loop, end to end.

What runs is exactly what `edged run` runs - ``VoiceLoop`` (ALSA capture, webrtcvad gate,
playback) and ``LiveSession`` (the real google-genai SDK) with the ``search_knowledge`` tool -
and only the outside world is simulated (edged_testing/voice_rig.py):

* the microphone is a virtual ALSA capture device (alsa-lib ``file`` plugin) whose input is a
  FIFO fed one period at a time at **real time** by a pacer thread (PacedSource), with
  espeak-ng speaking a Spanish and an English question into it;
* the speaker is a virtual ALSA playback device drained at real time into a file
  (demo-out/speaker.wav is what a listener would have heard);
* Gemini Live is edged_testing.sim (default assistant; scripted transcripts tell it what was said).

Part 1: the two questions, each answered with a knowledge-tool lookup. Part 2: barge-in - the
user talks over a long answer; playback stops and the new question is answered. Parts 1 and 2
run with ``listen.mode = "vad"`` (any speech opens a turn). Part 3: wake and talk, the default
``listen.mode = "wake"`` - «okey nabu, ¿qué es …?» opens a turn, a follow-up inside the
follow-up window needs no wake word, and once the window has closed a sentence without the
wake word is heard by the speech gate but nothing leaves the device.

``--real``: no simulation - the admin config's ALSA devices and Gemini (GEMINI_API_KEY); talk
to it, Ctrl-C to stop. Exit 0 when the demo behaved, non-zero with the reason otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edged.events import (
    Interrupted,
    ToolCallFinished,
    ToolCallStarted,
    Transcription,
    TurnRecord,
    VoiceStateChanged,
    WakeWordDetected,
    now,
)
from edged.formats import CAPTURE_RATE, REPLY_RATE, bytes_per_ms, seconds, write_wav
from edged.tools import Tool
from edged_testing import material as m
from edged_testing.sim import Reply, Rule, Scenario
from edged_testing.voice_rig import VoiceRig, poll_until, voice_rig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
KNOWLEDGE = ROOT / "edged" / "data" / "knowledge"
Q_ES = "¿Qué es la gobernanza en el contexto de MLOps?"
Q_EN = "What is a model registry used for in MLOps?"
Q_STOP = "Wait, tell me about feature stores instead."
Q_WAKE = "¿Qué es un registro de modelos?"
Q_FOLLOW = "¿Y quién lo usa?"
ASIDE = "¿Me pasas la sal, por favor?"       # said to someone else at the table
WAIT_S = 120.0


class DemoFailed(Exception):
    pass


def knowledge_tool(workdir: Path) -> tuple[list[Tool], dict[str, dict[str, str]]]:
    """Build the demo index with the real sync command; the tool if it is available."""
    index = workdir / "index"
    sync = shutil.which("edged-index-sync", path=str(Path(sys.executable).parent))
    try:
        from edged.knowledge.tool import make_search_tool
    except ImportError:
        print("(knowledge tool not available in this tree: answering without it)")
        return [], {}
    if sync is None:
        raise DemoFailed("edged-index-sync is not installed in this venv (run scripts/bootstrap)")
    run = subprocess.run([sync, "--config", "/dev/null", "--source", str(KNOWLEDGE),
                          "--index-dir", str(index), "--state-dir", str(workdir / "sync")],
                         capture_output=True, text=True, timeout=300)
    print(f"index: {run.stdout.strip() or run.stderr.strip()}")
    if run.returncode != 0:
        raise DemoFailed(f"edged-index-sync failed (exit {run.returncode}): {run.stderr.strip()}")
    extra = {"knowledge": {"index_dir": str(index)}}
    from edged.config import Settings
    return [make_search_tool(Settings.model_validate(extra))], extra


async def narrate(rig: VoiceRig) -> None:
    """Print what happens, as it happens: what the user said, tool calls, interruptions."""
    pending: dict[str, str] = {"user": ""}
    while True:
        ev = await rig.events.get()
        if isinstance(ev, Transcription) and ev.role == "user":
            pending["user"] += ev.text
            if ev.finished:
                text, pending["user"] = pending["user"].strip(), ""
                print(f"  user > {text}", flush=True)
        elif isinstance(ev, ToolCallStarted):
            print(f"  tool > {ev.name}({ev.args})", flush=True)
        elif isinstance(ev, ToolCallFinished):
            hit = (ev.result or {}).get("results") or [{}]
            title = hit[0].get("title") if isinstance(hit[0], dict) else None
            print(f"  tool < {ev.name} {'ok' if ev.ok else 'error: ' + str(ev.error)} "
                  f"in {ev.duration_s * 1000:.0f} ms{f' (first hit: {title})' if title else ''}",
                  flush=True)
        elif isinstance(ev, Interrupted):
            print("  [server: interrupted]", flush=True)


def show(turn: TurnRecord) -> None:
    if turn.model_text:
        print(f"  model> {turn.model_text.strip()}", flush=True)
    lat = turn.latencies()
    parts = [f"{k.removesuffix('_ms').replace('_', ' ')} {v} ms" for k, v in lat.items()
             if v is not None]
    print(f"  turn {turn.id}: {turn.outcome}"
          f"{' (' + turn.interrupted + ')' if turn.interrupted else ''}; " + ", ".join(parts),
          flush=True)


async def part(title: str, workdir: Path, scenario: Scenario, tools: list[Tool],
               extra: dict[str, dict[str, str]], script: list[tuple[bytes, int]],
               wav: Path) -> list[TurnRecord]:
    """Play each (clip, turns) step into the mic and wait for that many finished turns."""
    turns = sum(n for _, n in script)
    print(f"\n--- {title} ---", flush=True)
    async with voice_rig(workdir, scenario, speed=1.0, tools=tools, extra=extra) as rig:
        narrator = asyncio.create_task(narrate(rig))
        records: list[TurnRecord] = []
        try:
            for clip, n in script:
                rig.mic.play(clip)
                for _ in range(n):
                    records.append(await rig.next_turn(WAIT_S))
                    show(records[-1])
            await asyncio.to_thread(rig.mic.play(m.silence(300)).done.wait, WAIT_S)
        finally:
            narrator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await narrator
        write_wav(wav, rig.speaker.data(), REPLY_RATE)
        print(f"  speaker: {seconds(len(rig.speaker.data()), REPLY_RATE):.1f} s written to "
              f"{wav.relative_to(ROOT)}", flush=True)
        wire = rig.wire()
        starts = sum("activityStart" in b for b in wire)
        ends = sum("activityEnd" in b for b in wire)
        up = sum(len(b["audio"]["data"]) for b in wire if "audio" in b)
        print(f"  wire: {starts} activityStart, {ends} activityEnd, "
              f"{seconds(up, CAPTURE_RATE):.1f} s of audio uplinked (local VAD: silence is never "
              "sent)", flush=True)
        if starts != ends or starts != turns:
            raise DemoFailed(f"expected {turns} bracketed turns on the wire, saw {starts}/{ends}")
    return records


def wire_summary(bodies: list[dict[str, Any]]) -> str:
    """What a slice of ``rig.wire()`` holds, in words."""
    if not bodies:
        return "nothing"
    starts = sum("activityStart" in b for b in bodies)
    ends = sum("activityEnd" in b for b in bodies)
    up = sum(len(b["audio"]["data"]) for b in bodies if "audio" in b)
    return (f"{starts} activityStart, {seconds(up, CAPTURE_RATE):.1f} s of audio, "
            f"{ends} activityEnd")


async def narrate_listening(rig: VoiceRig, t0: float, wakes: list[float]) -> None:
    """The wake word and every state change (what an LED ring shows), timed from ``t0``."""
    events = rig.live.bus.subscribe(WakeWordDetected, VoiceStateChanged)
    while True:
        ev = await events.get()
        if isinstance(ev, WakeWordDetected):
            wakes.append(ev.t)
            print(f"  [{ev.t - t0:5.1f} s] wake word {ev.model!r} heard (p={ev.probability:.2f})",
                  flush=True)
        elif isinstance(ev, VoiceStateChanged):
            print(f"  [{ev.t - t0:5.1f} s] state {ev.previous} -> {ev.state}", flush=True)


async def wake_and_talk(workdir: Path) -> None:
    """Part 3: the default listening mode, step by step (module docstring)."""
    print("\n--- wake and talk: listen.mode = \"wake\" (the default) ---", flush=True)
    wake, question = m.say("okey nabu", "es", wpm=150), m.say(Q_WAKE, "es")
    follow, aside = m.say(Q_FOLLOW, "es"), m.say(ASIDE, "es-419")
    extra = {"listen": {"mode": "wake"}, "echo": {"cancellation": True},
             "audio": {"noise_suppression": True}}      # the daemon's defaults
    scenario = Scenario.default(transcripts=[Q_WAKE, Q_FOLLOW])
    async with voice_rig(workdir, scenario, speed=1.0, extra=extra) as rig:
        ls = rig.settings.listen
        print(f"  wake word {ls.wake_model} (cutoff {ls.wake_cutoff}), follow-up window "
              f"{ls.follow_up_s:g} s after each reply, question timeout "
              f"{ls.question_timeout_s:g} s; nothing is sent upstream until the device is "
              "addressed", flush=True)
        rig.mic.set_room(noise=m.noise(10_000, -65, seed=3))   # a real microphone's floor
        t0, wakes = now(), []
        tasks = [asyncio.create_task(narrate(rig)),
                 asyncio.create_task(narrate_listening(rig, t0, wakes))]
        try:
            # 1. the wake word, then the question in the same breath
            print("\n  1. the user says: «okey nabu, ¿qué es un registro de modelos?»", flush=True)
            mark = len(rig.wire())
            # the wake phrase ends its own clip, on a period boundary: the virtual card says
            # when it has been said
            lead, period = m.silence(500), bytes_per_ms(CAPTURE_RATE) * rig.settings.audio.period_ms
            said = rig.mic.play(lead + bytes(-(len(lead) + len(wake)) % period) + wake)
            rig.mic.play(m.silence(250) + question + m.silence(300))
            first = await rig.next_turn(WAIT_S)
            show(first)
            if first.trigger != "wake" or not wakes:
                raise DemoFailed(f"the wake word did not open the turn ({first.trigger})")
            earcon = sum(1 for t, _ in rig.speaker.marks_list()
                         if wakes[0] <= t < (first.first_audio_written or now()))
            assert said.ended_at is not None
            print(f"  opened by: wake word (detected {(wakes[0] - said.ended_at) * 1000:.0f} ms "
                  f"after «nabu» ended; earcon {earcon * 20} ms on the speaker)", flush=True)
            sent_s = first.uplinked_bytes / bytes_per_ms(CAPTURE_RATE) / 1000
            said_s = 0.25 + seconds(len(question), CAPTURE_RATE) + \
                rig.settings.vad.end_silence_ms / 1000
            print(f"  wire: {wire_summary(rig.wire()[mark:])}: the pause and the question "
                  f"({seconds(len(question), CAPTURE_RATE):.1f} s) and the end-of-turn silence "
                  f"= {said_s:.1f} s, " + ("not the wake word" if sent_s < said_s + 0.2 else
                                           f"and {sent_s - said_s:.1f} s before them"),
                  flush=True)

            # 2. a follow-up inside the window, no wake word
            await poll_until(lambda: rig.voice.state == "follow_up", WAIT_S)
            print(f"\n  2. within the {ls.follow_up_s:g} s follow-up window, without the wake word:"
                  f" «{Q_FOLLOW}»", flush=True)
            mark = len(rig.wire())
            rig.mic.play(m.silence(800) + follow + m.silence(300))
            second = await rig.next_turn(WAIT_S)
            show(second)
            if second.trigger != "follow_up":
                raise DemoFailed(f"the follow-up was not taken as one ({second.trigger})")
            print(f"  opened by: follow-up window; wire: {wire_summary(rig.wire()[mark:])}; "
                  "same Live session, so the model still has the first question", flush=True)

            # 3. the window closes; speech without the wake word is not for the device
            await poll_until(lambda: rig.voice.state == "idle", ls.follow_up_s + WAIT_S)
            print(f"\n  3. the window has closed. Someone at the table says: «{ASIDE}»",
                  flush=True)
            mark, gate_turns = len(rig.sim.messages()), rig.voice.gate.stats.turns
            clip = rig.mic.play(aside + m.silence(1500))
            await poll_until(lambda: rig.voice.gate.stats.turns > gate_turns, WAIT_S)
            await asyncio.to_thread(clip.done.wait, WAIT_S)
            await poll_until(lambda: rig.voice.gate.state == "idle", WAIT_S)
            sent = [body for _, body in rig.sim.messages()[mark:]]
            print(f"  the device heard it (the speech gate saw "
                  f"{rig.voice.gate.stats.turns - gate_turns} turn of speech, the "
                  f"{seconds(len(aside), CAPTURE_RATE):.1f} s sentence); no wake word and no "
                  f"window open: state stayed {rig.voice.state}, no turn opened, wire: "
                  f"{wire_summary([b['realtimeInput'] for b in sent if 'realtimeInput' in b])}"
                  f" ({len(sent)} messages of any kind)", flush=True)
            if sent or not rig.turns.empty() or rig.voice.state != "idle":
                raise DemoFailed("speech without the wake word reached the wire")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        wire = rig.wire()
        print(f"  wire over the whole part: {wire_summary(wire)} - two turns, both addressed to "
              f"the device; wakes {rig.voice.wakes}", flush=True)


async def simulated() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-demo-voice-") as d:
        workdir = Path(d)
        tools, extra = knowledge_tool(workdir)
        es, en = m.say(Q_ES, "es"), m.say(Q_EN)
        records = await part(
            "two spoken questions (Spanish, English), real-time microphone", workdir / "a",
            Scenario.default(transcripts=[Q_ES, Q_EN]), tools, extra,
            [(m.silence(600) + es + m.silence(1200), 1), (en + m.silence(1200), 1)],
            OUT / "speaker.wav")
        if [r.outcome for r in records] != ["played", "played"]:
            raise DemoFailed(f"turns did not play out: {[r.outcome for r in records]}")
        if tools and not all("search_knowledge" in r.tools for r in records):
            raise DemoFailed("the knowledge tool was not called for both questions")
        stop = m.say(Q_STOP)
        long_answer = Scenario(
            rules=[Rule(on="turn", turn=1, actions=[Reply(
                "La gobernanza en MLOps abarca el registro de modelos, la trazabilidad de los "
                "datos, las aprobaciones antes de desplegar, la monitorización continua y la "
                "respuesta a incidentes. Cada modelo tiene un responsable, una ficha y un "
                "historial de versiones que permite auditar cualquier decisión.")])],
            transcripts=[Q_ES, Q_STOP])
        # The user asks, listens ~2 s into the answer, then talks over it.
        barge = await part(
            "barge-in: the user talks over a long answer", workdir / "b", long_answer, [], {},
            [(m.silence(600) + es + m.silence(700 + 600 + 2500) + stop + m.silence(1200), 2)],
            OUT / "speaker-bargein.wav")
        first = barge[0]
        if first.interrupted != "barge_in":
            raise DemoFailed(f"the long answer was not interrupted: {first.outcome}")
        onset = barge[1].speech_start
        from_onset = (f"{(first.playback_stopped - onset) * 1000:.0f} ms after the user started "
                      "talking, " if first.playback_stopped and onset else "")
        print(f"  barge-in: playback stopped {from_onset}"
              f"{first.latencies()['interrupt_to_stop_ms']} ms after the gate confirmed the "
              "speech (echo guard); the rest of the answer was discarded", flush=True)
        await wake_and_talk(workdir / "c")


async def real() -> None:
    """Same classes, real devices and Gemini: what `edged run` does, minus the daemon."""
    from edged.audio.voice import VoiceLoop
    from edged.config import load_settings
    from edged.device_tools import device_tools
    from edged.events import TurnFinished
    from edged.live.session import LiveSession

    settings = load_settings()
    if settings.api_key() is None:
        raise DemoFailed("--real needs GEMINI_API_KEY (or gemini.api_key_file)")
    live = LiveSession(settings, device_tools(settings))
    voice = VoiceLoop(settings, live, live.bus)
    turns = live.bus.subscribe(TurnFinished)
    print(f"talk now (capture {settings.audio.capture_device}, playback "
          f"{settings.audio.playback_device}); Ctrl-C to stop")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(live.run())
        tg.create_task(voice.run())
        while True:
            show((await turns.get()).record)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="real ALSA devices and Gemini")
    ap.add_argument("-v", "--verbose", action="store_true", help="log the voice loop (INFO)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(real() if args.real else simulated())
    except DemoFailed as e:
        print(f"demo_voice: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    print("\ndemo_voice: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
