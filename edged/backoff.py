"""Exponential backoff with jitter: the one retry rule every recovery loop in edged uses.

The daemon's component supervisor, the Live session's reconnects and the ALSA device threads all
retry the same way: the n-th consecutive failure waits about ``base_s * 2**(n-1)``, capped at
``cap_s``, and a run that worked for a while resets the count. Only the jitter differs:

* ``"full"`` - uniform in ``[0, delay]``. For the Live session: a fleet of devices that lost the
  same server must not come back in lock-step.
* ``"spread"`` - ``delay`` +-20 %. For local things (a sound card, a crashed task): the delay
  should be predictable, just not synchronised with other periodic work.
"""

from __future__ import annotations

import random
from typing import Literal


class Backoff:
    """Counts consecutive failures and says how long to wait before the next attempt."""

    def __init__(self, base_s: float, cap_s: float,
                 jitter: Literal["full", "spread"] = "spread",
                 rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter = jitter
        self.attempt = 0             # consecutive failures so far
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The un-jittered delay the next failure would get."""
        return min(self.cap_s, self.base_s * 2 ** self.attempt)

    def next_delay(self) -> float:
        """Record one more failure and return the delay before retrying."""
        ceiling = self.ceiling()
        self.attempt += 1
        if self.jitter == "full":
            return self._rng.uniform(0, ceiling)
        return ceiling * self._rng.uniform(0.8, 1.2)

    def reset(self) -> None:
        """The thing works again: the next failure starts from ``base_s``."""
        self.attempt = 0
