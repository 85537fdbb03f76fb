"""Speaker playback: 24 kHz mono S16_LE replies through a jitter buffer into a small ALSA buffer.

Live reply audio arrives in bursts, usually faster than real time, sometimes with gaps. It goes
into an unbounded jitter buffer (a deque on our side, cheap to discard); a writer thread moves
it into ALSA one 10 ms period at a time. The ALSA buffer is kept small
(``audio.playback_buffer_ms``) because whatever sits in it when the user interrupts is what
they still hear: on ``flush()`` (server ``interrupted`` or local barge-in) the jitter buffer is
cleared at once and the writer thread - the only code that touches the PCM handle - calls
``pcm.drop()`` after at most the one period write it may be blocked in.

Before the first write of a reply ``playback_prebuffer_ms`` is collected, and after a gap that
starved the device it is collected again, so a slow burst costs one short pause, not a crackle
per packet. Device errors are retried with backoff like capture; status shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import alsaaudio

from edged.audio.device import DeviceHealth, keep_open
from edged.backoff import Backoff
from edged.config import AudioSettings
from edged.formats import REPLY_RATE, bytes_per_ms

log = logging.getLogger(__name__)

RATE = REPLY_RATE
PERIOD_MS = 10
BYTES_PER_MS = bytes_per_ms(RATE)
PERIOD_BYTES = PERIOD_MS * BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class PlaybackEvent:
    """What the writer thread reports to the voice loop (timestamps are monotonic)."""

    kind: Literal["first_write", "finished", "flushed"]
    t: float


def open_playback(device: str, buffer_ms: int) -> alsaaudio.PCM:
    periods = max(2, buffer_ms // PERIOD_MS)
    return alsaaudio.PCM(type=alsaaudio.PCM_PLAYBACK, mode=alsaaudio.PCM_NORMAL, device=device,
                         channels=1, rate=RATE, format=alsaaudio.PCM_FORMAT_S16_LE,
                         periodsize=RATE * PERIOD_MS // 1000, periods=periods)


class Reference(Protocol):
    """Where playback reports what it wrote (the echo canceller's reference)."""

    def played(self, pcm24: bytes) -> None: ...
    def dropped(self) -> None: ...
    def underran(self) -> None: ...


class Playback:
    """Owns the playback device; ``enqueue`` / ``reply_done`` / ``flush`` / ``play_cue`` from
    the event loop.

    ``reference`` (optional) is told every period at the moment it is written to ALSA, and
    when ALSA's buffer is dropped: the echo canceller's view of what the speaker plays.
    Cues (earcons) have their own short queue: they are written between reply periods, never
    counted as the reply (no ``first_write``/``finished`` for them) and never flushed by a
    barge-in.
    """

    def __init__(self, audio: AudioSettings, reference: Reference | None = None) -> None:
        self.settings = audio
        self.reference = reference
        self.health = DeviceHealth(audio.playback_device)
        self.events: asyncio.Queue[PlaybackEvent] = asyncio.Queue()
        self._cond = threading.Condition()
        self._jitter: deque[bytes] = deque()
        self._cue: bytearray = bytearray()
        self._queued = 0
        self._started = False      # prebuffer satisfied, writing this reply
        self._done = False         # no more audio will come for this reply
        self._drop = False
        self._active = False       # something of this reply reached ALSA and is not finished
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bytes_written = 0
        self.starved = 0           # the jitter buffer ran dry mid-reply (network slower than us)

    # --- event-loop side -------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        """True while reply audio is queued or being played (what the echo guard keys on)."""
        with self._cond:
            return self._active or self._queued > 0

    def enqueue(self, pcm: bytes) -> None:
        if not pcm:
            return
        with self._cond:
            self._jitter.append(pcm)
            self._queued += len(pcm)
            self._done = False
            self._cond.notify()

    def play_cue(self, pcm: bytes) -> None:
        """Play a short local sound (24 kHz) as soon as possible; replaces a cue in progress."""
        with self._cond:
            self._cue = bytearray(pcm)
            self._cond.notify()

    @property
    def cue_playing(self) -> bool:
        with self._cond:
            return bool(self._cue)

    def reply_done(self) -> None:
        """The server finished this reply: play out what is queued, then report ``finished``."""
        with self._cond:
            self._done = True
            self._cond.notify()

    def flush(self) -> bool:
        """Stop now: discard queued audio and drop what ALSA holds.

        Returns True when something was playing or queued; a ``flushed`` event then follows
        as soon as the writer thread has dropped the ALSA buffer.
        """
        with self._cond:
            discarded = self._queued
            self._jitter.clear()
            self._queued = 0
            self._started = False
            self._done = False
            pending = self._active or discarded > 0
            self._drop = self._drop or pending
            self._cond.notify()
        if pending:
            log.info("playback: flush, %d ms of queued reply discarded", discarded // BYTES_PER_MS)
        return pending

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        thread = threading.Thread(target=self._thread_main, name="edged-playback", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            with self._cond:
                self._cond.notify()
            await asyncio.shield(asyncio.to_thread(thread.join, 5.0))
            self.health.set_state("stopped")

    def status(self) -> dict[str, Any]:
        d = self.health.as_dict()
        d["underruns"] = self.health.xruns
        d["starved"] = self.starved
        d["buffer_ms"] = self.settings.playback_buffer_ms
        with self._cond:
            d["queued_ms"] = self._queued // BYTES_PER_MS
            d["playing"] = self._active or self._queued > 0
        return d

    # --- writer thread -----------------------------------------------------------------------

    def _emit(self, kind: Literal["first_write", "finished", "flushed"]) -> None:
        ev = PlaybackEvent(kind, time.monotonic())
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.events.put_nowait, ev)

    def _take(self) -> tuple[str, bytes]:
        """Under the lock: decide the next action -
        ("drop"|"cue"|"write"|"finish"|"idle", data)."""
        if self._drop:
            self._drop = False
            self._active = False
            return "drop", b""
        if self._cue:
            out = bytes(self._cue[:PERIOD_BYTES]).ljust(PERIOD_BYTES, b"\0")
            del self._cue[:PERIOD_BYTES]
            return "cue", out
        prebuffer = self.settings.playback_prebuffer_ms * BYTES_PER_MS
        if self._queued and (self._started or self._done or self._queued >= prebuffer):
            self._started = True
            out = bytearray()
            while self._jitter and len(out) < PERIOD_BYTES:
                head = self._jitter.popleft()
                take = PERIOD_BYTES - len(out)
                out += head[:take]
                if len(head) > take:
                    self._jitter.appendleft(head[take:])
            self._queued -= len(out)
            return "write", bytes(out)
        if not self._queued:
            if self._done and (self._started or self._active):
                self._started = False
                self._done = False
                return "finish", b""
            if self._started:
                # Starved mid-reply: collect the prebuffer again before resuming.
                self._started = False
                self.starved += 1
        return "idle", b""

    def _thread_main(self) -> None:
        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_cap_s)
        device = self.settings.playback_device

        def serve(pcm: alsaaudio.PCM) -> None:
            log.info("playback: %s open (24 kHz mono, %d ms buffer)", device,
                     self.settings.playback_buffer_ms)
            self._write_loop(pcm, backoff)

        def discard_reply() -> None:
            """The rest of the reply is lost with the device; say so like a flush does."""
            if self.flush():
                with self._cond:
                    self._drop = False
                    self._active = False
                self._emit("flushed")

        keep_open("playback", self._stop, self.health, backoff, log,
                  lambda: open_playback(device, self.settings.playback_buffer_ms), serve,
                  discard_reply)

    def _write(self, pcm: alsaaudio.PCM, data: bytes) -> None:
        """Write one period and tell the echo reference, including when the device must have
        run dry: an xrun, or (devices that never report one) this thread coming back to write
        more than a whole buffer after its last write returned, while audio was flowing. (A
        write that blocks because the buffer is full is the normal pace, not lateness.)"""
        t = time.monotonic()
        late = (self._last_write is not None
                and t - self._last_write > self.settings.playback_buffer_ms / 1000)
        ok = pcm.write(data) >= 0
        self._last_write = time.monotonic()
        if not ok:
            self.health.xruns += 1
        if self.reference is not None:
            if not ok or late:
                self.reference.underran()
            self.reference.played(data)

    def _write_loop(self, pcm: alsaaudio.PCM, backoff: Backoff) -> None:
        opened_at = time.monotonic()
        first = True
        self._last_write: float | None = None    # while audio flows to the device
        while not self._stop.is_set():
            with self._cond:
                action, data = self._take()
                if action == "idle":
                    first = True     # the next write starts (or resumes) audible output
                    self._last_write = None
                    self._cond.wait(0.05)
                    continue
            if action == "drop":
                pcm.drop()
                if self.reference is not None:
                    self.reference.dropped()
                first = True
                self._last_write = None
                self._emit("flushed")
            elif action == "cue":
                self._write(pcm, data)
                with self._cond:
                    alone = not (self._cue or self._active or self._queued)
                if alone:              # play the cue's tail out now, as a reply's end is
                    pcm.drain()
                    first = True
                    self._last_write = None
            elif action == "finish":
                pcm.drain()
                with self._cond:
                    self._active = False
                first = True
                self._last_write = None
                self._emit("finished")
            else:
                with self._cond:
                    self._active = True
                self._write(pcm, data)
                self.bytes_written += len(data)
                self.health.frames += 1
                if first:
                    first = False
                    self._emit("first_write")
                if backoff.attempt and time.monotonic() - opened_at > 5.0:
                    backoff.reset()
                    self.health.failures = 0

