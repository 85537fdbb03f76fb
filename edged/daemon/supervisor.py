"""Runs the daemon's components as tasks, restarts the ones that fail, and tracks their health.

Every component owns its own recovery loop (the Live session reconnects, ALSA threads reopen
their devices). The supervisor is the loop *around* those loops: a component whose task crashes
or returns is marked ``degraded`` and started again after a :class:`~edged.backoff.Backoff`
delay, so one bug never takes the device down. Health changes are published as
:class:`~edged.events.ComponentChanged`, which is how the status line and ``edgectl events``
learn about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from edged.backoff import Backoff
from edged.daemon.status import ComponentHealth
from edged.events import ComponentChanged, EventBus
from edged.logs import EV_ERROR

log = logging.getLogger("edged.daemon")

RESTART_BASE_S = 1.0
RESTART_CAP_S = 30.0
STABLE_AFTER_S = 60.0      # a component that ran this long starts its backoff over


class Supervisor:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.health: dict[str, ComponentHealth] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()

    def set(self, name: str, state: str, detail: str = "") -> None:
        """Record a component's health; publishes only real changes."""
        old = self.health.get(name)
        if old is not None and (old.state, old.detail) == (state, detail):
            return
        self.health[name] = ComponentHealth(state, detail)
        self.bus.publish(ComponentChanged(name, state, detail))

    def state(self, name: str) -> str:
        h = self.health.get(name)
        return h.state if h is not None else "unknown"

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` forever as component ``name``, restarting it when it fails."""
        self.tasks[name] = asyncio.create_task(self._keep_running(name, run), name=name)

    def spawn_once(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """A daemon task that must not end (watchdog, housekeeping): if it does, the liveness
        check fails and systemd restarts the daemon."""
        self.tasks[name] = asyncio.create_task(coro, name=name)

    def dead(self) -> str | None:
        """Why the daemon is not alive: a task that should run forever ended."""
        for name, task in self.tasks.items():
            if task.done():
                return f"supervisor task {name} ended"
        return None

    async def cancel(self, *names: str) -> None:
        """Cancel the given tasks and wait until they have ended."""
        tasks = [self.tasks.pop(n) for n in names if n in self.tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(RESTART_BASE_S, RESTART_CAP_S)
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await run()
                if self.stopping.is_set():
                    return
                self.set(name, "degraded", "stopped unexpectedly; restarting")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.set(name, "degraded", f"{type(e).__name__}: {e}")
                log.error("%s failed: %s; restarting in about %.0fs", name, e,
                          backoff.ceiling(), exc_info=True,
                          extra={"EDGED_EVENT": EV_ERROR, "EDGED_COMPONENT": name})
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff.next_delay())
