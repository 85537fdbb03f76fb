"""The Live session supervisor with the real google-genai SDK against edged_testing.sim.

One test per behaviour; assertions are on the wire (what the simulator recorded) and on the
events/status the supervisor publishes. Time bounds are liveness bounds, except the stall test,
which checks the documented detection bound (docs/live-session.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edged.config import Settings
from edged.events import (
    LiveEvent,
    ModelText,
    SessionChanged,
    ToolCallFinished,
    ToolCallStarted,
    TurnComplete,
)
from edged.live import LiveConfigError, LiveSession
from edged.tools import Tool, ToolRegistry
from edged_testing.sim import (
    CancelToolCalls,
    Close,
    Drop,
    GoAway,
    LiveSimulator,
    Reply,
    Rule,
    Scenario,
    Sleep,
    Stall,
    ToolCall,
)

LIVENESS_S = 15.0     # generous bound for "it happens at all"; never a performance claim
ANY_ARGS = {"type": "object"}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def settings_for(sim: LiveSimulator, gemini: dict[str, Any] | None = None,
                 session: dict[str, Any] | None = None) -> Settings:
    """Settings pointing at the simulator, with fast backoff so tests stay quick."""
    return Settings.model_validate({
        "gemini": {"base_url": sim.base_url, "ca_file": str(sim.ca_file),
                   "api_key": "test-key", "response_modality": "TEXT", **(gemini or {})},
        "session": {"backoff_base_s": 0.05, "backoff_cap_s": 0.5, **(session or {})},
    })


@contextlib.asynccontextmanager
async def running(settings: Settings,
                  tools: ToolRegistry | None = None) -> AsyncIterator[LiveSession]:
    live = LiveSession(settings, tools or ToolRegistry(settings.tools.timeout_s))
    task = asyncio.create_task(live.run())
    try:
        yield live
    finally:
        await live.close()
        await asyncio.wait_for(task, LIVENESS_S)


async def until(q: asyncio.Queue[LiveEvent], kind: type,
                within_s: float = LIVENESS_S) -> list[LiveEvent]:
    """Events from ``q`` up to and including the first of type ``kind``."""
    seen: list[LiveEvent] = []
    async with asyncio.timeout(within_s):
        while True:
            seen.append(await q.get())
            if isinstance(seen[-1], kind):
                return seen


async def ask(live: LiveSession, q: asyncio.Queue[LiveEvent], text: str) -> str:
    """One text turn; the reply text."""
    await live.send_text(text)
    return "".join(e.text for e in await until(q, TurnComplete) if isinstance(e, ModelText))


def registry(timeout_s: float = 2.0, **handlers: Any) -> ToolRegistry:
    r = ToolRegistry(timeout_s)
    for name, handler in handlers.items():
        r.register(Tool(name, f"test tool {name}", ANY_ARGS, handler))
    return r


# --- setup on the wire -------------------------------------------------------------------


@pytest.mark.parametrize("mode, disabled", [("local", True), ("server", False)])
async def test_setup_carries_vad_resumption_compression_transcriptions_voice(
        mode: str, disabled: bool) -> None:
    async def noop(args: dict[str, Any]) -> dict[str, Any]:
        return {}

    async with LiveSimulator() as sim:
        s = settings_for(sim, gemini={"response_modality": "AUDIO", "voice": "Puck",
                                      "language": "en-US", "system_instruction": "Be brief."},
                         session={"turn_detection": mode})
        async with running(s, registry(search_knowledge=noop)) as live:
            await live.wait_ready(LIVENESS_S)
            setup = sim.connections[0].setup
    assert setup is not None
    assert setup["model"] == "models/gemini-3.8-live"
    aad = setup["realtimeInputConfig"]["automaticActivityDetection"]
    assert aad["disabled"] is disabled
    assert setup["sessionResumption"] == {}
    assert setup["contextWindowCompression"] == {
        "triggerTokens": "25600", "slidingWindow": {"targetTokens": "12800"}} or \
        setup["contextWindowCompression"] == {
        "triggerTokens": 25600, "slidingWindow": {"targetTokens": 12800}}
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    gen = setup["generationConfig"]
    assert gen["responseModalities"] == ["AUDIO"]
    assert gen["speechConfig"] == {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}},
                                   "languageCode": "en-US"}
    assert "thinkingConfig" not in gen and "enableAffectiveDialog" not in gen
    assert setup["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    names = [d["name"] for t in setup["tools"] for d in t.get("functionDeclarations", [])]
    assert names == ["search_knowledge"]


# --- resumption ----------------------------------------------------------------------------


async def test_abrupt_drop_between_turns_resumes_with_handle_and_keeps_context() -> None:
    scenario = Scenario(rules=[Rule(on="ready", connection=0, actions=[Sleep(1.0), Drop()])])
    async with LiveSimulator(scenario) as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        assert "que recuerdo: 0." in await ask(live, q, "Me llamo Ana")
        await sim.wait_for(lambda s: len(s.connections) == 2, LIVENESS_S)
        reply = await ask(live, q, "¿Cómo me llamo?")
        status = live.status()
    assert sim.connections[0].closed_by == "drop"
    assert sim.connections[1].resumed_handle is not None
    assert "Te llamas Ana" in reply and "que recuerdo: 1." in reply
    assert status["reconnects_by_code"] == {"1006": 1}
    assert status["last_close_code"] == 1006


async def test_drop_during_a_turn_resends_the_question_on_the_resumed_session() -> None:
    scenario = Scenario(rules=[Rule(on="turn", connection=0, turn=2, actions=[Drop()])])
    async with LiveSimulator(scenario) as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await ask(live, q, "Me llamo Ana")
        reply = await ask(live, q, "¿Sigues ahí?")
    assert sim.connections[1].resumed_handle is not None
    texts = [m["clientContent"]["turns"][-1]["parts"][0]["text"]
             for i, m in sim.messages("clientContent") if i == 1]
    assert texts == ["¿Sigues ahí?"]
    assert "que recuerdo: 1." in reply and "Te llamas Ana" in reply


async def test_refused_handle_starts_a_fresh_session_seeded_with_text_history() -> None:
    async with LiveSimulator() as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await ask(live, q, "Me llamo Ana")
        sim.expire_handles()     # the server forgot every handle (as after 2 h)
        live.apply_settings(settings_for(sim, gemini={"voice": "Puck"}))  # force reconnect
        await sim.wait_for(lambda s: len(s.connections) == 3, LIVENESS_S)
        reply = await ask(live, q, "¿Cómo me llamo?")
    assert sim.connections[1].close_code == 1008           # refused resumption
    assert sim.connections[2].resumed_handle is None
    seed = next(m["clientContent"] for i, m in sim.messages("clientContent") if i == 2)
    assert seed["turnComplete"] is False
    assert [t["role"] for t in seed["turns"]] == ["user", "model"]
    assert "Te llamas Ana" in reply


async def test_clean_1000_close_reconnects_quietly(caplog: pytest.LogCaptureFixture) -> None:
    scenario = Scenario(rules=[Rule(on="turn", connection=0, turn=2,
                                    actions=[Close(1000, "session over")])])
    async with LiveSimulator(scenario) as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await ask(live, q, "Me llamo Ana")
        reply = await ask(live, q, "¿Cómo me llamo?")
        status = live.status()
    assert "Te llamas Ana" in reply                 # resumed and answered
    assert status["reconnects_by_code"] == {"1000": 1} and status["state"] == "ready"
    assert status["last_close_reason"] == "session over"
    assert not [r for r in caplog.records
                if r.name.startswith("edged.live") and r.levelno >= logging.WARNING]


# --- goAway --------------------------------------------------------------------------------


async def test_goaway_reconnects_before_the_deadline_resuming() -> None:
    time_left = 3.0
    scenario = Scenario(rules=[Rule(on="ready", connection=0,
                                    actions=[GoAway(time_left=time_left, close_code=1011)])])
    async with (
        LiveSimulator(scenario) as sim,
        running(settings_for(sim, session={"goaway_margin_s": 1.0})) as live,
    ):
        await sim.wait_for(lambda s: len(s.connections) == 2, LIVENESS_S)
        await live.wait_ready(LIVENESS_S)
        status = live.status()
    first, second = sim.connections[0], sim.connections[1]
    assert second.opened_at < first.opened_at + time_left
    assert first.closed_by == "client" and first.close_code == 1000   # we left, not the server
    assert second.resumed_handle is not None
    assert status["reconnects_by_code"] == {"goaway": 1}


async def test_goaway_during_a_reply_lets_the_turn_finish_then_reconnects() -> None:
    time_left = 5.0
    scenario = Scenario(rules=[Rule(on="turn", connection=0, turn=1, actions=[
        GoAway(time_left=time_left), Reply("una respuesta en varias partes", parts=6)])])
    async with LiveSimulator(scenario) as sim, running(
            settings_for(sim, session={"goaway_margin_s": 1.0})) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        reply = await ask(live, q, "hola")
        turn_done = time.time()
        await sim.wait_for(lambda s: len(s.connections) == 2, LIVENESS_S)
    first, second = sim.connections[0], sim.connections[1]
    assert reply == "una respuesta en varias partes"        # not cut by the goAway
    assert turn_done <= second.opened_at < first.opened_at + time_left
    assert first.closed_by == "client" and second.resumed_handle is not None


# --- tools ---------------------------------------------------------------------------------


async def test_tool_exception_and_timeout_answer_with_error_payloads_and_the_right_ids() -> None:
    async def boom(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    async def slow(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    scenario = Scenario(rules=[Rule(on="turn", actions=[
        ToolCall("boom", id="fc-boom"), ToolCall("slow", id="fc-slow"), Reply("hecho")])])
    async with (
        LiveSimulator(scenario) as sim,
        running(settings_for(sim), registry(0.3, boom=boom, slow=slow)) as live,
    ):
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await live.send_text("hola")
        events = await until(q, TurnComplete)
        counts = live.status()["tool_calls"]
    responses = [fr for _, m in sim.messages("toolResponse")
                 for fr in m["toolResponse"]["functionResponses"]]
    assert [(r["id"], r["name"]) for r in responses] == [("fc-boom", "boom"), ("fc-slow", "slow")]
    assert "RuntimeError: disk on fire" in responses[0]["response"]["error"]
    assert "did not answer within 0.3 s" in responses[1]["response"]["error"]
    assert sim.errors == []
    started = [e.id for e in events if isinstance(e, ToolCallStarted)]
    finished = [(e.id, e.ok) for e in events if isinstance(e, ToolCallFinished)]
    assert started == ["fc-boom", "fc-slow"]
    assert finished == [("fc-boom", False), ("fc-slow", False)]
    assert counts == {"started": 2, "ok": 0, "error": 2, "cancelled": 0}


async def test_tool_call_cancellation_cancels_the_task_and_sends_no_response() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def waits(args: dict[str, Any]) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(30)      # only cancellation ends it within the test
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"late": True}

    scenario = Scenario(rules=[Rule(on="turn", turn=1, actions=[
        ToolCall("waits", id="fc-1", wait=False), Sleep(0.3), CancelToolCalls(),
        Reply("vale, lo dejo")])])
    async with (
        LiveSimulator(scenario) as sim,
        running(settings_for(sim), registry(5.0, waits=waits)) as live,
    ):
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await live.send_text("busca algo")
        events = await until(q, TurnComplete)
        await asyncio.wait_for(cancelled.wait(), LIVENESS_S)
        assert "Has dicho" in await ask(live, q, "¿y ahora?")   # the model is not blocked
        counts = live.status()["tool_calls"]
    assert started.is_set() and cancelled.is_set()
    assert sim.messages("toolResponse") == []
    assert [(e.id, e.ok, e.error) for e in events if isinstance(e, ToolCallFinished)] == [
        ("fc-1", False, "cancelled by the server")]
    assert counts["cancelled"] == 1 and counts["ok"] == 0


# --- failures ------------------------------------------------------------------------------


async def test_1008_on_setup_is_a_config_error_retried_slowly_then_fixed_by_reload() -> None:
    retry_s = 0.5
    async with LiveSimulator(Scenario(models=("gemini-3.8-live",))) as sim:
        bad = settings_for(sim, gemini={"model": "gemini-9-nope"},
                           session={"config_error_retry_s": retry_s, "backoff_base_s": 0.01})
        async with running(bad) as live:
            with pytest.raises(LiveConfigError, match="gemini-9-nope is not found") as err:
                await live.wait_ready(LIVENESS_S)
            assert "gemini.model" in str(err.value)        # the hint names the key to fix
            status = live.status()
            assert status["state"] == "config_error"
            assert status["last_close_code"] == 1008 and "not found" in status["last_close_reason"]
            assert status["next_retry_at"] is not None
            window = 1.6
            n0 = len(sim.connections)
            await asyncio.sleep(window)
            retries = len(sim.connections) - n0
            # about window / retry_s retries; a transient-error backoff (0.01 s) would be dozens
            assert 1 <= retries <= window / retry_s + 2
            live.apply_settings(settings_for(sim, session={"config_error_retry_s": 300}))
            await live.wait_ready(LIVENESS_S)              # a reload retries at once
            assert live.status()["state"] == "ready"
    assert all(c.close_code == 1008 for c in sim.connections[:-1])


async def test_a_config_error_from_an_attempt_with_replaced_settings_is_not_believed() -> None:
    """A reload lands while an attempt with the old settings is still being set up and then
    rejected: the rejection says nothing about the new settings, so they are tried at once
    instead of waiting config_error_retry_s."""
    scenario = Scenario(rules=[Rule(on="setup", connection=0, actions=[
        Sleep(1.0), Close(1008, "models/old is not found for API version v1")])])
    async with (
        LiveSimulator(scenario) as sim,
        running(settings_for(sim, session={"config_error_retry_s": 300})) as live,
    ):
        await sim.wait_for(lambda s: len(s.connections) == 1, LIVENESS_S)
        live.apply_settings(settings_for(sim, gemini={"voice": "Puck"},
                                         session={"config_error_retry_s": 300}))
        await live.wait_ready(LIVENESS_S)
        status = live.status()
    assert sim.connections[0].close_code == 1008
    assert status["state"] == "ready" and status["reconnects_by_code"] == {"reconfigure": 1}
    assert sim.connections[1].setup["generationConfig"]["speechConfig"]["voiceConfig"][
        "prebuiltVoiceConfig"]["voiceName"] == "Puck"


async def test_stalled_socket_is_detected_within_the_documented_bound() -> None:
    stall_s = 1.0
    scenario = Scenario(rules=[Rule(on="turn", connection=0, actions=[Stall()])])
    async with (
        LiveSimulator(scenario) as sim,
        running(settings_for(sim, session={"stall_timeout_s": stall_s})) as live,
    ):
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        sent = time.monotonic()
        await live.send_text("¿hola?")
        events = await until(q, TurnComplete)
        status = live.status()
    detected = next(e for e in events if isinstance(e, SessionChanged) and e.state == "backoff")
    # documented bound: stall_timeout_s + one watchdog tick (min(1 s, stall_timeout_s / 4)),
    # plus 1 s of scheduling slack for a loaded machine
    assert stall_s < detected.t - sent <= stall_s + min(1.0, stall_s / 4) + 1.0
    assert "stall" in detected.detail
    assert status["reconnects_by_code"] == {"stall": 1}
    assert sim.connections[1].resumed_handle is not None     # answered after resuming
    assert any(isinstance(e, ModelText) and "Has dicho" in e.text for e in events)


async def test_sends_while_disconnected_drop_audio_and_text_waits_for_reconnect() -> None:
    scenario = Scenario(rules=[Rule(on="setup", connection=0, actions=[Sleep(0.5)])])
    async with (
        LiveSimulator(scenario) as sim,
        running(settings_for(sim, session={"turn_detection": "server"})) as live,
    ):
        q = live.bus.subscribe()
        await live.send_audio(b"\x00\x00" * 160)       # not connected yet: dropped
        reply = await ask(live, q, "hola")               # waits for the connection
        await live.send_audio(b"\x00\x00" * 160)
        await sim.wait_for(lambda s: len(s.messages("realtimeInput")) == 1, LIVENESS_S)
        status = live.status()
    assert "Has dicho: «hola»" in reply
    assert status["audio_chunks_dropped"] == 1 and status["bytes_up"] == 320
