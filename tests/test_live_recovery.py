"""How the Live supervisor recovers: network outages, close codes by context, goAway timing,
shutdown during a connect, questions that keep failing, tool calls it cannot trust, and a
resumption handle that outlives the process.

Real google-genai SDK, real TLS sockets, ``edged_testing.sim`` as the server and
``edged_testing.netproxy`` between them when the network has to fail. Long outages run on
``edged_testing.clock.WarpLoop``: five minutes of the supervisor's timers pass in seconds, the
sockets stay real, and the return is measured in real time. Time bounds here are liveness bounds
(well above the documented figures, which ``scripts/bench_recovery.py`` measures); the decisive
checks are on what went over the wire and which events were published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edged.config import Settings
from edged.events import (
    LinkChanged,
    Reconnecting,
    SessionChanged,
    ToolCallFinished,
    TurnComplete,
)
from edged.live import LiveSession
from edged.live.reply import AnswerFailed, Reply, stream_reply
from edged.tools import Tool, ToolRegistry
from edged_testing.clock import WarpLoop, advance
from edged_testing.netproxy import NetProxy
from edged_testing.sim import (
    Close,
    Drop,
    GoAway,
    LiveSimulator,
    Rule,
    Scenario,
    Sleep,
    Stall,
    ToolCall,
)
from edged_testing.sim import Reply as SimReply
from tests.test_live_session import LIVENESS_S, ask, registry, settings_for, until

# Generous bound on "network back -> session ready" (the documented figure is p95 < 2 s,
# measured by `make bench`): a regression to backoff-bound returns takes up to 30 s.
RETURN_LIVENESS_S = 10.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def warped(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main()`` on an event loop whose clock ``advance()`` can move forward."""
    with asyncio.Runner(loop_factory=WarpLoop) as runner:
        return runner.run(main())


@contextlib.asynccontextmanager
async def running(settings: Settings, tools: ToolRegistry | None = None,
                  handle_file: Path | None = None) -> AsyncIterator[LiveSession]:
    live = LiveSession(settings, tools or ToolRegistry(settings.tools.timeout_s),
                       handle_file=handle_file)
    task = asyncio.create_task(live.run())
    try:
        yield live
    finally:
        await live.close()
        await asyncio.wait_for(task, LIVENESS_S)


def via_proxy(sim: LiveSimulator, proxy: NetProxy, **session: Any) -> Settings:
    s = settings_for(sim, session=session)
    return s.model_copy(update={"gemini": s.gemini.model_copy(
        update={"base_url": proxy.base_url})})


async def back_to_ready(q: asyncio.Queue[Any], within_s: float) -> list[Any]:
    """Events until the session is ready again after having been anything else."""
    seen: list[Any] = []
    left_ready = False
    async with asyncio.timeout(within_s):
        while True:
            ev = await q.get()
            seen.append(ev)
            if isinstance(ev, SessionChanged):
                if ev.state == "ready" and left_ready:
                    return seen
                left_ready = left_ready or ev.state != "ready"


# --- 1. recovery bound ---------------------------------------------------------------------


@pytest.mark.parametrize("outage_s", [5.0, 60.0, 300.0])
@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_after_an_outage_of_any_length_the_session_returns_with_the_network(
        mode: str, outage_s: float) -> None:
    async def main() -> tuple[float, list[Any], list[Any], str]:
        async with (LiveSimulator() as sim, NetProxy("127.0.0.1", sim.port) as proxy,
                    running(via_proxy(sim, proxy)) as live):
            q = live.bus.subscribe()
            await live.wait_ready(LIVENESS_S)
            await ask(live, q, "Me llamo Ana")
            while not q.empty():
                q.get_nowait()
            await proxy.down(mode)            # type: ignore[arg-type]
            await advance(outage_s)
            outage = [q.get_nowait() for _ in range(q.qsize())]
            up_at = time.monotonic()
            await proxy.up()
            back = await back_to_ready(q, LIVENESS_S)
            back_s = time.monotonic() - up_at
            reply = await ask(live, q, "¿Cómo me llamo?")
        return back_s, outage, back, reply

    back_s, outage, back, reply = warped(main)
    events = outage + back
    # however long the outage, it cost exactly one reconnect: no attempts while offline
    assert len([e for e in events if isinstance(e, Reconnecting)]) == 1
    links = [e.state for e in events if isinstance(e, LinkChanged)]
    if mode == "refuse" or outage_s > 65:   # it saw the network go (a black hole: by keepalive)
        assert links == ["offline", "online"]
        assert any(isinstance(e, SessionChanged) and e.state == "offline" for e in outage)
    else:     # a short black hole goes unnoticed until the frozen connection is reset
        assert links == []
    assert back_s < RETURN_LIVENESS_S
    assert "Te llamas Ana" in reply               # the same conversation, resumed


def test_offline_probes_do_not_connect_to_the_server() -> None:
    """While the network is down the supervisor only probes: the server sees no attempt."""
    async def main() -> tuple[int, int, int]:
        async with (LiveSimulator() as sim, NetProxy("127.0.0.1", sim.port) as proxy,
                    running(via_proxy(sim, proxy, probe_interval_s=0.5)) as live):
            await live.wait_ready(LIVENESS_S)
            before = len(sim.connections)
            await proxy.down("refuse")
            await advance(120.0)
            during = len(sim.connections)
            await proxy.up()
            await live.wait_ready(LIVENESS_S)
            await sim.wait_for(lambda s: len(s.connections) == before + 1, LIVENESS_S)
            return before, during, len(sim.connections)

    before, during, after = warped(main)
    assert (before, during, after) == (1, 1, 2)


# --- 2. close codes by context --------------------------------------------------------------


async def test_1008_after_a_tool_response_starts_a_fresh_session_with_the_context() -> None:
    async def lookup(args: dict[str, Any]) -> dict[str, Any]:
        return {"found": "nothing"}

    scenario = Scenario(rules=[Rule(on="turn", connection=0, turn=2, actions=[
        ToolCall("lookup"), Close(1008, "Requested entity was not found.")])])
    async with LiveSimulator(scenario) as sim, running(
            settings_for(sim), registry(lookup=lookup)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await ask(live, q, "Me llamo Ana")
        reply = await ask(live, q, "¿Cómo me llamo? Búscalo")
        states = [e.state for e in await _drain(q)]
        status = live.status()
    assert sim.messages("toolResponse")                       # the tool was answered first
    assert sim.connections[0].close_code == 1008
    fresh = sim.connections[1]
    assert fresh.resumed_handle is None                       # fresh, not a resume
    seed = next(m["clientContent"] for i, m in sim.messages("clientContent") if i == 1)
    assert seed["turnComplete"] is False and "Me llamo Ana" in json.dumps(seed)
    assert "Te llamas Ana" in reply                           # context re-seeded, re-asked
    assert "config_error" not in states and status["state"] == "ready"


async def test_1008_on_the_first_setup_is_a_configuration_error_and_keeps_the_history() -> None:
    async with LiveSimulator() as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await ask(live, q, "Me llamo Ana")
        sim.scenario.models = ("another-model",)              # the model is retired
        live.apply_settings(settings_for(sim, gemini={"voice": "Puck"}))   # reconnect
        await until_state(q, "config_error")
        sim.scenario.models = ()
        live.apply_settings(settings_for(sim))               # the reload fixes it
        await live.wait_ready(LIVENESS_S)
        reply = await ask(live, q, "¿Cómo me llamo?")
    assert "Te llamas Ana" in reply                           # history kept and re-seeded


# --- 3. goAway -----------------------------------------------------------------------------


async def test_goaway_with_3s_left_and_a_2s_reply_keeps_the_reply_intact() -> None:
    scenario = Scenario(rules=[Rule(on="turn", connection=0, turn=1, actions=[
        GoAway(time_left=3.0), SimReply("uno ", parts=1), Sleep(1.0), SimReply("dos ", parts=1),
        Sleep(1.0), SimReply("tres", parts=1)])])
    async with LiveSimulator(scenario) as sim, running(settings_for(sim)) as live:  # margin 5 s
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        reply = await ask(live, q, "hola")
        await sim.wait_for(lambda s: len(s.connections) == 2, LIVENESS_S)
        await live.wait_ready(LIVENESS_S)
    first, second = sim.connections
    assert reply == "uno dos tres"
    assert first.closed_by == "client" and first.close_code == 1000   # we left after the reply
    assert first.closed_at is not None and first.closed_at <= second.opened_at  # closed first
    assert second.resumed_handle is not None


async def test_a_reply_that_does_not_fit_is_re_asked_on_the_resumed_session() -> None:
    scenario = Scenario(rules=[Rule(on="turn", connection=0, turn=1, actions=[
        GoAway(time_left=0.5), SimReply("corta ", parts=1), Sleep(2.0), SimReply("fin")])])
    async with LiveSimulator(scenario) as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe(maxsize=1000)
        await live.wait_ready(LIVENESS_S)
        await live.send_text("hola")
        reply = await _reply(q)
    assert sim.connections[0].closed_by == "server"          # timeLeft ran out mid-reply
    assert sim.connections[1].resumed_handle is not None
    assert reply.link_lost and reply.text.startswith("Has dicho: «hola»")   # not "corta ..."


async def test_a_stalled_socket_is_gone_before_the_resume_starts() -> None:
    scenario = Scenario(rules=[Rule(on="turn", connection=0, actions=[Stall()])])
    async with LiveSimulator(scenario) as sim, NetProxy("127.0.0.1", sim.port) as proxy, \
            running(via_proxy(sim, proxy, stall_timeout_s=1.0)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        reply = await ask(live, q, "¿hola?")
        log = [(what, n) for _, what, n in proxy.log if what == "client_end" or n > 1]
    assert "Has dicho" in reply
    # the stalled connection (1) was closed by the client before the resume (2) was opened;
    # connections in between are reachability probes, which open and close at once
    first_end = log.index(("client_end", 1))
    resume = next(i for i, e in enumerate(log) if e[0] == "open" and ("client_end", e[1])
                  not in log)
    assert first_end < resume


# --- 4. answers not duplicated or mixed -----------------------------------------------------


async def test_a_question_that_keeps_failing_is_given_up_after_three_sends() -> None:
    scenario = Scenario(rules=[Rule(on="turn", match="bucle", actions=[Drop()])])
    async with LiveSimulator(scenario) as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        await live.send_text("esto es un bucle")
        with pytest.raises(AnswerFailed, match="no answer after 3 tries"):
            await _reply(q)
        failed = live.status()
        reply = await ask(live, q, "¿y ahora?")
        after = live.status()
    sent = [m for _, m in sim.messages("clientContent") if m["clientContent"]["turnComplete"]]
    assert len(sent) == 4                                     # 3 sends of it, then the next
    assert failed["questions_failed"] == 1 and "3 tries" in failed["question_failed"]
    assert "Has dicho: «¿y ahora?»" in reply and after["question_failed"] is None
    assert "bucle" not in reply                               # not kept in the history


# --- 5. tool calls ---------------------------------------------------------------------------


async def test_tool_errors_are_bounded_and_say_whether_retrying_helps() -> None:
    r = ToolRegistry(1.0)
    r.register(Tool("lookup", "look up", {"type": "object", "properties": {
        "q": {"type": "string", "maxLength": 100}}, "additionalProperties": False},
        _echo))
    huge = "x" * 100_000
    bad = await r.call("lookup", {"q": huge})
    assert len(json.dumps(bad.response)) < 1000 and huge[:100] not in json.dumps(bad.response)
    assert bad.response["retryable"] is False and "corrected" in bad.response["advice"]
    assert (await r.call("lookup", "not an object")).response["retryable"] is False  # type: ignore[arg-type]


async def test_calls_without_an_id_or_with_unparseable_args_do_not_break_the_session(
        caplog: pytest.LogCaptureFixture) -> None:
    scenario = Scenario(rules=[Rule(on="turn", turn=1, actions=[
        ToolCall("echo", send_id=False, wait=False), ToolCall("echo", args="{no json", wait=False),
        ToolCall("echo", id="fc-ok"), SimReply("hecho")])])
    async with LiveSimulator(scenario) as sim, running(
            settings_for(sim), registry(echo=_echo)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        reply = await ask(live, q, "hola")
        status = live.status()
    responses = [fr for _, m in sim.messages("toolResponse")
                 for fr in m["toolResponse"]["functionResponses"]]
    assert [r["id"] for r in responses] == ["fc-ok"]          # the answerable one, once
    assert reply == "hecho" and len(sim.connections) == 1     # the connection survived
    assert status["messages_unparseable"] == 1
    assert status["tool_calls"]["error"] == 1                 # the one without an id
    assert any("without an id" in r.message for r in caplog.records)
    assert not any("Task exception was never retrieved" in r.message for r in caplog.records)


async def test_on_vertex_a_call_without_an_id_is_answered_by_name() -> None:
    scenario = Scenario(rules=[Rule(on="turn", turn=1, actions=[
        ToolCall("echo", send_id=False), SimReply("hecho")])])
    async with LiveSimulator(scenario) as sim:
        s = settings_for(sim, gemini={"vertex": True})
        async with running(s, registry(echo=_echo)) as live:
            q = live.bus.subscribe()
            await live.wait_ready(LIVENESS_S)
            events = await _ask_events(live, q, "hola")
    responses = [fr for _, m in sim.messages("toolResponse")
                 for fr in m["toolResponse"]["functionResponses"]]
    assert [(r.get("id"), r["name"]) for r in responses] == [(None, "echo")]
    assert sim.errors == []
    assert [e.ok for e in events if isinstance(e, ToolCallFinished)] == [True]


# --- 6. shutdown ----------------------------------------------------------------------------


async def test_close_interrupts_a_connect_in_progress() -> None:
    scenario = Scenario(rules=[Rule(on="setup", actions=[Sleep(600.0)])])   # no setupComplete
    async with LiveSimulator(scenario) as sim:
        live = LiveSession(settings_for(sim, session={"connect_timeout_s": 120.0}),
                           ToolRegistry(1.0))
        task = asyncio.create_task(live.run())
        await sim.wait_for(lambda s: len(s.connections) == 1, LIVENESS_S)   # connect under way
        started = time.monotonic()
        await live.close()
        await asyncio.wait_for(task, LIVENESS_S)   # not the 120 s connect timeout
        took = time.monotonic() - started
    assert took < LIVENESS_S and live.state == "closed"


# --- issue 13 point 8: the handle survives a restart ------------------------------------------


async def test_the_resumption_handle_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "live-handle.json"
    async with LiveSimulator() as sim:
        async with running(settings_for(sim), handle_file=path) as live:
            q = live.bus.subscribe()
            await live.wait_ready(LIVENESS_S)
            await ask(live, q, "Me llamo Ana")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        stored = json.loads(path.read_text())
        assert stored["model"] == "gemini-3.8-live" and stored["expires_at"] > time.time()
        async with running(settings_for(sim), handle_file=path) as live:   # "after a crash"
            q = live.bus.subscribe()
            await live.wait_ready(LIVENESS_S)
            reply = await ask(live, q, "¿Cómo me llamo?")
    assert sim.connections[1].resumed_handle == stored["handle"]
    assert "Te llamas Ana" in reply


async def test_an_expired_or_refused_stored_handle_is_not_used_and_is_removed(
        tmp_path: Path) -> None:
    path = tmp_path / "live-handle.json"
    path.write_text(json.dumps({"handle": "old", "model": "gemini-3.8-live",
                                "issued_at": time.time() - 9000,
                                "expires_at": time.time() - 1800}))
    async with LiveSimulator() as sim:
        async with running(settings_for(sim), handle_file=path) as live:
            await live.wait_ready(LIVENESS_S)
        assert sim.connections[0].resumed_handle is None       # expired: not tried
        path.write_text(json.dumps({"handle": "unknown", "model": "gemini-3.8-live",
                                    "issued_at": time.time(),
                                    "expires_at": time.time() + 3600}))
        async with running(settings_for(sim), handle_file=path) as live:
            await live.wait_ready(LIVENESS_S)
        handle_after_refusal = json.loads(path.read_text())["handle"]   # flushed at close
    assert sim.connections[1].setup["sessionResumption"]["handle"] == "unknown"   # tried
    assert sim.connections[1].close_code == 1008               # refused...
    assert sim.connections[2].resumed_handle is None           # ...so a fresh session
    assert handle_after_refusal != "unknown"                   # and its handle stored


# --- helpers ---------------------------------------------------------------------------------


async def _echo(args: dict[str, Any]) -> dict[str, Any]:
    return {"echo": args}


async def _drain(q: asyncio.Queue[Any]) -> list[SessionChanged]:
    return [e for e in (q.get_nowait() for _ in range(q.qsize()))
            if isinstance(e, SessionChanged)]


async def until_state(q: asyncio.Queue[Any], state: str) -> None:
    async with asyncio.timeout(LIVENESS_S):
        while not ((ev := await q.get()) and isinstance(ev, SessionChanged)
                   and ev.state == state):
            pass


async def _reply(q: asyncio.Queue[Any]) -> Reply:
    async for item in stream_reply(q, LIVENESS_S * 4):
        if isinstance(item, Reply):
            return item
    raise AssertionError("stream_reply ended without a Reply")


async def _ask_events(live: LiveSession, q: asyncio.Queue[Any], text: str) -> list[Any]:
    await live.send_text(text)
    return await until(q, TurnComplete)



async def test_a_question_with_non_utf8_text_is_answered_once() -> None:
    """Text read with surrogateescape reaches the server; it answers, nothing is re-sent."""
    async with LiveSimulator() as sim, running(settings_for(sim)) as live:
        q = live.bus.subscribe()
        await live.wait_ready(LIVENESS_S)
        reply = await ask(live, q, b"caf\xe9 \xff".decode("utf-8", "surrogateescape"))
    assert "caf\ufffd \ufffd" in reply
    assert len(sim.messages("clientContent")) == 1 and sim.errors == []
