"""The speech gate on real espeak-ng speech, silence, noise and echo (no ALSA needed).

Frames come from the real front end (edged.audio.frontend: speech detector, no echo canceller
or noise suppression here, so the uplinked audio is byte-for-byte the input), as in the daemon.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from edged.audio.frontend import EchoMonitor, FrontEnd, dbfs
from edged.audio.vad import EchoPolicy, VadGate, barge_in_policy
from edged.config import AudioSettings, EchoSettings, Settings, VadSettings
from edged.events import AudioFrame, SpeechAudio, SpeechEnded, SpeechEvent, SpeechStarted
from edged_testing import material as m

PERIOD = 640   # 20 ms capture periods


@pytest.fixture(scope="module")
def question() -> bytes:
    return m.say("What is governance in the context of machine learning operations?")


@pytest.fixture(scope="module")
def pregunta() -> bytes:
    return m.say("¿Qué es la gobernanza en el contexto de MLOps?", "es")


def frames(pcm: bytes, vad: VadSettings | None = None) -> list[AudioFrame]:
    """The front end's frames for ``pcm`` (capture periods timed from t=0)."""
    fe = FrontEnd(Settings(vad=vad or VadSettings(), echo=EchoSettings(cancellation=False),
                           audio=AudioSettings(noise_suppression=False)), None)
    out: list[AudioFrame] = []
    for i in range(0, len(pcm) - PERIOD + 1, PERIOD):
        out += fe.process(AudioFrame(pcm[i:i + PERIOD], t=(i + PERIOD) / 32000))  # type: ignore[arg-type]
    return out


def run(pcm: bytes, vad: VadSettings | None = None, echo: EchoSettings | None = None,
        playing: bool = False, policy: EchoPolicy | None = None
        ) -> tuple[list[SpeechEvent], VadGate]:
    vad = vad or VadSettings()
    gate = VadGate(vad, echo or EchoSettings())
    events: list[SpeechEvent] = []
    for f in frames(pcm, vad):
        events += gate.feed(f, playing=playing, policy=policy)
    return events, gate


def turns(events: list[SpeechEvent]) -> list[tuple[SpeechStarted, bytes, SpeechEnded | None]]:
    """Group the event stream into (start, uplinked audio, end) and check the bracketing."""
    out: list[tuple[SpeechStarted, bytes, SpeechEnded | None]] = []
    start: SpeechStarted | None = None
    audio = b""
    for ev in events:
        if isinstance(ev, SpeechStarted):
            assert start is None, "SpeechStarted inside an open turn"
            start, audio = ev, b""
        elif isinstance(ev, SpeechAudio):
            assert start is not None, "audio outside a turn"
            audio += ev.pcm
        else:
            assert start is not None, "SpeechEnded without SpeechStarted"
            out.append((start, audio, ev))
            start = None
    if start is not None:
        out.append((start, audio, None))
    return out


ENGINES = [VadSettings(engine="silero"), VadSettings(engine="webrtc")]


@pytest.mark.parametrize("vad", ENGINES, ids=["silero", "webrtc"])
def test_silence_and_quiet_noise_send_nothing(vad: VadSettings) -> None:
    for pcm in (m.silence(5000), m.noise(5000, -60, seed=1), m.noise(5000, -50, seed=2)):
        events, gate = run(pcm, vad)
        assert events == []
        assert gate.stats.uplinked == 0


@pytest.mark.parametrize("vad", ENGINES, ids=["silero", "webrtc"])
@pytest.mark.parametrize("voice", ["question", "pregunta"])
def test_one_turn_with_preroll_and_no_clipped_onset(voice: str, vad: VadSettings,
                                                    request: pytest.FixtureRequest) -> None:
    speech = request.getfixturevalue(voice)
    lead = 1000
    pcm = m.silence(lead) + speech + m.silence(1500)
    events, _ = run(pcm, vad)
    [(start, audio, end)] = turns(events)
    assert end is not None and end.reason == "silence"
    # The uplinked audio is one contiguous piece of the input that begins before the speech.
    k = len(audio) - len(audio.lstrip(b"\0")) & ~1     # first sound in what was uplinked
    pos = pcm.find(audio[k:k + 3200]) - k
    assert pos >= 0
    onset = lead * 32
    assert pos <= onset - 0.3 * 32000, "pre-roll must reach >= 300 ms before the first sample"
    assert pcm[pos:pos + len(audio)] == audio
    assert pos + len(audio) >= onset + len(speech), "the end of the speech was cut"
    assert abs(start.t - lead / 1000) < 0.25     # onset estimate near the real onset
    # SpeechEnded.t estimates the end of speech (the clip's quiet tail may be unvoiced)
    assert abs(end.t - (lead / 1000 + len(speech) / 32000)) <= 0.1
    # ... and the decision came end_silence_ms later: the last audio sent is from then
    assert abs(pos + len(audio) - (onset + len(speech) + 700 * 32)) <= 100 * 32


def test_batches_are_40_to_100_ms(question: bytes) -> None:
    events, _ = run(m.silence(500) + question + m.silence(1500))
    sizes = [len(e.pcm) / 32 for e in events if isinstance(e, SpeechAudio)]
    assert sizes and all(40 <= s <= 100 for s in sizes[:-1]), sizes
    assert 0 < sizes[-1] <= 100


@pytest.mark.parametrize("vad", ENGINES, ids=["silero", "webrtc"])
@pytest.mark.parametrize("snr_db", [20, 10])
def test_speech_in_noise_is_one_turn(question: bytes, snr_db: int, vad: VadSettings) -> None:
    pcm = m.with_noise(m.silence(800) + question + m.silence(1500), snr_db, seed=snr_db)
    [(_, audio, end)] = turns(run(pcm, vad)[0])
    assert end is not None
    assert len(audio) >= len(question)


@pytest.mark.parametrize("kind", ["fan", "street", "kitchen", "music", "door"])
def test_silero_opens_no_turn_on_loud_noise_where_webrtcvad_does(kind: str) -> None:
    """20 s of each noise bed at a loud -30 dBFS and nobody speaking."""
    bed = m.noise_bed(kind, 20_000, -30, seed=3)
    assert run(bed, VadSettings(engine="silero"))[0] == []
    if kind in ("music", "kitchen"):          # the kinds webrtcvad is known to fail on
        assert turns(run(bed, VadSettings(engine="webrtc", aggressiveness=2))[0])


def test_two_questions_two_turns(question: bytes, pregunta: bytes) -> None:
    pcm = m.silence(500) + question + m.silence(1500) + pregunta + m.silence(1500)
    ts = turns(run(pcm)[0])
    assert len(ts) == 2 and all(end is not None for _, _, end in ts)


def test_short_blip_is_not_a_turn(question: bytes) -> None:
    blip = question[:int(0.22 * 32000)]    # a syllable: triggers, but is below min_speech
    vad = VadSettings(min_speech_ms=400)
    events, gate = run(m.silence(500) + blip + m.silence(1500), vad)
    assert events == []
    assert gate.stats.rejected >= 1


def test_one_voiced_frame_in_the_end_silence_is_a_click_two_are_speech(question: bytes) -> None:
    """A click the detector scores as speech just before end_silence_ms runs out (in kitchen
    noise: a spoon on a plate) does not restart the end-of-turn silence; two voiced frames in a
    row do (the user goes on talking)."""
    fs = frames(m.silence(500) + question + m.silence(2500))
    last = max(i for i, f in enumerate(fs) if (f.speech or 0.0) >= 0.5)
    click = last + 20                       # 640 ms into the 700 ms of silence
    assert all((f.speech or 0.0) < 0.5 for f in fs[last + 1:])

    def ended(voiced: list[int]) -> SpeechEnded:
        gate = VadGate(VadSettings(), EchoSettings())
        events: list[SpeechEvent] = []
        for i, f in enumerate(fs):
            events += gate.feed(replace(f, speech=0.9) if i in voiced else f)
        (_, _, end), = turns(events)
        assert end is not None and end.reason == "silence"
        return end

    plain = ended([])
    assert ended([click]) == plain
    resumed = ended([click, click + 1])
    assert resumed.t == pytest.approx(fs[click + 1].t)     # the turn went on to the second one


def test_max_turn_length_then_a_pause_or_the_cooldown(question: bytes) -> None:
    talk = question * 4          # ~14 s with only short pauses
    vad = VadSettings(max_turn_s=2.0, end_silence_ms=900, cooldown_s=30)
    events, _ = run(m.silence(300) + talk + m.silence(1500), vad)
    ts = turns(events)
    assert ts[0][2] is not None and ts[0][2].reason == "max_length"
    # max_turn_s from the onset, plus the part of the pre-roll before the onset
    assert 2.0 <= len(ts[0][1]) / 32000 <= 2.0 + vad.preroll_ms / 1000 + 0.05
    assert len(ts) == 1, "no new turn may start before a pause"
    # ... but the gate is never deaf for long: after cooldown_s it listens again
    events, _ = run(m.silence(300) + talk + m.silence(1500), vad.model_copy(
        update={"cooldown_s": 1.0}))
    assert len(turns(events)) >= 2


def test_warmup_never_triggers_and_is_not_silence(question: bytes) -> None:
    """Speech right at start-up: the warm-up only fills the ring, the onset is still kept."""
    vad = VadSettings(warmup_ms=300, end_silence_ms=300)
    events, _ = run(question + m.silence(1500), vad)
    [(_, audio, end)] = turns(events)
    assert end is not None and end.reason == "silence"
    assert audio[:6400] == question[:6400], "audio from the warm-up is uplinked as pre-roll"
    assert len(audio) >= len(question)        # the turn did not end during the warm-up


def test_with_a_converged_canceller_barge_in_needs_only_bargein_ms(question: bytes) -> None:
    """trusted (the echo canceller converged): short speech over the reply barges in, and
    the guard's loudness rule does not apply."""
    short = m.scale_to(question[:int(0.3 * 32000)], -40)
    pcm = m.silence(300) + short + m.silence(1200)
    assert run(pcm, playing=True)[0] == []                      # guard: too quiet, too short
    ts = turns(run(pcm, playing=True, policy="trusted")[0])
    assert len(ts) == 1


def test_echo_guard_ignores_own_voice_but_not_loud_user(question: bytes,
                                                        pregunta: bytes) -> None:
    echo = m.scale_to(question, -42)
    events, _ = run(m.silence(300) + echo + m.silence(1000), playing=True)
    assert events == [], "device's own attenuated voice must not barge in under guard"
    # The user talks over the echo, loudly: a barge-in turn.
    mixed = m.mix(m.silence(300) + echo + m.silence(1000), pregunta, offset_ms=500)
    ts = turns(run(mixed, playing=True)[0])
    assert len(ts) == 1


def test_echo_guard_demands_sustained_speech(question: bytes) -> None:
    short = question[:int(0.3 * 32000)]
    events, _ = run(m.silence(300) + short + m.silence(1200), playing=True,
                    echo=EchoSettings(bargein_min_ms=500))
    assert events == []
    # the same audio is a turn when the device is quiet and min_speech allows it
    events, _ = run(m.silence(300) + short + m.silence(1200), VadSettings(min_speech_ms=100))
    assert len(turns(events)) == 1


def test_open_policy_hears_its_own_echo_and_mute_hears_nothing(question: bytes) -> None:
    loud_echo = m.silence(300) + m.scale_to(question, -25) + m.silence(1000)
    assert len(turns(run(loud_echo, playing=True, echo=EchoSettings(policy="open"))[0])) == 1
    assert run(loud_echo, playing=True, echo=EchoSettings(policy="mute"))[0] == []
    assert len(turns(run(loud_echo, playing=False, echo=EchoSettings(policy="mute"))[0])) == 1


def test_end_turn_from_outside_closes_only_open_turns(question: bytes) -> None:
    gate = VadGate(VadSettings(), EchoSettings())
    for f in frames(m.silence(500) + question):
        gate.feed(f)
    assert gate.in_turn
    closing = gate.end_turn("muted", t=99.0)
    assert isinstance(closing[-1], SpeechEnded) and closing[-1].reason == "muted"
    assert gate.end_turn("muted", t=100.0) == []


def test_configure_applies_live(question: bytes) -> None:
    gate = VadGate(VadSettings(), EchoSettings())
    gate.configure(VadSettings(min_speech_ms=5000), EchoSettings())
    events: list[SpeechEvent] = []
    for f in frames(m.silence(500) + question + m.silence(1500)):
        events += gate.feed(f)
    assert events == [], "min_speech_ms=5000 must reject a 3 s question"


def test_open_at_starts_the_turn_right_after_the_wake_word(question: bytes) -> None:
    """"<wake phrase> <question>" in one breath: the turn's audio begins at the wake word's
    end, never before it, and holds the question from its first syllable."""
    wake = m.say("okay nabu")
    pcm = m.silence(500) + wake + question + m.silence(1500)
    fs = frames(pcm)
    t_end = (500 * 32 + len(wake)) / 32000        # the wake phrase ends here
    gate = VadGate(VadSettings(), EchoSettings())
    events: list[SpeechEvent] = []
    detected_at = t_end + 0.25                     # a detector fires a little later
    opened = False
    for f in fs:
        events += gate.feed(f)
        if not opened and f.t >= detected_at:
            events = gate.open_at(t_end)           # what came before was not addressed
            opened = True
    [(start, audio, end)] = turns(events)
    assert end is not None and end.reason == "silence"
    assert abs(start.t - t_end) < 0.1
    # the turn is a contiguous piece of the input starting within a frame of the wake's end
    pos = pcm.find(audio[:3200])
    assert pcm[pos:pos + len(audio)] == audio
    wake_end = 500 * 32 + len(wake)
    assert wake_end - 16 * 32 <= pos <= wake_end + 32 * 32, (pos - wake_end) / 32
    assert question[1600:8000] in audio, "the question from its first syllables"


def test_open_at_waits_for_a_question_after_a_pause(question: bytes) -> None:
    """A pause after the wake word longer than end_silence_ms does not lose the question."""
    pcm = m.silence(2000) + question + m.silence(1500)
    gate = VadGate(VadSettings(end_silence_ms=500), EchoSettings())
    events: list[SpeechEvent] = []
    for i, f in enumerate(frames(pcm)):
        events += gate.feed(f)
        if i == 20:                                 # the wake word ended just before
            events += gate.open_at(f.t)
    [(start, audio, end)] = turns(events)
    assert end is not None and abs(start.t - 2.0) < 0.25 and question[:6400] in audio


def test_barge_in_policy_follows_the_echo_canceller() -> None:
    """No canceller or a failing one: the configured fallback; converging: deaf to the
    speaker's own voice; converged (or the mic barely hears the speaker): trusted."""
    assert barge_in_policy(None, "guard") == "guard"
    mon = EchoMonitor()
    assert barge_in_policy(mon, "guard") == "mute"
    for state in ("converged", "no_echo"):
        mon.state = state
        assert barge_in_policy(mon, "guard") == "trusted"
    mon.failing = True
    assert barge_in_policy(mon, "open") == "open"


def test_dbfs() -> None:
    assert dbfs(m.silence(10)) == -120.0
    assert -21 < dbfs(m.noise(500, -20)) < -19
