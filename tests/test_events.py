"""The event bus and the events' JSON forms; the daemon's status as pure functions."""

from __future__ import annotations

import json
import logging
import time

import pytest

from edged.daemon import status as st
from edged.daemon.status import ComponentHealth, View
from edged.events import (
    ComponentChanged,
    EventBus,
    ModelAudio,
    ModelText,
    Reconnecting,
    SessionChanged,
    Transcription,
    TurnFinished,
    TurnRecord,
    VoiceStateChanged,
    reply_chunk,
)


async def test_subscribers_get_their_types_and_a_slow_one_loses_its_oldest() -> None:
    bus = EventBus()
    everything = bus.subscribe(maxsize=3)
    sessions = bus.subscribe(SessionChanged)
    for i in range(5):
        bus.publish(SessionChanged("backoff", str(i)))
    bus.publish(ModelText("hola"))
    got = [everything.get_nowait() for _ in range(3)]
    assert [type(e).__name__ for e in got] == ["SessionChanged", "SessionChanged", "ModelText"]
    assert [got[0].detail, got[1].detail] == ["3", "4"]
    assert sessions.qsize() == 5 and bus.dropped == 3
    bus.unsubscribe(sessions)
    bus.publish(SessionChanged("ready"))
    assert sessions.qsize() == 5


async def test_the_slow_subscriber_keeps_the_newest_events() -> None:
    bus = EventBus()
    q = bus.subscribe(maxsize=2)
    for text in ("a", "b", "c", "d"):
        bus.publish(ModelText(text))
    assert [q.get_nowait().text for _ in range(2)] == ["c", "d"]
    assert bus.dropped == 2


def test_observers_run_in_order_and_a_failing_one_does_not_stop_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(ev: object) -> None:
        raise RuntimeError("observer bug")

    bus.observe(broken)
    bus.observe(lambda ev: seen.append(type(ev).__name__), SessionChanged, ModelText)
    with caplog.at_level(logging.ERROR):
        bus.publish(SessionChanged("ready"))
        bus.publish(ModelAudio(b"\0\0"))
        bus.publish(ModelText("x"))
    assert seen == ["SessionChanged", "ModelText"]
    assert [r.levelname for r in caplog.records] == ["ERROR"] * 3


def test_each_event_owns_its_json_form() -> None:
    rec = TurnRecord(kind="voice", speech_start=1.0, speech_end=2.0, first_reply_audio=2.5,
                     first_audio_written=2.6, user_text="¿hora?", model_text="Las tres.",
                     tools=["search_knowledge"], outcome="played")
    forms = [
        ModelAudio(b"\0" * 480).to_json(),
        Transcription("model", "Hola", True).to_json(),
        Reconnecting("1011", "internal", 0.25, True).to_json(),
        VoiceStateChanged("listening", "idle").to_json(),
        ComponentChanged("camera", "degraded", "no camera").to_json(),
        TurnFinished(rec).to_json(),
    ]
    assert forms[0] is None                                   # audio is never streamed
    assert forms[1] == {"type": "transcription", "role": "model", "text": "Hola",
                        "finished": True}
    assert forms[2] == {"type": "reconnect", "cause": "1011", "reason": "internal",
                        "delay_s": 0.25, "resuming": True}
    assert forms[3] == {"type": "state", "state": "listening", "previous": "idle"}
    assert forms[5]["type"] == "turn" and forms[5]["latency_s"] == 0.6
    assert forms[5]["user"] == "¿hora?" and forms[5]["tools"] == ["search_knowledge"]
    json.dumps(forms)                                          # all JSON-safe


def test_reply_words_are_text_or_the_models_transcription() -> None:
    assert reply_chunk(ModelText("uno")) == "uno"
    assert reply_chunk(Transcription("model", "dos")) == "dos"
    assert reply_chunk(Transcription("user", "tres")) is None
    assert reply_chunk(ModelAudio(b"")) is None


def _view(**over: object) -> View:
    base: dict[str, object] = dict(
        components={"session": ComponentHealth("ok"), "knowledge": ComponentHealth("ok")},
        session={"state": "ready", "detail": "new session"},
        audio={"state": "idle", "capture": {"state": "running", "error": None},
               "playback": {"state": "running", "error": None}},
        camera={"state": "disabled"}, index={"generation": 3},
        config={"version": "abcd1234", "loaded_at": None, "loaded_at_epoch": 0.0,
                "admin_file": None, "override_file": None,
                "last_reload": {"ok": True, "error": None}},
        control=None, muted=False, feedback={"good": 0, "bad": 0}, turns=[],
        started_at=time.time() - 5)
    base.update(over)
    return View(**base)  # type: ignore[arg-type]


def test_status_is_derived_from_the_view() -> None:
    v = _view()
    assert st.problems(v) == []
    assert st.status_line(v) == ("healthy; state=idle session=ready index=gen3 "
                                 "cfg=abcd1234")
    doc = st.document(v)
    assert doc["health"] == "healthy" and doc["schema_version"] == 1
    assert doc["components"]["session"]["state"] == "ok"

    v = _view(audio={"state": "idle", "capture": {"state": "retrying", "error": "no mic"},
                     "playback": {"state": "running"}},
              components={"camera": ComponentHealth("degraded", "picamera2 missing")},
              session={"state": "backoff", "detail": "1011: internal"}, muted=True)
    assert st.problems(v) == ["camera: picamera2 missing", "capture: no mic",
                              "session: backoff (1011: internal)"]
    assert st.health(v) == {"health": "degraded", "problems": st.problems(v)}
    assert st.status_line(v).startswith("degraded; state=idle (muted) session=backoff")
    assert st.status_line(v).endswith("; camera: picamera2 missing")


def test_a_rejected_reload_is_a_problem_and_leads_the_status_line() -> None:
    v = _view(config={"version": "abcd1234", "loaded_at": None, "loaded_at_epoch": 0.0,
                      "admin_file": None, "override_file": None,
                      "last_reload": {"ok": False,
                                      "error": "invalid configuration:\n  x.toml: vad.a = 9"}})
    assert st.problems(v) == ["config: last reload rejected (old config kept)"]
    assert st.status_line(v).endswith("; reload rejected: x.toml: vad.a = 9")
    assert len(st.status_line(_view(components={
        "x": ComponentHealth("failed", "y" * 1000)}))) == st.STATUS_LINE_MAX
