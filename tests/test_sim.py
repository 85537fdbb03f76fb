"""The Live simulator against the real google-genai SDK: wire rules and scenario behaviour."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from google import genai
from google.genai import errors, types
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from edged_testing.sim import (
    Close,
    Drop,
    GoAway,
    LiveSimulator,
    Reply,
    Rule,
    Scenario,
    Stall,
    ToolCall,
    ToolCalls,
)

MODEL = "gemini-3.8-live"
API_KEY = "sim-test-key-never-stored"
TEXT = types.LiveConnectConfig(response_modalities=["TEXT"])


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def client_for(sim: LiveSimulator) -> genai.Client:
    return genai.Client(api_key=API_KEY, http_options=types.HttpOptions(
        base_url=sim.base_url, async_client_args={"ssl": sim.client_ssl_context()}))


async def one_turn(session: Any) -> list[types.LiveServerMessage]:
    return [m async for m in session.receive()]


async def read_until(session: Any, stop: Any) -> list[types.LiveServerMessage]:
    """Read across turn boundaries until ``stop(msg)`` is true for a message."""
    out: list[types.LiveServerMessage] = []
    while True:
        async for m in session.receive():
            out.append(m)
            if stop(m):
                return out


def user(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[LiveSimulator]:
    scenario = getattr(request, "param", None) or Scenario(speed=50)
    async with LiveSimulator(scenario) as s:
        yield s


async def test_handshake_records_normalised_wire(sim: LiveSimulator) -> None:
    pcm = bytes([0xFB, 0xFF, 0xFE, 0x3F] * 100)    # URL-safe base64 uses '-' and '_' here
    config = types.LiveConnectConfig(
        response_modalities=["TEXT"],
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(
                disabled=True, silence_duration_ms=100)),
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
            name="lookup", parameters_json_schema={
                "type": "object", "properties": {"file_name": {"type": "string"}}})])],
    )
    async with client_for(sim).aio.live.connect(model=MODEL, config=config) as session:
        await session.send_realtime_input(audio=types.Blob(data=pcm,
                                                           mime_type="audio/pcm;rate=16000"))
        await sim.wait_for(lambda s: len(s.messages("realtimeInput")) == 1, timeout=5)
    rec = sim.connections[0]
    assert "v1" in rec.path and rec.path.endswith("GenerativeService.BidiGenerateContent")
    assert rec.api_key_present and API_KEY not in repr(rec)
    aad = rec.setup["realtimeInputConfig"]["automaticActivityDetection"]
    assert aad == {"disabled": True, "silenceDurationMs": 100}
    decl = rec.setup["tools"][0]["functionDeclarations"][0]
    assert "file_name" in decl["parametersJsonSchema"]["properties"]  # user keys untouched
    [(idx, msg)] = sim.messages("realtimeInput")
    assert idx == 0
    assert msg["realtimeInput"]["audio"] == {"data": pcm, "mimeType": "audio/pcm;rate=16000"}
    assert rec.sent[0] == {"setupComplete": {}}


async def test_text_reply_streams_then_generation_then_turn_complete() -> None:
    scenario = Scenario(speed=50, rules=[
        Rule(match=r"capital", actions=[Reply("La capital es Madrid, {user_text}", parts=3)])])
    async with LiveSimulator(scenario) as sim, \
            client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        await session.send_client_content(turns=user("¿capital?"))
        msgs = await one_turn(session)
    texts = [m.text for m in msgs if m.text]
    assert len(texts) == 3 and "".join(texts) == "La capital es Madrid, ¿capital?"
    flags = [(m.server_content.generation_complete, m.server_content.turn_complete)
             for m in msgs if m.server_content and not m.text]
    assert flags == [(True, None), (None, True)]
    assert msgs[-1].usage_metadata.total_token_count > 0


async def test_audio_reply_is_24k_pcm_with_transcript(sim: LiveSimulator) -> None:
    config = types.LiveConnectConfig(response_modalities=["AUDIO"],
                                     output_audio_transcription=types.AudioTranscriptionConfig())
    async with client_for(sim).aio.live.connect(model=MODEL, config=config) as session:
        await session.send_client_content(turns=user("hola"))
        msgs = await one_turn(session)
    parts = [p.inline_data for m in msgs if m.server_content and m.server_content.model_turn
             for p in m.server_content.model_turn.parts]
    assert parts and {p.mime_type for p in parts} == {"audio/pcm;rate=24000"}
    pcm = b"".join(p.data for p in parts)
    assert len(pcm) % 2 == 0 and len(pcm) > 24000   # > 0.5 s of speech
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    assert np.sqrt(np.mean(x * x)) > 300              # not silence
    said = "".join(m.server_content.output_transcription.text for m in msgs
                   if m.server_content and m.server_content.output_transcription)
    assert said == "Has dicho: «hola». Turnos anteriores que recuerdo: 0."


TOOL_SCENARIO = Scenario(speed=50, rules=[Rule(match="docs", actions=[
    ToolCall("search_knowledge", {"query": "{user_text}"}),
    Reply("Según {tool_title}"),
])])


@pytest.mark.parametrize("sim", [TOOL_SCENARIO], indirect=True)
async def test_tool_call_round_trip_uses_result(sim: LiveSimulator) -> None:
    async with client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        await session.send_client_content(turns=user("busca docs"))
        msgs = await read_until(session, lambda m: m.tool_call)
        calls = [fc for m in msgs if m.tool_call for fc in m.tool_call.function_calls]
        assert [(c.name, c.args) for c in calls] == [("search_knowledge", {"query": "busca docs"})]
        await session.send_tool_response(function_responses=[types.FunctionResponse(
            id=calls[0].id, name=calls[0].name,
            response={"results": [{"title": "Guía MLOps", "source": "mlops.md"}]})])
        rest = await one_turn(session)
    assert "".join(m.text for m in msgs + rest if m.text) == "Según Guía MLOps"
    [(_, resp)] = sim.messages("toolResponse")
    assert resp["toolResponse"]["functionResponses"][0]["id"] == calls[0].id
    assert sim.errors == []


@pytest.mark.parametrize("sim", [TOOL_SCENARIO], indirect=True)
async def test_tool_response_with_wrong_id_fails_loudly(sim: LiveSimulator) -> None:
    async with client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        await session.send_client_content(turns=user("docs"))
        await read_until(session, lambda m: m.tool_call)
        await session.send_tool_response(function_responses=[types.FunctionResponse(
            id="function-call-bogus", name="search_knowledge", response={"results": []})])
        with pytest.raises(errors.APIError) as e:
            await one_turn(session)
    assert e.value.code == 1008 and "function-call-bogus" in e.value.details
    assert len(sim.errors) == 1 and "function-call-bogus" in sim.errors[0]


LOCAL_VAD = types.LiveConnectConfig(
    response_modalities=["AUDIO"],
    realtime_input_config=types.RealtimeInputConfig(
        automatic_activity_detection=types.AutomaticActivityDetection(disabled=True)))


async def test_barge_in_interrupts_without_generation_complete() -> None:
    scenario = Scenario(speed=1, rules=[Rule(actions=[Reply("largo", tone_seconds=20)])])
    async with LiveSimulator(scenario) as sim, \
            client_for(sim).aio.live.connect(model=MODEL, config=LOCAL_VAD) as session:
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        msgs = await read_until(session, lambda m: m.data)
        await session.send_realtime_input(activity_start=types.ActivityStart())
        msgs += await one_turn(session)
    events = [k for m in msgs if m.server_content
              for k in ("interrupted", "generation_complete", "turn_complete")
              if getattr(m.server_content, k)]
    assert events == ["interrupted", "turn_complete"]
    audio = sum(len(m.data) for m in msgs if m.data)
    assert 0 < audio < 20 * 24000 * 2 // 2       # stopped well before the end of the reply
    assert [c for c, m in sim.messages("realtimeInput")] == [0, 0, 0]


RESUMING = types.LiveConnectConfig(response_modalities=["TEXT"],
                                   session_resumption=types.SessionResumptionConfig())


def last_handle(msgs: list[types.LiveServerMessage]) -> str:
    return [m.session_resumption_update.new_handle for m in msgs
            if m.session_resumption_update and m.session_resumption_update.resumable][-1]


async def test_resumption_restores_history_and_rejects_unknown_handle(
        sim: LiveSimulator) -> None:
    client = client_for(sim)
    async with client.aio.live.connect(model=MODEL, config=RESUMING) as session:
        await session.send_client_content(turns=user("Hola, me llamo Ana"))
        msgs = await one_turn(session)
        msgs += await read_until(session, lambda m: m.session_resumption_update
                                 and m.session_resumption_update.resumable)
    states = [m.session_resumption_update.resumable for m in msgs if m.session_resumption_update]
    assert states == [True, False, True]          # initial handle, generating, after the turn
    resume = types.LiveConnectConfig(response_modalities=["TEXT"],
                                     session_resumption=types.SessionResumptionConfig(
                                         handle=last_handle(msgs)))
    async with client.aio.live.connect(model=MODEL, config=resume) as session:
        await session.send_client_content(turns=user("¿Cómo me llamo?"))
        text = "".join(m.text for m in await one_turn(session) if m.text)
    assert "Turnos anteriores que recuerdo: 1." in text and "Te llamas Ana" in text
    assert sim.connections[1].resumed_handle == last_handle(msgs)
    assert sim.connections[1].session_id == sim.connections[0].session_id
    bogus = types.LiveConnectConfig(session_resumption=types.SessionResumptionConfig(
        handle="not-a-handle"))
    with pytest.raises(errors.APIError) as e:
        async with client.aio.live.connect(model=MODEL, config=bogus):
            pass
    assert e.value.code == 1008 and "handle" in e.value.details


@pytest.mark.parametrize("sim", [Scenario(rules=[Rule(on="ready", actions=[
    GoAway(time_left=0.3, close_code=1000, close_reason="session over")])])], indirect=True)
async def test_go_away_then_close_after_time_left(sim: LiveSimulator) -> None:
    async with client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        msgs = await read_until(session, lambda m: m.go_away)
        assert msgs[-1].go_away.time_left == "0.3s"
        with pytest.raises(errors.APIError) as e:
            await one_turn(session)
    assert (e.value.code, e.value.details) == (1000, "session over")
    assert sim.connections[0].closed_by == "server"


@pytest.mark.parametrize(("code", "reason"), [
    (1007, "Request contains an invalid argument."),
    (1011, "Internal error occurred."),
    (1011, "x" * 200),
])
async def test_close_codes_surface_as_api_error(code: int, reason: str) -> None:
    scenario = Scenario(rules=[Rule(actions=[Close(code, reason)])])
    async with LiveSimulator(scenario) as sim, \
            client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        await session.send_client_content(turns=user("hola"))
        with pytest.raises(errors.APIError) as e:
            await one_turn(session)
    assert (e.value.code, e.value.details) == (code, reason[:123])


async def test_drop_surfaces_as_abnormal_closure() -> None:
    async with LiveSimulator(Scenario(rules=[Rule(actions=[Drop()])])) as sim, \
            client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        await session.send_client_content(turns=user("hola"))
        with pytest.raises(errors.APIError) as e:
            await one_turn(session)
    assert e.value.code == 1006
    assert sim.connections[0].closed_by == "drop"


async def test_unknown_model_is_rejected_at_connect(sim: LiveSimulator) -> None:
    with pytest.raises(errors.APIError) as e:
        async with client_for(sim).aio.live.connect(model="gemini-9-nope", config=TEXT):
            pass
    assert e.value.code == 1008
    assert e.value.details.startswith("models/gemini-9-nope is not found for API version v1,")
    assert len(e.value.details.encode()) <= 123


async def test_setup_rule_can_reject_with_1007() -> None:
    scenario = Scenario(rules=[Rule(on="setup", actions=[Close(1007, "API key not valid.")])])
    async with LiveSimulator(scenario) as sim:
        with pytest.raises(errors.APIError) as e:
            async with client_for(sim).aio.live.connect(model=MODEL, config=TEXT):
                pass
    assert (e.value.code, e.value.details) == (1007, "API key not valid.")


async def test_long_audio_reply_stays_under_one_mebibyte_per_frame() -> None:
    # chunk_ms asks for one 40 s message (1.9 MB raw); the simulator must split it anyway.
    scenario = Scenario(speed=1000, chunk_ms=40_000,
                        rules=[Rule(actions=[Reply("largo", tone_seconds=40)])])
    async with LiveSimulator(scenario) as sim, \
            client_for(sim).aio.live.connect(model=MODEL, config=types.LiveConnectConfig(
                response_modalities=["AUDIO"])) as session:
        await session.send_client_content(turns=user("habla"))
        msgs = await one_turn(session)
    assert sum(len(m.data) for m in msgs if m.data) == 40 * 24000 * 2
    assert 0 < sim.max_frame_bytes < 2**20


async def test_server_vad_ends_turn_on_silence() -> None:
    scenario = Scenario(speed=50, transcripts=["qué hora es"],
                        rules=[Rule(via="server_vad", match="hora", actions=[Reply("Las diez")])])
    config = types.LiveConnectConfig(
        response_modalities=["TEXT"], input_audio_transcription=types.AudioTranscriptionConfig(),
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(
                silence_duration_ms=300)))
    rate = 16000
    loud = (8000 * np.sin(2 * np.pi * 300 * np.arange(rate // 2) / rate)).astype("<i2").tobytes()
    quiet = bytes(rate // 10 * 2)   # 100 ms of silence per message
    async with LiveSimulator(scenario) as sim, \
            client_for(sim).aio.live.connect(model=MODEL, config=config) as session:
        for chunk in [loud, quiet, quiet]:
            await session.send_realtime_input(audio=types.Blob(
                data=chunk, mime_type=f"audio/pcm;rate={rate}"))
        # A message is recorded and fed to the VAD in one step, so once all three are
        # recorded the VAD has seen 200 ms of silence: still listening, nothing sent yet.
        await sim.wait_for(lambda s: len(s.messages("realtimeInput")) == 3, timeout=5)
        assert sim.connections[0].sent == [{"setupComplete": {}}]
        await session.send_realtime_input(audio=types.Blob(
            data=quiet, mime_type=f"audio/pcm;rate={rate}"))
        msgs = await one_turn(session)
    heard = "".join(m.server_content.input_transcription.text for m in msgs
                    if m.server_content and m.server_content.input_transcription)
    assert heard == "qué hora es"
    assert "".join(m.text for m in msgs if m.text) == "Las diez"


@pytest.mark.parametrize("sim", [Scenario(rules=[Rule(on="ready", actions=[Stall()])])],
                         indirect=True)
async def test_stall_stops_answering_pings(sim: LiveSimulator) -> None:
    url = sim.base_url.replace("https", "wss") + \
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    async with ws_connect(url, ssl=sim.client_ssl_context(), ping_interval=0.2,
                          ping_timeout=0.4, close_timeout=0.5, proxy=None) as ws:
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        with pytest.raises(ConnectionClosed) as e:
            await asyncio.wait_for(ws.recv(), timeout=10)
    assert e.value.sent is not None and e.value.sent.code == 1011
    assert e.value.sent.reason == "keepalive ping timeout" and e.value.rcvd is None


async def test_unknown_path_gets_404(sim: LiveSimulator) -> None:
    with pytest.raises(InvalidStatus) as e:
        async with ws_connect(sim.base_url.replace("https", "wss") + "/ws/other",
                              ssl=sim.client_ssl_context(), proxy=None):
            pass
    assert e.value.response.status_code == 404


async def test_vertex_path_and_standard_base64_accepted(sim: LiveSimulator) -> None:
    url = sim.base_url.replace("https", "wss") + \
        "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
    async with ws_connect(url, ssl=sim.client_ssl_context(), proxy=None) as ws:
        await ws.send(json.dumps({"setup": {"model": f"publishers/google/models/{MODEL}"}}))
        assert isinstance(await ws.recv(), bytes)   # binary frames, like the real server
        await ws.send(json.dumps({"realtimeInput": {"mediaChunks": [
            {"data": "+/8=", "mimeType": "audio/pcm"}]}}))
        await ws.send(json.dumps({"client_content": {  # the deprecated send() spelling
            "turns": [{"role": "user", "parts": [{"text": "hola"}]}], "turn_complete": True}}))
        replies = []
        while not replies or "turnComplete" not in replies[-1].get("serverContent", {}):
            replies.append(json.loads(await ws.recv()))
    assert {k for r in replies for k in r} <= {"serverContent", "usageMetadata"}
    [(_, m)] = sim.messages("realtimeInput")
    assert m["realtimeInput"]["mediaChunks"][0]["data"] == b"\xfb\xff"
    assert not sim.connections[0].api_key_present


@pytest.mark.parametrize("sim", [Scenario(tool_timeout=0.3, rules=[Rule(actions=[
    ToolCall("search_knowledge")])])], indirect=True)
async def test_missing_tool_response_fails_loudly(sim: LiveSimulator) -> None:
    async with client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        await session.send_client_content(turns=user("hola"))
        with pytest.raises(errors.APIError) as e:
            await read_until(session, lambda m: False)
    assert e.value.code == 1008 and "no toolResponse" in e.value.details
    assert len(sim.errors) == 1 and "search_knowledge" in sim.errors[0]


async def test_inject_runs_actions_on_open_connection(sim: LiveSimulator) -> None:
    with pytest.raises(LookupError):
        sim.inject(Drop())
    async with client_for(sim).aio.live.connect(model=MODEL, config=RESUMING) as session:
        await read_until(session, lambda m: m.session_resumption_update)
        sim.inject(GoAway(time_left=0.1, close_code=1011, close_reason="Deadline expired"))
        with pytest.raises(errors.APIError) as e:
            await read_until(session, lambda m: False)
    assert (e.value.code, e.value.details) == (1011, "Deadline expired")
    resume = types.LiveConnectConfig(
        session_resumption=types.SessionResumptionConfig(handle=sim.connections[0].sent[1][
            "sessionResumptionUpdate"]["newHandle"]))
    with pytest.raises(errors.APIError) as e:   # the model of a session cannot change
        async with client_for(sim).aio.live.connect(model="gemini-3.1-flash-live-preview",
                                                    config=resume):
            pass
    assert e.value.code == 1007 and "model" in e.value.details


@pytest.mark.parametrize("sim", [Scenario(speed=50, rules=[Rule(actions=[ToolCalls([
    ToolCall("a"), ToolCall("b")]), Reply("{tool_result}")])])], indirect=True)
async def test_parallel_tool_calls_need_every_response(sim: LiveSimulator) -> None:
    async with client_for(sim).aio.live.connect(model=MODEL, config=TEXT) as session:
        await session.send_client_content(turns=user("hola"))
        msgs = await read_until(session, lambda m: m.tool_call)
        calls = msgs[-1].tool_call.function_calls
        assert [c.name for c in calls] == ["a", "b"] and calls[0].id != calls[1].id
        await session.send_tool_response(function_responses=[
            types.FunctionResponse(id=c.id, name=c.name, response={"r": c.name})
            for c in reversed(calls)])
        text = "".join(m.text for m in await one_turn(session) if m.text)
    assert json.loads(text) == {"r": "b"}
    assert sim.errors == []


def test_certificates_are_reused_while_valid(tmp_path: Any) -> None:
    """A second simulator start reuses the CA (clients keep trusting it) instead of crashing."""
    from edged_testing.sim import wire

    first = wire.ensure_certs(tmp_path)
    pem = first[0].read_bytes()
    assert wire.ensure_certs(tmp_path) == first and first[0].read_bytes() == pem


@pytest.mark.parametrize("path, body, headers, code", [
    ("/v1beta/models/m:embedContent", b'{"content": {"parts": [{"text": "hola"}]}}', {}, 403),
    ("/v1beta/models/m:embedContent", b"{not json", {"x-goog-api-key": "k"}, 400),
    ("/v1beta/models/m:batchEmbedContents", b'{"requests": []}', {"x-goog-api-key": "k"}, 400),
    ("/v1beta/models/m:generateContent", b"{}", {"x-goog-api-key": "k"}, 404),
])
async def test_rest_side_refuses_bad_requests_like_google(path: str, body: bytes,
                                                          headers: dict[str, str],
                                                          code: int) -> None:
    """Bad REST calls get Google's error shape and status; the simulator keeps serving."""
    import urllib.error
    import urllib.request

    async with LiveSimulator() as sim:
        req = urllib.request.Request(sim.rest_base_url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as e:
            await asyncio.to_thread(urllib.request.urlopen, req,
                                    context=sim.client_ssl_context(), timeout=10)
        assert e.value.code == code
        assert json.loads(e.value.read())["error"]["code"] == code
        ok = urllib.request.Request(
            sim.rest_base_url + "/v1beta/models/m:embedContent", method="POST",
            data=b'{"content": {"parts": [{"text": "hola"}]}, "outputDimensionality": 8}',
            headers={"x-goog-api-key": "k"})
        with await asyncio.to_thread(urllib.request.urlopen, ok,
                                     context=sim.client_ssl_context(), timeout=10) as r:
            assert len(json.loads(r.read())["embedding"]["values"]) == 8
