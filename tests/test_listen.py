"""Wake-and-talk on the wire: the virtual sound card, the real front end (microWakeWord
``okay_nabu``, Silero, AEC3 where the room echoes), the real Live session against the simulator.

What reaches the simulator is the whole truth about what left the device: in ``wake`` mode
nothing may go up before the wake word (or ``listen()``, or the follow-up window), and the
turn that does go up holds the question, not the wake phrase. With echo cancellation and noise
suppression off the uplink is byte-exact, so the question's own samples are searched for in it.

"Nothing was sent" is only proved once the audio has been heard: where a test plays something
the device must ignore, it ends with a *sentinel* - a wake word and a question that must open
a turn - and, the capture path being one ordered stream, everything played before it has been
through the detector by the time that turn arrives.

Rooms without an echo run at 2x or 4x real time; rooms with one at 1x (the echo canceller needs the
speaker and the microphone on one sample clock, see tests/test_frontend.py). Listening windows
(question timeout, follow-up) are wall-clock timers, so tests wait for the state they produce,
never for a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.audio import cues
from edged.events import Event, VoiceStateChanged, WakeWordDetected
from edged_testing import material as m
from edged_testing import speech
from edged_testing.sim import Reply, Rule, Scenario
from edged_testing.voice_rig import VoiceRig, bracketed, poll_until, voice_rig

SPEED = 4.0            # rooms without an echo
# Tests that look for the question's exact samples in the uplink: on a busy machine a 4x room
# can overflow the virtual microphone's 2 s of slack (0.5 s of wall time) and lose audio.
EXACT_SPEED = 2.0
ECHO_SPEED = 1.0       # rooms with one
LIVENESS_S = 90.0
USER_DBFS = -26.0
BYTES_PER_MS = 32      # 16 kHz S16_LE
WAKE = {"listen": {"mode": "wake"}}
DSP = {"echo": {"cancellation": True}, "audio": {"noise_suppression": True}}
# The most of the ~660 ms wake phrase that may go up with the question: with no pause the cut
# falls inside "nabu" (docs/voice.md: a few tens to ~150 ms of its tail are sent).
WAKE_TAIL_MS = 250
# What the start of the question may lose: the cut can land in its first consonant.
HEAD_MS = 60

Q1 = "¿Mañana va a llover en Madrid?"
Q2 = "¿Y el domingo, hará sol?"
Q3 = "¿Cuánto tarda el tren a Sevilla?"
LONG_ES = ("Ayer por la tarde fuimos al mercado del barrio a comprar fruta, verduras y pan. "
           "Después tomamos un café en la plaza y hablamos de las vacaciones de verano, "
           "de los billetes de tren y del hotel que habíamos reservado cerca de la playa.")
LONG_EN = ("This morning I took the bus to the office, answered a long list of emails and "
           "prepared the slides for the quarterly review. In the afternoon we discussed the "
           "budget for next year and agreed to hire two more engineers.")
# The device's own answer, saying its wake word three times (the first before the echo
# canceller can have converged).
SAYS_THE_WAKE_WORD = ("Di okey nabu y después tu pregunta. Por ejemplo: okey nabu, ¿qué "
                      "tiempo hace mañana? Si no oigo okey nabu, no envío nada a la nube.")
LONG_ANSWER = ("Mañana habrá nubes por la mañana y claros por la tarde en casi toda la "
               "península. En Madrid la máxima será de veintidós grados y la mínima de once, "
               "con viento flojo del oeste. El domingo subirán las temperaturas y no se "
               "esperan lluvias en el centro, aunque sí alguna tormenta en el norte.")


def onset(pcm: bytes) -> bytes:
    """``pcm`` from its first audible sample (espeak-ng starts with tens of ms of near
    silence; "in one breath" means none)."""
    x = np.frombuffer(pcm, dtype="<i2")
    return x[int(np.nonzero(np.abs(x) > 300)[0][0]):].tobytes()


def user(text: str, voice: str = "es") -> bytes:
    return onset(m.say(text, voice, USER_DBFS))


@pytest.fixture(scope="module")
def okay_nabu() -> bytes:
    """The wake phrase as Spanish speakers say it ("okey"), ~660 ms."""
    return user("okey nabu")


def observe(rig: VoiceRig) -> list[Event]:
    """Every wake and every listening-state change from now on, in order."""
    seen: list[Event] = []
    rig.live.bus.observe(seen.append, WakeWordDetected, VoiceStateChanged)
    return seen


def wakes(seen: list[Event]) -> list[WakeWordDetected]:
    return [e for e in seen if isinstance(e, WakeWordDetected)]


def states(seen: list[Event]) -> list[str]:
    return [e.state for e in seen if isinstance(e, VoiceStateChanged)]


def starts(rig: VoiceRig) -> int:
    return sum("activityStart" in b for b in rig.wire())


async def sentinel(rig: VoiceRig, okay_nabu: bytes, question: bytes) -> None:
    """Wake word + question; returns once its turn has ended on the wire (so everything
    played before it has been heard)."""
    ends = sum("activityEnd" in b for b in rig.wire())
    rig.mic.play(okay_nabu + m.silence(300) + question + m.silence(1200))
    await poll_until(lambda: sum("activityEnd" in b for b in rig.wire()) > ends, LIVENESS_S)


def where(needle: bytes, haystack: bytes) -> int:
    pos = haystack.find(needle)
    assert pos >= 0, "not found"
    return pos


# --- 1. the wake word opens exactly one turn that holds the question ---------------------


@pytest.mark.parametrize("pause_ms", [0, 400], ids=["one_breath", "short_pause"])
async def test_wake_word_and_question_make_one_turn_holding_the_question(
        tmp_path: Path, okay_nabu: bytes, pause_ms: int) -> None:
    question = user(Q1)
    said = m.silence(600) + okay_nabu + m.silence(pause_ms) + question
    wake_end = 600 * BYTES_PER_MS + len(okay_nabu)
    async with voice_rig(tmp_path, Scenario.default(transcripts=[Q1]), speed=EXACT_SPEED,
                         extra=WAKE) as rig:
        seen = observe(rig)
        rig.mic.play(said + m.silence(1500))
        turn = await rig.next_turn(LIVENESS_S)
        await poll_until(lambda: len(rig.sim.reply_audio()) == 1
                         and rig.speaker.data().endswith(rig.sim.reply_audio()[0]),
                         LIVENESS_S)                      # the answer played whole
        wire = rig.wire()
        heard = rig.speaker.data()
        status: Any = rig.voice.status()
    assert [(w.model, w.probability > 0.9) for w in wakes(seen)] == [("Okay Nabu", True)]
    assert states(seen)[:4] == ["listening", "thinking", "speaking", "follow_up"]
    (up,) = bracketed(wire)                               # exactly one activityStart
    assert turn.trigger == "wake" and turn.outcome == "played" and turn.user_text == Q1
    # The question went up whole and unbroken (bar its very first consonant)...
    head = HEAD_MS * BYTES_PER_MS
    assert question[head:] in up, "the question is not in the uplinked audio"
    # ...and the uplink began at most WAKE_TAIL_MS before the end of the wake phrase: it is a
    # contiguous piece of what was said, from `start` on.
    start = len(said) - len(question) + head - where(question[head:head + 3200], up)
    assert up == (said + m.silence(1500))[start:start + len(up)]
    assert start >= wake_end - WAKE_TAIL_MS * BYTES_PER_MS, \
        f"{(wake_end - start) / BYTES_PER_MS:.0f} ms of the wake phrase went up"
    # The earcon played before the answer.
    assert heard.startswith(cues.sound("wake"))
    assert status["listen"]["wakes"] == 1 and status["listen"]["last_wake"] is not None


# --- 2. / 3. nothing goes up without the wake word ------------------------------------------


async def test_the_question_without_the_wake_word_sends_nothing(
        tmp_path: Path, okay_nabu: bytes) -> None:
    q1, q2 = user(Q1), user(Q2)
    async with voice_rig(tmp_path, Scenario.default(transcripts=[Q2]), speed=EXACT_SPEED,
                         extra=WAKE) as rig:
        seen = observe(rig)
        rig.mic.play(m.silence(500) + q1 + m.silence(1500))
        await sentinel(rig, okay_nabu, q2)
        gate_turns = rig.voice.gate.stats.turns
        (up,) = bracketed(rig.wire())
    # The gate heard the question as speech (in vad mode it would have gone up)...
    assert gate_turns >= 2
    # ...but nothing moved before the wake word: no state change, no audio, no activity.
    assert isinstance(seen[0], WakeWordDetected), seen[:3]
    assert q1[:3200] not in up and q2[HEAD_MS * BYTES_PER_MS:] in up


async def test_noise_babble_and_long_speech_never_wake_it(tmp_path: Path,
                                                        okay_nabu: bytes) -> None:
    clips = [(kind, m.noise_bed(kind, 2500, USER_DBFS - 4, seed=3)) for kind in m.NOISE_KINDS]
    clips += [("spanish speech", user(LONG_ES)), ("english speech", user(LONG_EN, "en-us"))]
    question = user(Q2)
    async with voice_rig(tmp_path, Scenario.default(transcripts=[Q2]), speed=SPEED,
                         extra=WAKE) as rig:
        seen = observe(rig)
        played = [(name, rig.mic.play(pcm + m.silence(300))) for name, pcm in clips]
        await sentinel(rig, okay_nabu, question)
        gate_turns = rig.voice.gate.stats.turns
        ups = bracketed(rig.wire())
    false_wakes = [next((n for n, c in reversed(played)
                         if c.started_at is not None and c.started_at <= w.t), "?")
                   for w in wakes(seen)[:-1]]
    assert false_wakes == [], f"woken by {false_wakes}"
    assert len(wakes(seen)) == 1 and isinstance(seen[0], WakeWordDetected), seen[:3]
    assert len(ups) == 1
    assert gate_turns >= 3, "the speech and the babble were heard as speech"


# --- 4. / 7. the follow-up window, then idle; the next wake keeps the context ----------------


async def test_follow_up_window_then_idle_then_a_later_wake_in_the_same_session(
        tmp_path: Path, okay_nabu: bytes) -> None:
    q1, q2, q3, q4 = user(Q1), user(Q2), user(Q3), user("¿Y el lunes?")
    scenario = Scenario.default(transcripts=[Q1, Q2, "¿Y el lunes?"])
    extra = {"listen": {"mode": "wake", "follow_up_s": 3.0}}
    async with voice_rig(tmp_path, scenario, speed=SPEED, extra=extra) as rig:
        seen = observe(rig)
        rig.mic.play(okay_nabu + m.silence(300) + q1 + m.silence(1500))
        t1 = await rig.next_turn(LIVENESS_S)
        # the answer has played: the window is open, a question needs no wake word
        assert rig.voice.state == "follow_up"
        # ...once the speaker's echo tail is over (speech within it would be a barge-in)
        await poll_until(lambda: not rig.voice._device_speaking(), LIVENESS_S)
        rig.mic.play(q2 + m.silence(1500))
        t2 = await rig.next_turn(LIVENESS_S)
        await poll_until(lambda: rig.voice.state == "idle", LIVENESS_S)    # it expired
        rig.mic.play(q3 + m.silence(1500))
        await sentinel(rig, okay_nabu, q4)                 # "¿y el lunes?" much later
        t3 = await rig.next_turn(LIVENESS_S)
        ups = bracketed(rig.wire())
        connections = len(rig.sim.connections)
    assert [t.trigger for t in (t1, t2, t3)] == ["wake", "follow_up", "wake"]
    assert len(wakes(seen)) == 2
    assert len(ups) == 3
    assert not any(q3[:3200] in up for up in ups), "speech after the window went up"
    # One Live session all along: the late question is answered with the earlier two in mind.
    assert connections == 1
    assert "Turnos anteriores que recuerdo: 2" in t3.model_text, t3.model_text


# --- 5. the device's own voice, and the wake word over it ----------------------------------


def echo_gain_db(text: str) -> float:
    """Room gain that brings the device's spoken ``text`` back at the user's level."""
    return USER_DBFS - m.level_dbfs(speech.synthesize(text, "es"))


async def test_its_own_voice_saying_the_wake_word_does_not_wake_it(
        tmp_path: Path, okay_nabu: bytes) -> None:
    """The answer says "okey nabu" three times and comes back into the microphone as loud as
    the user. Only the wake word may interrupt it here (listen.barge_in = "wake_word"), so if
    its own voice woke the device the answer would stop: it plays to the end, no second wake,
    and the next question is an ordinary follow-up."""
    scenario = Scenario(rules=[Rule(on="turn", turn=1, actions=[Reply(SAYS_THE_WAKE_WORD)])],
                        transcripts=[Q1, Q2])
    extra = {"listen": {"mode": "wake", "barge_in": "wake_word"}, **DSP}
    async with voice_rig(tmp_path, scenario, speed=ECHO_SPEED, extra=extra) as rig:
        rig.mic.set_room(echo_gain_db(SAYS_THE_WAKE_WORD), echo_delay_ms=5)
        seen = observe(rig)
        rig.mic.play(okay_nabu + m.silence(300) + user(Q1) + m.silence(1200))
        t1 = await rig.next_turn(LIVENESS_S)
        assert len(wakes(seen)) == 1, "its own voice woke it"
        assert t1.outcome == "played" and t1.interrupted is None
        rig.mic.play(user(Q2) + m.silence(1200))          # the follow-up: its own turn
        t2 = await rig.next_turn(LIVENESS_S)
        n = starts(rig)
    assert t2.trigger == "follow_up" and n == 2


async def test_the_wake_word_over_a_reply_stops_it_and_opens_a_turn(
        tmp_path: Path, okay_nabu: bytes) -> None:
    """"okey nabu, ¿y el domingo?" over the answer, whose echo is as loud as the user: the
    answer stops at once and the question is the next turn (listen.barge_in = "speech", the
    default: the speech detector reacts before the wake word has been said to the end)."""
    scenario = Scenario(rules=[Rule(on="turn", turn=1, actions=[Reply(LONG_ANSWER)])],
                        transcripts=[Q1, Q2])
    async with voice_rig(tmp_path, scenario, speed=ECHO_SPEED, extra={**WAKE, **DSP}) as rig:
        rig.mic.set_room(echo_gain_db(LONG_ANSWER), echo_delay_ms=5)
        rig.mic.play(okay_nabu + m.silence(300) + user(Q1) + m.silence(800))
        await poll_until(lambda: rig.voice.state == "speaking", LIVENESS_S)
        await poll_until(lambda: rig.voice.frontend.echo is not None
                         and rig.voice.frontend.echo.trusted, LIVENESS_S)
        rig.mic.play(okay_nabu + m.silence(300) + user(Q2) + m.silence(1200))
        t1 = await rig.next_turn(LIVENESS_S)
        t2 = await rig.next_turn(LIVENESS_S)
        n = starts(rig)
    assert t1.interrupted == "barge_in" and t1.outcome == "interrupted"
    # (How the answer to it ends is the echo canceller's business, tests/test_frontend.py; on
    # a busy machine the virtual speaker can starve unnoticed and let a little echo through.)
    assert t2.trigger in ("barge_in", "wake") and t2.user_text == Q2 and n >= 2


# --- 6. listen(): a button or a script opens a turn in every mode ---------------------------


@pytest.mark.parametrize("mode", ["wake", "vad", "manual"])
async def test_listen_opens_a_turn_in_every_mode(tmp_path: Path, mode: str) -> None:
    q1, q2 = user(Q1), user(Q2)
    async with voice_rig(tmp_path, Scenario.default(transcripts=[Q2]), speed=EXACT_SPEED,
                         extra={"listen": {"mode": mode}}) as rig:
        seen = observe(rig)
        if mode == "manual":       # without the button, speech opens nothing
            clip = rig.mic.play(m.silence(300) + q1 + m.silence(1500))
            await poll_until(clip.done.is_set, LIVENESS_S)
            await poll_until(lambda: rig.voice.gate.stats.turns >= 1, LIVENESS_S)
            assert rig.wire() == [] and rig.voice.state == "idle"
        answer = rig.voice.listen()
        state = rig.voice.state
        rig.mic.play(q2 + m.silence(1500))
        turn = await rig.next_turn(LIVENESS_S)
        ups = bracketed(rig.wire())
    assert answer["listening"] is True and state == "listening"
    assert turn.trigger == "listen" and turn.outcome == "played" and turn.user_text == Q2
    assert len(ups) == 1 and q2 in ups[0] and q1[:3200] not in ups[0]
    assert wakes(seen) == []
