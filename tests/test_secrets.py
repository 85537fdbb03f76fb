"""The API key never leaves edged: planted in a server's close reason and in an exception, it is
found in no output - status, status --json, events, STATUS=, errors, logs, metrics, feedback.

The daemon test runs the real `edged run` against the simulator; the unit tests pin each
place where outside text enters (close reasons, tool errors, component details) and each
output (the control socket's encoder, sd_notify, metric labels).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from test_daemon import API_KEY, control_call, start_daemon, stop

from edged.control import protocol
from edged.daemon.supervisor import Supervisor
from edged.events import EventBus, Reconnecting, ToolCallFinished
from edged.live.policy import classify
from edged.metrics import Metrics
from edged.notify import Notifier
from edged.redact import REDACTED, describe_error, redact, set_secrets
from edged.tools import Tool, ToolError, ToolRegistry
from edged_testing.sim import Close, LiveSimulator, Reply, Rule, Scenario

OTHER_GOOGLE_KEY = "AIza" + "B" * 35          # shaped like a key, but never registered


@pytest.fixture
def key() -> Any:
    set_secrets([API_KEY])
    yield API_KEY
    set_secrets([])


async def test_a_planted_key_reaches_no_output_of_the_daemon(
        tmp_path: Path, index_dirs: Path) -> None:
    scenario = Scenario(language="es", speed=20.0, rules=[
        Rule(match="clave", once=True,
             actions=[Close(1011, f"upstream said: invalid key {API_KEY}")]),
        Rule(match="clave", actions=[Reply(text="Ahora sí te contesto.")])])
    async with LiveSimulator(scenario) as sim:
        d, alsa = await start_daemon(tmp_path, sim, index_dirs)
        try:
            await d.notify.wait_for(lambda m: "READY=1" in m.splitlines())
            await d.wait_status(lambda s: s["session"]["state"] == "ready")
            events_r, events_w = await asyncio.open_unix_connection(str(d.socket_path))
            events_w.write(b'{"v":1,"id":"ev","method":"events"}\n')
            assert b"hello" in await asyncio.wait_for(events_r.readline(), 30)

            # 1. the key in a close reason: the question is answered after the reconnect
            rc, out, err = await d.edgectl("ask", "¿cuál es la clave?")
            assert rc == 0 and "contesto" in out, (out, err)
            # 2. the key in an exception: a component fails with it
            reply = await control_call(d.socket_path, "debug.fail",
                                       {"message": f"library error for key={API_KEY}"})
            assert reply["ok"] is True
            st = await d.wait_status(lambda s: any(p.startswith("debug: RuntimeError")
                                                   for p in s["problems"]))
            # 3. ... and in an error reply
            bad = await control_call(d.socket_path, "nope." + API_KEY, {})
            assert bad["ok"] is False and REDACTED in bad["error"]["message"]

            assert st["session"]["last_close_reason"] is None or \
                API_KEY not in st["session"]["last_close_reason"]
            rc, status_text, _ = await d.edgectl("status")
            _, status_json, _ = await d.edgectl("status", "--json")
            _, metrics, _ = await d.edgectl("metrics")
            rc_fb, _, _ = await d.edgectl("feedback", "bad", "nota")
            assert rc_fb == 0
            await d.notify.wait_for(lambda m: "STATUS=" in m and "debug" in m)
            # the events stream saw the reconnect and the failing component
            seen: list[dict[str, Any]] = []
            while not any(e.get("type") == "component" and e.get("name") == "debug"
                          for e in seen):
                seen.append(json.loads(await asyncio.wait_for(events_r.readline(), 30))
                            ["result"])
            events_w.close()
            reconnects = [e for e in seen if e["type"] == "reconnect"]
            assert reconnects and f"invalid key {REDACTED}" in reconnects[0]["reason"]
            assert await stop(d, alsa) == 0
        finally:
            await stop(d, alsa)
    outputs = {
        "status": status_text, "status --json": status_json, "metrics": metrics,
        "events": json.dumps(seen, ensure_ascii=False),
        "sd_notify": "\n".join(d.notify.lines()),
        "logs": d.stderr_file.read_text(),
        "feedback": (d.state_dir / "feedback.jsonl").read_text(),
        "textfile": (tmp_path / "prom" / "edged.prom").read_text(),
    }
    for name, text in outputs.items():
        assert API_KEY not in text, f"the API key leaked into {name}"
    # ... and the redacted form is there, so the outputs were really looked at
    assert f"key={REDACTED}" in outputs["status --json"]
    assert f"key={REDACTED}" in outputs["sd_notify"]
    assert f"invalid key {REDACTED}" in outputs["logs"]
    assert "Traceback" in outputs["logs"]          # the failing component's, redacted


def test_redact_registered_and_key_shaped(key: str) -> None:
    assert redact(f"a {key} b {key}") == f"a {REDACTED} b {REDACTED}"
    assert redact(f"url?key={OTHER_GOOGLE_KEY}&x") == f"url?key={REDACTED}&x"
    assert redact("nothing secret") == "nothing secret"
    set_secrets(["new-key-after-rotation"])
    assert redact(f"{key} new-key-after-rotation") == f"{key} {REDACTED}"


def test_sources_redact_close_reasons_errors_and_details(key: str) -> None:
    import websockets
    from websockets.frames import Close as CloseFrame

    closed = websockets.ConnectionClosedError(CloseFrame(1011, f"bad key {key}"), None)
    assert classify(closed, during_setup=False).reason == f"bad key {REDACTED}"
    assert describe_error(ValueError(f"x {key}")) == f"ValueError: x {REDACTED}"
    bus = EventBus()
    sup = Supervisor(bus)
    q = bus.subscribe()
    sup.set("camera", "degraded", f"detail with {key}")
    assert key not in sup.health["camera"].detail
    assert key not in json.dumps(q.get_nowait().to_json())


async def test_tool_error_text_is_redacted(key: str) -> None:
    async def leaky(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError(f"HTTP 400 for https://x/embed?key={key}")

    async def refusing(args: dict[str, Any]) -> dict[str, Any]:
        raise ToolError(f"rejected {key}")

    reg = ToolRegistry(timeout_s=5)
    schema = {"type": "object"}
    reg.register(Tool("leaky", "d", schema, leaky))
    reg.register(Tool("refusing", "d", schema, refusing))
    for name in ("leaky", "refusing"):
        out = await reg.call(name, {})
        assert not out.ok and key not in json.dumps(out.response) and REDACTED in out.error


def test_outputs_redact_on_the_way_out(key: str, tmp_path: Path) -> None:
    line = protocol.reply(1, {"session": {"detail": f"close 1011: {key}"}})
    assert key.encode() not in line and REDACTED.encode() in line
    assert key.encode() not in protocol.error(1, "internal", f"boom {key}")

    addr = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(addr)
        n = Notifier({"NOTIFY_SOCKET": addr})
        n.status(f"degraded; session: backoff (1011: {key})")
        n.close()
        assert rx.recv(4096).decode() == f"STATUS=degraded; session: backoff (1011: {REDACTED})"

    m = Metrics()
    m.on_event(ToolCallFinished("1", f"tool_{key}", False, 0.1))
    m.on_event(Reconnecting(key, "r", 0.0, False))
    assert key not in m.render()
