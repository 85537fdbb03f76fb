"""``edged chat`` against the simulator: streamed text, per-turn reply WAVs, piped stdin, and a
conversation that survives a dropped connection between turns."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import wave
from pathlib import Path

import pytest
from test_live_session import LIVENESS_S, settings_for

from edged.chat import run_chat
from edged_testing.sim import Drop, LiveSimulator, Rule, Scenario, Sleep


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


async def test_text_chat_keeps_the_conversation_across_a_drop_between_turns(
        tmp_path: Path) -> None:
    scenario = Scenario(rules=[Rule(on="ready", connection=0, actions=[Sleep(1.0), Drop()])])
    async with LiveSimulator(scenario) as sim:
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        out = io.StringIO()
        chat = asyncio.create_task(run_chat(settings_for(sim), lines, out, tmp_path))
        lines.put_nowait("Me llamo Ana\n")
        await sim.wait_for(lambda _: out.getvalue().count("User> ") == 2, LIVENESS_S)
        await sim.wait_for(lambda s: len(s.connections) == 2, LIVENESS_S)   # dropped, resumed
        lines.put_nowait("¿Cómo me llamo?\n")
        await sim.wait_for(lambda _: out.getvalue().count("User> ") == 3, LIVENESS_S)
        lines.put_nowait("exit\n")
        rc = await asyncio.wait_for(chat, LIVENESS_S)
    text = out.getvalue()
    assert rc == 0
    assert "Model> Has dicho: «Me llamo Ana». Turnos anteriores que recuerdo: 0." in text
    assert "Model> Has dicho: «¿Cómo me llamo?». Turnos anteriores que recuerdo: 1. " \
           "Te llamas Ana." in text
    assert sim.connections[0].closed_by == "drop"
    assert sim.connections[1].resumed_handle is not None
    assert await asyncio.to_thread(os.listdir, tmp_path) == []   # TEXT writes no audio


async def test_audio_chat_writes_each_reply_as_24k_wav_and_prints_the_transcription(
        tmp_path: Path) -> None:
    async with LiveSimulator() as sim:
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        for line in ("Hola, soy Ana\n", "¿Quién soy?\n", None):
            lines.put_nowait(line)
        out = io.StringIO()
        settings = settings_for(sim, gemini={"response_modality": "AUDIO"})
        rc = await asyncio.wait_for(run_chat(settings, lines, out, tmp_path), LIVENESS_S)
    assert rc == 0
    text = out.getvalue()
    assert "Has dicho: «Hola, soy Ana»" in text and "Te llamas Ana" in text
    sent_turns = sim.reply_audio()
    assert len(sent_turns) == 2
    for n, sent in enumerate(sent_turns, 1):
        with wave.open(str(tmp_path / f"reply-{n:03d}.wav"), "rb") as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
            assert w.readframes(w.getnframes()) == sent and len(sent) > 0
        assert f"reply-{n:03d}.wav" in text


async def test_edged_chat_command_with_piped_stdin(tmp_path: Path) -> None:
    async with LiveSimulator() as sim:
        cfg = tmp_path / "edged.toml"
        cfg.write_text(f'[gemini]\nbase_url = "{sim.base_url}"\nca_file = "{sim.ca_file}"\n'
                       'api_key = "test-key"\n')
        env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edged", "chat", "--config", str(cfg),
            "--override", str(tmp_path / "none.toml"), "--modality", "TEXT",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        stdout, stderr = await asyncio.wait_for(
            proc.communicate("Me llamo Ana\n¿Cómo me llamo?\n".encode()), 60)
        setup = sim.connections[0].setup
    out = stdout.decode()
    assert proc.returncode == 0, stderr.decode()
    assert "User> Me llamo Ana\nModel> Has dicho: «Me llamo Ana»" in out
    assert "Te llamas Ana" in out
    # the same tools as the daemon: the system instruction asks the model to use this one
    declared = [f["name"] for t in setup.get("tools", [])
                for f in t.get("functionDeclarations", [])]
    assert declared == ["search_knowledge"]
