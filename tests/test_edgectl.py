"""edgectl against a real control socket: output, exit codes, streaming, errors."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edged import edgectl
from edged.config import ControlSettings
from edged.control.protocol import ControlError
from edged.control.server import ControlServer, Final, Method, Peer

DEGRADED = {
    "schema_version": 1, "health": "degraded",
    "problems": ["capture: device not found", "camera: picamera2 is not installed"],
    "state": "idle", "muted": True, "pid": 42, "uptime_s": 12.5,
    "session": {"state": "ready", "detail": "new session", "reconnects": 2,
                "last_close_code": 1011, "setup": {"model": "gemini-3.8-live",
                                                   "modality": "AUDIO",
                                                   "turn_detection": "local"}},
    "audio": {"capture": {"state": "retrying", "device": "mic", "error": "device not found"},
              "playback": {"state": "running", "device": "spk", "error": None},
              "vad": {"gate": "idle", "gated_ratio": 0.2}},
    "camera": {"state": "unavailable", "detail": "picamera2 is not installed"},
    "index": {"generation": 4, "documents": 10, "chunks": 80, "db_bytes": 1234,
              "last_sync": {"status": "ok", "time": "2026-11-21T02:31:00+00:00"}},
    "config": {"version": "abcd1234", "loaded_at_epoch": 1.7e9,
               "last_reload": {"ok": True, "restart_needed": []}},
    "feedback": {"good": 3, "bad": 1},
    "turns": [{"kind": "voice", "ts": 1.7e9, "latency_s": 0.84, "user": "¿qué hora es?",
               "model": "Son las tres."}],
}


async def _serve(path: Path, status: dict[str, Any]) -> ControlServer:
    async def st(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return status

    async def health(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"health": status["health"], "problems": status.get("problems", [])}

    async def ask(p: dict[str, Any], peer: Peer) -> AsyncIterator[Any]:
        yield {"text": "Hola, "}
        yield {"tool": "search_knowledge"}
        yield {"text": "qué tal."}
        yield Final({"user": p["text"], "model": "Hola, qué tal.", "latency_s": 0.4})

    async def feedback(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return {"rated_turn": True, "counts": {"good": 4, "bad": 1}, "echo": p}

    async def refuse(p: dict[str, Any], peer: Peer) -> None:
        raise ControlError("forbidden", "not for you")

    srv = ControlServer(ControlSettings(socket_path=path, group="root"), {
        "status": Method(st), "health": Method(health),
        "ask": Method(ask, streaming=True), "feedback": Method(feedback),
        "mute": Method(refuse)})
    await srv.start()
    return srv


async def _run(*argv: str) -> int:
    return await asyncio.to_thread(edgectl.main, list(argv))


async def test_status_degraded_text_and_json(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.sock"
    srv = await _serve(path, DEGRADED)
    try:
        assert await _run("--socket", str(path), "status") == 1
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert lines[0] == ("edged: degraded (capture: device not found; "
                            "camera: picamera2 is not installed)")
        assert "\033[" not in out
        text = "\n".join(lines[1:])
        assert "microphone muted" in text and "reconnects 2 (last close 1011)" in text
        assert "retrying · device mic · error: device not found" in text
        assert "gen 4 · documents 10 · chunks 80" in text and "last sync ok" in text
        assert "good 3 · bad 1" in text and "0.84s" in text and "'¿qué hora es?'" in text

        assert await _run("--socket", str(path), "status", "--json") == 1
        doc = json.loads(capsys.readouterr().out)
        assert doc == DEGRADED

        assert await _run("--socket", str(path), "health") == 1
        assert capsys.readouterr().out.startswith("edged: degraded (capture: device not found")
    finally:
        await srv.close()


async def test_healthy_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.sock"
    srv = await _serve(path, {**DEGRADED, "health": "healthy", "problems": []})
    try:
        assert await _run("--socket", str(path), "--json", "health") == 0
        assert json.loads(capsys.readouterr().out) == {"health": "healthy", "problems": []}
        assert await _run("--socket", str(path), "status") == 0
        assert capsys.readouterr().out.splitlines()[0] == "edged: healthy"
    finally:
        await srv.close()


async def test_ask_streams_feedback_and_remote_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.sock"
    srv = await _serve(path, DEGRADED)
    try:
        assert await _run("--socket", str(path), "ask", "¿qué", "tal?") == 0
        cap = capsys.readouterr()
        assert cap.out == "Hola, qué tal.\n"
        assert "[tool search_knowledge]" in cap.err and "0.40s" in cap.err
        assert await _run("--socket", str(path), "--json", "feedback", "bad", "muy", "lento") == 0
        assert json.loads(capsys.readouterr().out)["echo"] == {"rating": "bad",
                                                               "note": "muy lento"}
        assert await _run("--socket", str(path), "mute") == 4     # forbidden
        assert "not for you" in capsys.readouterr().err
        assert await _run("--socket", str(path), "reload") == 1   # unknown to this server
        assert "unknown method 'reload'" in capsys.readouterr().err
    finally:
        await srv.close()


async def test_not_running_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await _run("--socket", str(tmp_path / "absent.sock"), "status") == 3
    assert "edged: not running" in capsys.readouterr().err
    dead = tmp_path / "dead.sock"          # a socket file nobody listens on: ECONNREFUSED
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()
    assert await _run("--socket", str(dead), "status", "--json") == 3
