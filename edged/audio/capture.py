"""Microphone capture: 16 kHz mono S16_LE periods from ALSA, delivered to asyncio.

``snd_pcm_readi`` blocks for one period, so it runs in a dedicated thread that owns the PCM
handle for its whole life (open, read, close - never touched from another thread). Frames are
handed to the event loop with ``loop.call_soon_threadsafe``. A counting semaphore bounds the
queue: on a real device the consumer is always faster and it never blocks; if the event loop
ever stalls, the thread waits, ALSA overruns and the overrun is counted - the same signal a
slow consumer gives on any sound card. With a file-backed virtual device it makes capture
lossless, which tests rely on.

A device that cannot do 16 kHz mono natively is opened through ALSA's plug layer
(``plughw:CARD=...,DEV=0``), configured by name; edged has no resampler of its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import alsaaudio

from edged.audio.device import DeviceHealth, keep_open
from edged.backoff import Backoff
from edged.config import AudioSettings
from edged.events import AudioFrame
from edged.formats import CAPTURE_RATE, bytes_per_ms

log = logging.getLogger(__name__)

RATE = CAPTURE_RATE
STABLE_S = 5.0          # this long without errors resets the backoff
QUEUE_FRAMES = 100      # 2 s at 20 ms periods


def open_capture(device: str, period_ms: int) -> alsaaudio.PCM:
    return alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, mode=alsaaudio.PCM_NORMAL, device=device,
                         channels=1, rate=RATE, format=alsaaudio.PCM_FORMAT_S16_LE,
                         periodsize=RATE * period_ms // 1000, periods=4)


class Capture:
    """Owns the capture device; ``frames()`` yields :class:`AudioFrame` while ``run()`` runs."""

    def __init__(self, audio: AudioSettings) -> None:
        self.settings = audio
        self.health = DeviceHealth(audio.capture_device)
        self._queue: asyncio.Queue[AudioFrame] = asyncio.Queue()
        self._slots = threading.Semaphore(QUEUE_FRAMES)
        self._stop = threading.Event()

    @property
    def period_bytes(self) -> int:
        return bytes_per_ms(RATE) * self.settings.period_ms

    async def run(self) -> None:
        """Capture until cancelled; device errors are retried inside, never raised."""
        loop = asyncio.get_running_loop()
        self._stop.clear()
        thread = threading.Thread(target=self._thread_main, args=(loop,),
                                  name="edged-capture", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            # The thread finishes its current read (one period) and closes the PCM itself.
            await asyncio.shield(asyncio.to_thread(thread.join, 5.0))
            self.health.set_state("stopped")

    async def frames(self) -> AsyncIterator[AudioFrame]:
        while True:
            frame = await self._queue.get()
            self._slots.release()
            yield frame

    def status(self) -> dict[str, Any]:
        d = self.health.as_dict()
        d["overruns"] = self.health.xruns
        d["period_ms"] = self.settings.period_ms
        return d

    # --- the capture thread -------------------------------------------------------------

    def _deliver(self, loop: asyncio.AbstractEventLoop, frame: AudioFrame) -> bool:
        while not self._slots.acquire(timeout=0.2):
            if self._stop.is_set():
                return False
        try:
            loop.call_soon_threadsafe(self._queue.put_nowait, frame)
        except RuntimeError:      # event loop closed under us: shutting down
            return False
        return True

    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_cap_s)
        device, period_ms = self.settings.capture_device, self.settings.period_ms

        def serve(pcm: alsaaudio.PCM) -> None:
            log.info("capture: %s open (16 kHz mono, %d ms periods)", device, period_ms)
            self._read_loop(pcm, loop, backoff)

        keep_open("capture", self._stop, self.health, backoff, log,
                  lambda: open_capture(device, period_ms), serve)

    def _read_loop(self, pcm: alsaaudio.PCM, loop: asyncio.AbstractEventLoop,
                   backoff: Backoff) -> None:
        opened_at = time.monotonic()
        fresh = True
        while not self._stop.is_set():
            n, data = pcm.read()
            if n < 0:
                # -EPIPE: overrun. pyalsaaudio re-prepares the PCM; the next read goes on.
                self.health.xruns += 1
                log.info("capture: overrun #%d on %s", self.health.xruns,
                         self.settings.capture_device)
                continue
            if not data:
                continue
            self.health.frames += 1
            if backoff.attempt and time.monotonic() - opened_at > STABLE_S:
                backoff.reset()
                self.health.failures = 0
            if not self._deliver(loop, AudioFrame(bytes(data), fresh=fresh)):
                return
            fresh = False
