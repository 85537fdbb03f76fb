"""The voice loop end to end: virtual mic -> VoiceLoop -> LiveSession (real SDK) -> simulator
-> speaker file. Assertions are on the wire (what the simulator received) and on what the
virtual speaker played. The room runs at 4x real time; bounds are in audio bytes, not seconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edged.audio import cues
from edged.audio.playback import BYTES_PER_MS as OUT_BYTES_PER_MS
from edged.events import CuePlayed, LinkChanged
from edged_testing import material as m
from edged_testing.sim import Reply, Rule, Scenario
from edged_testing.voice_rig import VoiceRig, bracketed, poll_until, voice_rig

SPEED = 4.0
LIVENESS_S = 30.0
Q_ES = "¿Qué es la gobernanza en el contexto de MLOps?"
Q_EN = "What is a feature store?"
# After a flush the listener may still hear: the ALSA buffer (80 ms, dropped on real hardware
# but already handed to the virtual codec here), one 10 ms period being written, the virtual
# codec FIFO (85 ms) and the event's trip through the loop (a few ms, x4 in this fast room).
STOP_BOUND_BYTES = 400 * OUT_BYTES_PER_MS
# After the server's `interrupted`, add the hop from the Live receive loop to the flush: on a
# busy 2-core machine up to ~150 ms of wall time, i.e. 600 ms of audio in this 4x room. Still
# far below the 7+ s of answer that would play on without the flush.
SERVER_STOP_BOUND_BYTES = STOP_BOUND_BYTES + 600 * OUT_BYTES_PER_MS


@pytest.fixture(scope="module")
def es() -> bytes:
    return m.say(Q_ES, "es")


@pytest.fixture(scope="module")
def en() -> bytes:
    return m.say(Q_EN)


def long_reply_first() -> Scenario:
    """Turn 1 gets an 8 s answer (room to interrupt it); later turns the default assistant."""
    return Scenario(rules=[Rule(on="turn", turn=1, actions=[Reply("uno", tone_seconds=8.0)])],
                    transcripts=[Q_ES, Q_EN])


async def wait_heard(rig: VoiceRig, nbytes: int) -> None:
    await poll_until(lambda: len(rig.speaker.data()) >= nbytes, LIVENESS_S)


async def say(rig: VoiceRig, pcm: bytes) -> None:
    clip = rig.mic.play(pcm)
    await asyncio.to_thread(clip.done.wait, LIVENESS_S)


async def test_local_vad_on_the_wire(tmp_path: Path, es: bytes, en: bytes) -> None:
    async with voice_rig(tmp_path, Scenario.default(transcripts=[Q_ES, Q_EN]),
                         speed=SPEED) as rig:
        rig.mic.play(m.silence(800) + es + m.silence(1500))
        t1 = await rig.next_turn(LIVENESS_S)
        rig.mic.play(en + m.silence(1500))
        t2 = await rig.next_turn(LIVENESS_S)
        sent = len(rig.wire())
        await say(rig, m.silence(3000))         # a quiet room: nothing may go up
        wire = rig.wire()
        heard = rig.speaker.data()
        status = rig.voice.status()
    assert len(wire) == sent, "audio was sent during silence"
    up1, up2 = bracketed(wire)
    # The onset is not clipped: the first uplinked audio holds >= 300 ms from before the speech
    # (the pre-roll), then the speech from its very first sample.
    pos = up1.find(es[:3200])
    assert pos >= 0.3 * 32000, f"pre-roll {pos / 32} ms"
    assert up1[:pos].strip(b"\0") == b"", "the pre-roll is the silence before the speech"
    assert es in up1 and en in up2
    assert len(up1) - pos - len(es) <= (700 + 100) * 32, "only ~end_silence_ms sent after"
    for turn, text in ((t1, Q_ES), (t2, Q_EN)):
        assert turn.outcome == "played" and turn.user_text == text
        assert None not in (turn.activity_end_sent, turn.first_reply_audio,
                            turn.first_audio_written, turn.playback_end)
        assert turn.speech_start < turn.speech_end <= turn.activity_end_sent \
            <= turn.first_reply_audio <= turn.first_audio_written <= turn.playback_end
    assert "gobernanza" in t1.model_text
    # The speaker played every reply byte the server sent, in order, and nothing else.
    sent = rig.sim.reply_audio()
    assert len(sent) == 2 and [t.reply_bytes for t in (t1, t2)] == [len(r) for r in sent]
    assert heard == b"".join(sent)
    assert status["state"] == "idle" and [t["id"] for t in status["turns"]] == [t1.id, t2.id]


async def test_server_vad_streams_everything(tmp_path: Path, es: bytes) -> None:
    async with voice_rig(tmp_path, Scenario.default(transcripts=[Q_ES]), mode="server",
                         speed=SPEED) as rig:
        clip = m.silence(1000) + es + m.silence(1500)
        rig.mic.play(clip)
        turn = await rig.next_turn(LIVENESS_S)
        wire = rig.wire()
    assert not any("activityStart" in b or "activityEnd" in b for b in wire)
    up = b"".join(b["audio"]["data"] for b in wire if "audio" in b)
    assert clip in up, "server mode uplinks the silence too, unbroken"
    assert turn.outcome == "played" and turn.user_text == Q_ES and turn.reply_bytes > 0


async def test_server_interrupted_stops_playback_at_once(tmp_path: Path, es: bytes,
                                                        en: bytes) -> None:
    async with voice_rig(tmp_path, long_reply_first(), mode="server", speed=SPEED) as rig:
        rig.mic.play(m.silence(500) + es + m.silence(1000))
        await wait_heard(rig, 500 * OUT_BYTES_PER_MS)
        rig.mic.play(en + m.silence(1500))                # the user talks over the answer
        t1 = await rig.next_turn(LIVENESS_S)
        assert t1.interrupted == "server" and t1.outcome == "interrupted"
        assert t1.interrupted_at is not None and t1.playback_stopped is not None
        t2 = await rig.next_turn(LIVENESS_S)       # the answer to what the user said over it
        after = rig.speaker.bytes_after(t1.interrupted_at) - t2.reply_bytes
        heard = len(rig.speaker.data()) - t2.reply_bytes
    assert t2.outcome == "played" and t2.user_text == Q_EN
    assert after <= SERVER_STOP_BOUND_BYTES, f"{after / OUT_BYTES_PER_MS:.0f} ms played after"
    assert heard < 8000 * OUT_BYTES_PER_MS / 2


async def test_local_barge_in_flushes_and_starts_a_new_turn(tmp_path: Path, es: bytes,
                                                           en: bytes) -> None:
    async with voice_rig(tmp_path, long_reply_first(), speed=SPEED) as rig:
        rig.mic.play(m.silence(500) + es + m.silence(1000))
        await wait_heard(rig, 500 * OUT_BYTES_PER_MS)
        heard_before = len(rig.speaker.data())
        rig.mic.play(en + m.silence(1500))                # loud, sustained: a barge-in
        t1 = await rig.next_turn(LIVENESS_S)
        t2 = await rig.next_turn(LIVENESS_S)
        # the new answer is played whole, and last (the virtual codec drains a moment later)
        await poll_until(lambda: rig.speaker.data().endswith(rig.sim.reply_audio()[-1]),
                         LIVENESS_S)
        wire = rig.wire()
        after = rig.speaker.bytes_after(t1.interrupted_at or 0)
        heard = rig.speaker.data()
    assert t1.interrupted == "barge_in" and t1.outcome == "interrupted"
    assert after - t2.reply_bytes <= STOP_BOUND_BYTES, "old reply went on after the barge-in"
    assert heard_before < len(heard) - t2.reply_bytes < 8000 * OUT_BYTES_PER_MS / 2
    up = bracketed(wire)
    assert len(up) == 2 and en in up[1]
    assert t2.outcome == "played" and t2.user_text == Q_EN
    assert t2.reply_bytes == len(rig.sim.reply_audio()[-1])


@pytest.mark.parametrize("policy", ["guard", "open"])
async def test_own_echo_does_not_barge_in_under_guard(tmp_path: Path, policy: str) -> None:
    """While the device speaks, its own voice leaks into the mic (-45 dBFS, well under the
    guard's -30 dBFS). guard: the answer plays to the end. open: it interrupts itself."""
    echo = m.scale_to(m.say("Has dicho que la gobernanza es importante para todos", "es"), -45)
    async with voice_rig(tmp_path, long_reply_first(), speed=SPEED,
                         extra={"echo": {"policy": policy}}) as rig:
        rig.mic.play(m.silence(500) + m.say(Q_ES, "es") + m.silence(1000))
        await wait_heard(rig, 300 * OUT_BYTES_PER_MS)
        rig.mic.play(echo + echo)
        t1 = await rig.next_turn(LIVENESS_S)
        starts = sum("activityStart" in b for b in rig.wire())
    if policy == "guard":
        assert t1.outcome == "played" and t1.interrupted is None
        assert starts == 1
    else:
        assert t1.interrupted == "barge_in" and starts == 2


async def test_mute_closes_the_turn_and_sends_nothing(tmp_path: Path, es: bytes) -> None:
    async with voice_rig(tmp_path, Scenario.default(transcripts=[Q_ES]), speed=SPEED) as rig:
        rig.mic.play(m.silence(500) + es + es + m.silence(1500))
        await poll_until(lambda: rig.voice.state == "listening", LIVENESS_S)
        rig.voice.mute()
        await say(rig, m.silence(200))
        await poll_until(lambda: any("activityEnd" in b for b in rig.wire()), LIVENESS_S)
        ups = bracketed(rig.wire())
        assert rig.voice.status()["muted"] is True
        rig.voice.unmute()
        new = rig.settings.model_copy(update={
            "echo": rig.settings.echo.model_copy(update={"policy": "mute"}),
            "vad": rig.settings.vad.model_copy(update={"aggressiveness": 3})})
        rig.voice.apply_settings(new)
        turn = await rig.next_turn(LIVENESS_S)      # the server still answers what was said
        status = json.loads(json.dumps(rig.voice.status()))      # JSON-safe
    # the turn was closed by mute: what went up is what had been captured before it, far
    # less than the two questions spoken (nothing after activityEnd: bracketed() checks it)
    assert len(ups) == 1 and len(ups[0]) < len(es)
    assert status["muted"] is False and status["echo"]["fallback_policy"] == "mute"
    assert status["vad"]["aggressiveness"] == 3 and rig.voice.gate.vad.aggressiveness == 3
    assert status["capture"]["device"] == "edged_mic" and status["capture"]["error"] is None
    assert turn.end_reason == "muted" and status["turns"][0]["end_reason"] == "muted"


async def next_of(q: asyncio.Queue[Any], cond: Any, timeout: float) -> Any:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not cond(ev := await q.get()):
            pass
        return ev


async def test_a_question_while_offline_is_answered_by_the_offline_cue(
        tmp_path: Path, es: bytes) -> None:
    """Without the network, a question gets the "can't reach the cloud" sound on the speaker
    as soon as it ends (not silence); when the network returns, the "back" sound. Both are
    events (``edgectl events``). Nothing plays for an outage nobody asked anything during."""
    async with voice_rig(tmp_path, speed=SPEED, net=True) as rig:
        assert rig.net is not None
        played = rig.live.bus.subscribe(CuePlayed)
        await rig.net.down("refuse")
        await next_of(rig.events, lambda e: isinstance(e, LinkChanged) and e.state == "offline",
                      LIVENESS_S)
        assert played.empty() and rig.speaker.data() == b""
        await say(rig, m.silence(300) + es + m.silence(800))
        cue = await next_of(played, lambda e: True, LIVENESS_S)
        assert (cue.cue, cue.reason) == ("offline", "question_offline")
        await poll_until(lambda: cues.sound("offline") in rig.speaker.data(), LIVENESS_S)

        await rig.net.up()
        cue = await next_of(played, lambda e: True, LIVENESS_S)
        assert (cue.cue, cue.reason) == ("back", "online")
        await poll_until(lambda: cues.sound("back") in rig.speaker.data(), LIVENESS_S)
        assert cue.to_json() == {"type": "cue", "cue": "back", "reason": "online"}


async def test_cues_can_be_turned_off(tmp_path: Path, es: bytes) -> None:
    async with voice_rig(tmp_path, speed=SPEED, net=True, extra={"listen": {"cues": []}}) as rig:
        assert rig.net is not None
        played = rig.live.bus.subscribe(CuePlayed)
        await rig.net.down("refuse")
        await next_of(rig.events, lambda e: isinstance(e, LinkChanged) and e.state == "offline",
                      LIVENESS_S)
        await say(rig, m.silence(300) + es + m.silence(800))
        await poll_until(lambda: rig.voice.state == "thinking", LIVENESS_S)
        await rig.net.up()
        await next_of(rig.events, lambda e: isinstance(e, LinkChanged) and e.state == "online",
                      LIVENESS_S)
        assert played.empty() and cues.sound("offline") not in rig.speaker.data()
