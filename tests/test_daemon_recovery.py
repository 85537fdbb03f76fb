"""The daemon (`edged run`, a real process) across a crash and a shutdown mid-connect.

Same rig as tests/test_daemon.py: the real daemon against the Live simulator, virtual ALSA
devices, a real control socket and NOTIFY_SOCKET.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from pathlib import Path

from edged.live.handles import HANDLE_FILE
from edged_testing.sim import LiveSimulator, Rule, Scenario, Sleep
from tests.test_daemon import _is, start_daemon, stop

LIVENESS_S = 30.0


async def test_a_crash_does_not_lose_the_conversation(tmp_path: Path,
                                                      index_dirs: Path) -> None:
    async with LiveSimulator(Scenario(speed=20.0)) as sim:
        d, alsa = await start_daemon(tmp_path, sim, index_dirs)
        try:
            await d.notify.wait_for(_is("READY=1"))
            rc, _, err = await d.edgectl("ask", "Me llamo Ana")
            assert rc == 0, err
            handle_file = d.state_dir / HANDLE_FILE
            session = sim.sessions[sim.connections[0].session_id or ""]

            def stored_after_the_answer(s: LiveSimulator) -> bool:
                try:
                    handle = json.loads(handle_file.read_text())["handle"]
                except (OSError, ValueError):
                    return False
                return session.handles.get(handle, 0) >= 2     # question + answer in it
            await sim.wait_for(stored_after_the_answer, LIVENESS_S)
            assert stat.S_IMODE(os.stat(handle_file).st_mode) == 0o600
            d.proc.send_signal(signal.SIGKILL)                  # a crash
            await d.proc.wait()
        finally:
            await stop(d, alsa)
        (tmp_path / "notify.sock").unlink()      # the rig's; the daemon's own files stay
        d, alsa = await start_daemon(tmp_path, sim, index_dirs)
        try:
            await d.notify.wait_for(_is("READY=1"))
            rc, out, err = await d.edgectl("ask", "¿Cómo me llamo?")
        finally:
            await stop(d, alsa)
    assert rc == 0, err
    assert sim.connections[-1].resumed_handle is not None
    assert "Te llamas Ana" in out


async def test_sigterm_during_a_connect_stops_without_waiting_for_it(
        tmp_path: Path, index_dirs: Path) -> None:
    hang = Scenario(rules=[Rule(on="setup", actions=[Sleep(600.0)])])   # no setupComplete
    async with LiveSimulator(hang) as sim:
        d, alsa = await start_daemon(tmp_path, sim, index_dirs,
                                     session__connect_timeout_s="120")
        try:
            await sim.wait_for(lambda s: len(s.connections) == 1, LIVENESS_S)
            started = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(d.proc.wait(), LIVENESS_S)
            took = time.monotonic() - started
        finally:
            await stop(d, alsa)
    assert rc == 0
    # the session used to hold shutdown until control.stop_timeout_s (10 s) gave up on it
    assert took < 10.0
