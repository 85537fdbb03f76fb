"""Simulator scenarios: the default demo assistant, scenario files, the CLI, turn queuing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from google import genai
from google.genai import errors, types

from edged_testing.sim import (
    CancelToolCalls,
    Close,
    LiveSimulator,
    Reply,
    Rule,
    Scenario,
    Sleep,
    ToolCall,
    ToolCalls,
)

MODEL = "gemini-3.8-live"
SEARCH = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="search_knowledge", description="search the on-device knowledge base",
    parameters_json_schema={"type": "object", "properties": {"query": {"type": "string"}}})])
RESULTS = {"results": [{"title": "Guía de gobernanza MLOps", "source": "docs/mlops.md",
                        "heading": "Aprobación", "text": "Todo modelo necesita revisión.",
                        "score": 0.9}]}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def client_for(base_url: str, ctx: ssl.SSLContext, key: str = "k") -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=base_url, async_client_args={"ssl": ctx}))


async def read_until(session: object, stop: object) -> list[types.LiveServerMessage]:
    out: list[types.LiveServerMessage] = []
    while True:
        async for m in session.receive():  # type: ignore[attr-defined]
            out.append(m)
            if stop(m):  # type: ignore[operator]
                return out


def turn_done(m: types.LiveServerMessage) -> bool:
    return bool(m.server_content and m.server_content.turn_complete)


async def test_default_assistant_cites_search_result_for_text_turn() -> None:
    async with LiveSimulator(Scenario.default()) as sim:
        sim.scenario.speed = 50
        config = types.LiveConnectConfig(response_modalities=["TEXT"], tools=[SEARCH])
        client = client_for(sim.base_url, sim.client_ssl_context())
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            q = "¿Qué dice la política de gobernanza de modelos?"
            await session.send_client_content(turns=types.Content(
                role="user", parts=[types.Part(text=q)]))
            msgs = await read_until(session, lambda m: m.tool_call)
            [call] = msgs[-1].tool_call.function_calls
            assert (call.name, call.args) == ("search_knowledge", {"query": q})
            await session.send_tool_response(function_responses=[types.FunctionResponse(
                id=call.id, name=call.name, response=RESULTS)])
            text = "".join(m.text for m in await read_until(session, turn_done) if m.text)
    assert "«Guía de gobernanza MLOps» (docs/mlops.md)" in text


async def test_default_assistant_speaks_audio_turn_with_scripted_transcript() -> None:
    scenario = Scenario.default(transcripts=["Explícame la gobernanza de MLOps"])
    scenario.speed = 50
    config = types.LiveConnectConfig(
        response_modalities=["AUDIO"], tools=[SEARCH],
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)))
    async with LiveSimulator(scenario) as sim:
        client = client_for(sim.base_url, sim.client_ssl_context())
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            await session.send_realtime_input(activity_start=types.ActivityStart())
            await session.send_realtime_input(audio=types.Blob(
                data=bytes(3200), mime_type="audio/pcm;rate=16000"))
            await session.send_realtime_input(activity_end=types.ActivityEnd())
            msgs = await read_until(session, lambda m: m.tool_call)
            call = msgs[-1].tool_call.function_calls[0]
            await session.send_tool_response(function_responses=[types.FunctionResponse(
                id=call.id, name=call.name, response={"output": json.dumps(RESULTS)})])
            msgs += await read_until(session, turn_done)
    heard = "".join(m.server_content.input_transcription.text for m in msgs
                    if m.server_content and m.server_content.input_transcription)
    said = "".join(m.server_content.output_transcription.text for m in msgs
                   if m.server_content and m.server_content.output_transcription)
    assert heard == "Explícame la gobernanza de MLOps"
    assert "Guía de gobernanza MLOps" in said
    assert sum(len(m.data) for m in msgs if m.data) > 24000


async def test_no_interruption_queues_turns_and_cancel_tool_calls() -> None:
    scenario = Scenario(speed=50, rules=[
        Rule(turn=1, actions=[ToolCall("slow", wait=False), Sleep(0.2), CancelToolCalls(),
                              Reply("uno")]),
        Rule(turn=2, actions=[Reply("dos")]),
    ])
    config = types.LiveConnectConfig(
        response_modalities=["TEXT"], realtime_input_config=types.RealtimeInputConfig(
            activity_handling=types.ActivityHandling.NO_INTERRUPTION))
    async with LiveSimulator(scenario) as sim:
        client = client_for(sim.base_url, sim.client_ssl_context())
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            await session.send_client_content(turns=types.Content(
                role="user", parts=[types.Part(text="a")]))
            await session.send_client_content(turns=types.Content(
                role="user", parts=[types.Part(text="b")]))
            msgs = await read_until(session, turn_done)
            msgs += await read_until(session, turn_done)
            # A late answer to a cancelled call is tolerated, not an error.
            call = next(m for m in msgs if m.tool_call).tool_call.function_calls[0]
            await session.send_tool_response(function_responses=[types.FunctionResponse(
                id=call.id, name="slow", response={"ok": True})])
            await asyncio.sleep(0.1)
    cancelled = [m.tool_call_cancellation.ids for m in msgs if m.tool_call_cancellation]
    assert cancelled == [[call.id]]
    assert [m.text for m in msgs if m.text] == ["uno", "dos"]
    assert sim.errors == [] and not any(m.server_content and m.server_content.interrupted
                                        for m in msgs)


async def test_history_seeding_does_not_generate_and_counts_in_memory() -> None:
    config = types.LiveConnectConfig(
        response_modalities=["TEXT"],
        history_config=types.HistoryConfig(initial_history_in_client_content=True))
    async with LiveSimulator(Scenario(speed=50)) as sim:
        client = client_for(sim.base_url, sim.client_ssl_context())
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            await session.send_client_content(turns=[
                types.Content(role="user", parts=[types.Part(text="Me llamo Luis")]),
                types.Content(role="model", parts=[types.Part(text="Hola Luis")])])
            await session.send_realtime_input(text="¿Quién soy?")
            text = "".join(m.text for m in await read_until(session, turn_done) if m.text)
    assert "Turnos anteriores que recuerdo: 1. Te llamas Luis." in text
    assert len(sim.sessions[sim.connections[0].session_id].history) == 4


def test_scenario_files_load_and_bad_keys_are_named(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('speed = 8.0\ntranscripts = ["hola"]\n'
                    '[[rules]]\non = "turn"\nmatch = "tiempo"\nonce = true\n'
                    'actions = [{do = "tool_call", name = "w", args = {c = "{user_text}"}},\n'
                    '  {do = "reply", text = "{tool_result}"}, {do = "close", code = 1011}]\n')
    s = Scenario.load(toml)
    assert s.speed == 8.0 and s.transcripts == ["hola"]
    assert s.rules[0].actions == [ToolCall("w", {"c": "{user_text}"}), Reply("{tool_result}"),
                                  Close(1011)]
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"rules": [{"on": "ready", "actions": [
        {"do": "go_away"}, {"do": "tool_calls", "calls": [{"name": "a"}, {"name": "b"}]}]}]}))
    loaded = Scenario.load(js).rules[0]
    assert loaded.on == "ready"
    assert loaded.actions[1] == ToolCalls([ToolCall("a"), ToolCall("b")])
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nactions = [{do = "reply", txt = "x"}]\n')
    with pytest.raises(ValueError, match=r"bad.toml: rules\[0\].actions\[0\]: unknown key.*txt"):
        Scenario.load(bad)
    bad.write_text('[[rules]]\nactions = [{do = "shout"}]\n')
    with pytest.raises(ValueError, match="'do' must be one of"):
        Scenario.load(bad)


def test_example_scenario_files_load() -> None:
    files = sorted((Path(__file__).parent.parent / "config").glob("sim-*.toml"))
    assert files
    for f in files:
        assert Scenario.load(f).rules


async def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[rules]]\nactions = [{do = "reply", text = "desde el CLI"}]\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edged_testing.sim", "--port", "0", "--cert-dir",
        str(tmp_path / "certs"),
        "--scenario", str(scenario), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
                 for _ in range(8)]
        base_url = lines[0].split()[-1]
        ca = lines[1].split()[-1]
        assert f'base_url = "{base_url}"' in lines[4] and f'ca_file = "{ca}"' in lines[5]
        assert "GEMINI_API_KEY=test" in lines[6]
        assert f"SSL_CERT_FILE={ca}" in lines[7]
        client = client_for(base_url, ssl.create_default_context(cafile=ca), "cli-secret-key")
        config = types.LiveConnectConfig(response_modalities=["TEXT"])
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            await session.send_client_content(turns=types.Content(
                role="user", parts=[types.Part(text="hola")]))
            text = "".join(m.text for m in await read_until(session, turn_done) if m.text)
        assert text == "desde el CLI"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert b"connection 0 opened" in err and b"cli-secret-key" not in err


async def test_ready_rule_per_connection() -> None:
    scenario = Scenario(rules=[Rule(on="ready", connection=0, actions=[Close(1011, "first")])])
    async with LiveSimulator(scenario) as sim:
        client = client_for(sim.base_url, sim.client_ssl_context())
        config = types.LiveConnectConfig(response_modalities=["TEXT"])
        with pytest.raises(errors.APIError) as e:
            async with client.aio.live.connect(model=MODEL, config=config) as session:
                await read_until(session, turn_done)
        assert (e.value.code, e.value.details) == (1011, "first")
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            await session.send_client_content(turns=types.Content(
                role="user", parts=[types.Part(text="hola")]))
            assert await read_until(session, turn_done)


async def test_ssl_cert_file_env_is_enough_to_trust_the_simulator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with LiveSimulator(Scenario(speed=50)) as sim:
        monkeypatch.setenv("SSL_CERT_FILE", str(sim.ca_file))
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=sim.base_url))
        config = types.LiveConnectConfig(response_modalities=["TEXT"])
        async with client.aio.live.connect(model=MODEL, config=config) as session:
            await session.send_realtime_input(text="hola")
            text = "".join(m.text for m in await read_until(session, turn_done) if m.text)
    assert text.startswith("Has dicho: «hola»")
