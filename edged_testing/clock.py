"""An event loop whose clock can jump forward: long outages in tests that take seconds.

Everything asyncio times - ``asyncio.sleep``, ``wait_for``, ``asyncio.timeout``, websockets'
keepalive, the Live supervisor's backoff and probe cadence - is scheduled on ``loop.time()``.
:class:`WarpLoop` adds an offset to it, so :func:`advance` makes five minutes of backoff and
probing happen in a few seconds of real time while the sockets, TLS and the kernel stay real
(a connect into a black hole still waits for real SYN retransmits). After the warp the clock
runs at real speed again, so what is measured *after* an outage (network back -> session ready)
is real time.

Run a coroutine on it with ``asyncio.Runner(loop_factory=WarpLoop)``.
"""

from __future__ import annotations

import asyncio


class WarpLoop(asyncio.SelectorEventLoop):
    """A selector event loop with a clock that :meth:`warp` moves forward."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def warp(self, seconds: float) -> None:
        """Move the clock forward; timers that fall due run on the next iteration."""
        self.offset += seconds


async def advance(seconds: float, step: float = 0.25, real_pause: float = 0.002) -> None:
    """Let ``seconds`` of loop time pass in ``step``-sized jumps, each followed by a short real
    pause so socket I/O that the jump triggered (a refused connect, a probe) can complete."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, WarpLoop):
        raise TypeError("advance() needs a WarpLoop (asyncio.Runner(loop_factory=WarpLoop))")
    left = seconds
    while left > 0:
        jump = min(step, left)
        loop.warp(jump)
        left -= jump
        await asyncio.sleep(real_pause)
