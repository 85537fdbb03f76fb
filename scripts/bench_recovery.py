#!/usr/bin/env python3
"""Live recovery benchmark: network back -> session ready, over outage lengths; and shutdown
during a connect.

The device side is the daemon's own ``LiveSession`` with its default settings (backoff 0.5 s
doubling to 30 s, probe every 0.5 s), the real google-genai SDK over TLS to the Live simulator,
with ``edged_testing.netproxy`` in between to lose the network:

* ``refuse``: connections refused and open ones reset (no route);
* ``blackhole``: SYNs dropped and open connections frozen (a silent dead link); at the return the
  frozen connection is reset, as a server that gave up on it would.

Each sample is a fresh session that answered one question, then an outage, then the return. The
outage runs on ``edged_testing.clock.WarpLoop``: its 5 s / 60 s / 5 min of backoff, probing and
keepalive pass in a few seconds, sockets and kernel stay real. The measured interval - from the
moment the proxy accepts connections again to ``SessionChanged("ready")`` - is real time.
Prints numbers only; never passes or fails. Run alone: .venv/bin/python scripts/bench_recovery.py
(about 3 minutes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import statistics
import sys
import time
from typing import Any

from edged.config import Settings
from edged.events import SessionChanged, TurnComplete
from edged.live import LiveSession
from edged.tools import ToolRegistry
from edged_testing.clock import WarpLoop, advance
from edged_testing.netproxy import NetProxy
from edged_testing.sim import LiveSimulator, Rule, Scenario, Sleep

OUTAGES_S = (5.0, 60.0, 300.0)
MODES = ("refuse", "blackhole")
SAMPLES = int(os.environ.get("BENCH_RECOVERY_SAMPLES", "10"))
WAIT_S = 60.0


def settings(base_url: str, ca_file: str, **session: Any) -> Settings:
    return Settings.model_validate({
        "gemini": {"base_url": base_url, "ca_file": ca_file, "api_key": "bench",
                   "response_modality": "TEXT"},
        "session": session})


async def until_ready_again(q: asyncio.Queue[Any]) -> None:
    left = False
    async with asyncio.timeout(WAIT_S):
        while True:
            ev = await q.get()
            if isinstance(ev, SessionChanged):
                if ev.state == "ready" and left:
                    return
                left = left or ev.state != "ready"


async def one_return(sim: LiveSimulator, mode: str, outage_s: float) -> float:
    async with NetProxy("127.0.0.1", sim.port) as proxy:
        live = LiveSession(settings(proxy.base_url, str(sim.ca_file)), ToolRegistry(8.0))
        task = asyncio.create_task(live.run())
        try:
            q = live.bus.subscribe()
            await live.wait_ready(WAIT_S)
            await live.send_text("Me llamo Ana")
            async with asyncio.timeout(WAIT_S):
                while not isinstance(await q.get(), TurnComplete):
                    pass
            await proxy.down(mode)         # type: ignore[arg-type]
            await advance(outage_s)
            while not q.empty():
                q.get_nowait()
            back = time.monotonic()
            await proxy.up()
            await until_ready_again(q)
            return time.monotonic() - back
        finally:
            await live.close()
            await task


async def one_shutdown(sim: LiveSimulator) -> float:
    live = LiveSession(settings(sim.base_url, str(sim.ca_file), connect_timeout_s=15.0),
                       ToolRegistry(8.0))
    task = asyncio.create_task(live.run())
    n = len(sim.connections)
    await sim.wait_for(lambda s: len(s.connections) > n, WAIT_S)   # connect under way
    start = time.monotonic()
    await live.close()
    await task
    return time.monotonic() - start


def ms(values: list[float]) -> str:
    v = sorted(values)
    p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
    return (f"p50 {statistics.median(v) * 1000:6.0f}  p95 {p95 * 1000:6.0f}  "
            f"max {v[-1] * 1000:6.0f} ms  (n={len(v)})")


async def main() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    print("network back -> Live session ready (default session settings; outage time warped, "
          "return measured in real time)")
    async with LiveSimulator(Scenario(speed=50)) as sim:
        for mode in MODES:
            for outage in OUTAGES_S:
                samples = [await one_return(sim, mode, outage) for _ in range(SAMPLES)]
                print(f"  {mode:9s} outage {outage:5.0f} s: {ms(samples)}", flush=True)
    slow_setup = Scenario(rules=[Rule(on="setup", actions=[Sleep(600.0)])])
    async with LiveSimulator(slow_setup) as sim:
        samples = [await one_shutdown(sim) for _ in range(SAMPLES)]
    print(f"close() during a connect (connect_timeout_s 15) -> run() returned: {ms(samples)}")


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=WarpLoop) as runner:
        runner.run(main())
    sys.exit(0)
