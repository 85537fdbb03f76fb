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
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
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


Process = Callable[[AudioFrame], list[Any]]


def _as_is(frame: AudioFrame) -> list[Any]:
    return [frame]


class Capture:
    """Owns the capture device; ``frames()`` yields what ``process`` makes of each period
    (by default the :class:`AudioFrame` itself) while ``run()`` runs.

    Two threads: one only reads ALSA (so it is always back in ``read()`` within microseconds
    and a burst of DSP never costs an overrun), the other runs ``process`` - the front end's
    echo cancellation, speech detection and wake word - so that DSP never blocks the event
    loop either.
    """

    def __init__(self, audio: AudioSettings, process: Process = _as_is) -> None:
        self.settings = audio
        self.process = process
        self.health = DeviceHealth(audio.capture_device)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._raw: queue.Queue[AudioFrame] = queue.Queue(QUEUE_FRAMES)
        self._slots = threading.Semaphore(QUEUE_FRAMES)
        self._stop = threading.Event()

    @property
    def period_bytes(self) -> int:
        return bytes_per_ms(RATE) * self.settings.period_ms

    async def run(self) -> None:
        """Capture until cancelled; device errors are retried inside, never raised."""
        loop = asyncio.get_running_loop()
        self._stop.clear()
        threads = [threading.Thread(target=self._thread_main, name="edged-capture",
                                    daemon=True),
                   threading.Thread(target=self._process_main, args=(loop,),
                                    name="edged-frontend", daemon=True)]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            # The reader finishes its current read (one period) and closes the PCM itself.
            for t in threads:
                await asyncio.shield(asyncio.to_thread(t.join, 5.0))
            self.health.set_state("stopped")

    async def frames(self) -> AsyncIterator[Any]:
        while True:
            items = await self._queue.get()
            self._slots.release()
            for item in items:
                yield item

    def status(self) -> dict[str, Any]:
        d = self.health.as_dict()
        d["overruns"] = self.health.xruns
        d["period_ms"] = self.settings.period_ms
        return d

    # --- the threads ----------------------------------------------------------------------

    def _process_main(self, loop: asyncio.AbstractEventLoop) -> None:
        """Front end thread: raw periods in, processed items to the event loop."""
        while not self._stop.is_set():
            try:
                frame = self._raw.get(timeout=0.2)
            except queue.Empty:
                continue
            items = self.process(frame)
            while not self._slots.acquire(timeout=0.2):
                if self._stop.is_set():
                    return
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, items)
            except RuntimeError:      # event loop closed under us: shutting down
                return

    def _hand_over(self, frame: AudioFrame) -> bool:
        while not self._stop.is_set():
            try:
                self._raw.put(frame, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _thread_main(self) -> None:
        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_cap_s)
        device, period_ms = self.settings.capture_device, self.settings.period_ms

        def serve(pcm: alsaaudio.PCM) -> None:
            log.info("capture: %s open (16 kHz mono, %d ms periods)", device, period_ms)
            self._read_loop(pcm, backoff)

        keep_open("capture", self._stop, self.health, backoff, log,
                  lambda: open_capture(device, period_ms), serve)

    def _read_loop(self, pcm: alsaaudio.PCM, backoff: Backoff) -> None:
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
            if not self._hand_over(AudioFrame(bytes(data), fresh=fresh)):
                return
            fresh = False
