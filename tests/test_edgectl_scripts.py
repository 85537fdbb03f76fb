"""edgectl as scripts and monitoring use it: real pipes (`| head`), exit codes, --help.

The command runs as a real subprocess (`python -m edged.edgectl`) so SIGPIPE/EPIPE, the
interpreter's final flush and argument parsing behave exactly as in a shell.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_edgectl import DEGRADED

from edged import edgectl
from edged.config import ControlSettings
from edged.control.protocol import ControlError
from edged.control.server import ControlServer, Final, Method, Peer

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60.0
HEALTHY_BIG = {**DEGRADED, "health": "healthy", "problems": [],
               # > a pipe's 64 KiB: `head -1` exits while edgectl is still writing
               "turns": [{**DEGRADED["turns"][0], "user": f"pregunta {i} " + "x" * 200}
                         for i in range(400)]}


async def _serve(path: Path, quiet_events: asyncio.Event) -> ControlServer:
    async def status(p: dict[str, Any], peer: Peer) -> dict[str, Any]:
        return HEALTHY_BIG

    async def events(p: dict[str, Any], peer: Peer) -> AsyncIterator[Any]:
        yield {"type": "hello", "ts": 1.0}
        yield {"type": "state", "ts": 2.0, "state": "idle", "previous": "idle"}
        await quiet_events.wait()          # then nothing for as long as the test runs
        yield Final({})

    async def ask(p: dict[str, Any], peer: Peer) -> AsyncIterator[Any]:
        if not p.get("text", "").strip():
            raise ControlError("invalid_params", 'ask needs params {"text": "..."}')
        yield Final({"model": "ok"})

    srv = ControlServer(ControlSettings(socket_path=path, group="root"), {
        "status": Method(status), "health": Method(status),
        "events": Method(events, streaming=True), "ask": Method(ask, streaming=True)})
    await srv.start()
    return srv


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Path]:
    quiet = asyncio.Event()
    srv = await _serve(tmp_path / "c.sock", quiet)
    yield tmp_path / "c.sock"
    quiet.set()
    await srv.close()


def _edgectl(socket_path: Path) -> str:
    return f"{sys.executable} -m edged.edgectl --socket {socket_path}"


async def _shell(script: str) -> tuple[int, str, str]:
    """``bash -o pipefail -c script``; returns (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-o", "pipefail", "-c", script, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_into_head_exits_with_the_health_code(server: Path) -> None:
    rc, out, err = await _shell(f"{_edgectl(server)} status | head -1")
    assert (rc, out, err) == (0, "edged: healthy\n", "")
    rc, out, err = await _shell(f"{_edgectl(server)} status --json | head -2")
    assert rc == 0 and out.splitlines()[0] == "{" and err == ""


async def test_output_already_closed_is_no_traceback(server: Path) -> None:
    """The reader is gone before edgectl writes a byte (stdout's read end closed)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edged.edgectl", "--socket", str(server), "health",
            stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO)
    finally:
        os.close(w)
    _, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0 and err == b""


async def test_events_into_head_ends_without_waiting_for_another_event(server: Path) -> None:
    rc, out, err = await _shell(f"{_edgectl(server)} events | head -2")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2 and " hello" in lines[0] and " state " in lines[1]
    rc, out, _ = await _shell(f"{_edgectl(server)} --json events | head -1")
    assert rc == 0 and out.startswith('{"type": "hello"')


@pytest.mark.parametrize("argv", [
    ["--timeout", "-1", "status"], ["--timeout", "0", "health"], ["--timeout", "nan", "health"],
    ["--timeout", "inf", "health"], ["--timeout", "soon", "health"], [], ["bogus"],
    ["feedback", "meh"], ["ask"], ["status", "--frobnicate"],
])
async def test_usage_errors_exit_2_without_traceback(argv: list[str], server: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edged.edgectl", "--socket", str(server), *argv,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 2, (argv, out, err)
    assert b"usage: edgectl" in err and b"Traceback" not in err


async def test_parameters_the_daemon_rejects_exit_2(server: Path) -> None:
    assert await asyncio.to_thread(edgectl.main, ["--socket", str(server), "ask", " "]) == 2


def test_help_documents_every_verb_exit_code_and_json(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert edgectl.main(["--help"]) == 0
    text = capsys.readouterr().out
    verbs = set(edgectl.VERBS)
    parser = edgectl.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == verbs                     # type: ignore[arg-type]
    for verb in verbs:
        assert re.search(rf"^\s+{verb}\s+\S", text, re.M), verb
    for code in edgectl.EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+\S", text, re.M), code
    assert "--json" in text and "schema_version" in text
    for verb in verbs:                                   # each verb's own --help too
        assert edgectl.main([verb, "--help"]) == 0
        assert "exit codes:" in capsys.readouterr().out


def test_readme_documents_every_verb_and_exit_code() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### edgectl"):]
    section = section[:section.index("\n## ")]
    for verb in edgectl.VERBS:
        assert f"`{verb}" in section, verb
    for code, _ in edgectl.EXIT_CODES.items():
        assert re.search(rf"^\| {code} \|", section, re.M), code
    assert "--json" in section
