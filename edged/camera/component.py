"""The camera component: a thread that owns the device and its recovery loop, and the asyncio
side that takes stills on request and sends them to the Live session.

Like the sound devices, the camera is opened, served and re-opened by one thread running
:func:`edged.devices.keep_open`: a camera that is missing, held by another program, unplugged
mid-capture or silent past ``camera.capture_timeout_s`` is closed, retried with backoff and
shown in ``edgectl status`` (``DeviceChanged`` events, role ``camera``) - never a crash.

Stills are taken on request only: the ``look`` tool (reason ``tool``), the automatic policy
(``camera.send_on``: ``wake`` on :class:`~edged.events.WakeWordDetected`, ``speech_start`` on
``VoiceStateChanged -> listening``) and ``edgectl look`` (saved for the owner, never sent). Each
request goes through :func:`~edged.camera.policy.refusal` first: nothing is captured while the
camera is disabled or the device muted (:class:`~edged.events.MuteChanged`), and at most one
still per ``camera.min_interval_s`` reaches the model. The sensor streams only around stills:
it is stopped ``camera.idle_stop_s`` after the last one and at once on mute (power, and a
webcam's LED goes off). Every outcome is published as :class:`~edged.events.CameraStill`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from edged.backoff import Backoff
from edged.camera.backend import (
    WARMUP_FRAMES,
    CameraUnavailable,
    Factory,
    Picamera2Backend,
    Unavailable,
)
from edged.camera.jpeg import jpeg_size
from edged.camera.policy import Refusal, automatic_reason, refusal
from edged.config import CameraSettings
from edged.devices import DeviceHealth, keep_open
from edged.events import (
    CameraStill,
    DeviceChanged,
    Event,
    EventBus,
    MuteChanged,
    VoiceStateChanged,
    WakeWordDetected,
)

log = logging.getLogger(__name__)

# What "the camera failed" looks like from picamera2/libcamera: our own open errors, a capture
# that timed out (unplugged mid-stream), libcamera's RuntimeErrors and OS errors (ENODEV).
DEVICE_ERRORS: tuple[type[Exception], ...] = (CameraUnavailable, TimeoutError, RuntimeError,
                                              OSError)
POLL_S = 0.5            # how often an idle camera thread checks idle_stop_s and stop
# Settings that need the device re-opened.
_DEVICE_KEYS = ("enabled", "index", "width", "height", "jpeg_quality", "capture_timeout_s",
                "retry_base_s", "retry_cap_s")


class ImageSink(Protocol):
    """Where stills for the model go: the Live session (:class:`edged.events.LiveLink`)."""

    async def send_image(self, jpeg: bytes) -> bool: ...


class StillRefused(Exception):
    """No still: ``refusal`` says why (its message is what the model is told)."""

    def __init__(self, why: Refusal) -> None:
        super().__init__(why.message)
        self.refusal = why


@dataclass(frozen=True, slots=True)
class Still:
    jpeg: bytes
    width: int | None
    height: int | None
    capture_ms: float            # request to JPEG in hand (includes start-up when idle)
    captured_at: float           # epoch seconds

    def summary(self) -> dict[str, Any]:
        return {"bytes": len(self.jpeg), "width": self.width, "height": self.height,
                "capture_ms": round(self.capture_ms, 1),
                "captured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                             time.localtime(self.captured_at))}


_PAUSE = object()       # camera thread: stop streaming now (mute)


def device_name(settings: CameraSettings) -> str:
    return f"picamera2 #{settings.index}"


class Camera:
    """Owns the camera; ``run()`` keeps it usable, :meth:`send` / :meth:`take` take stills."""

    def __init__(self, settings: CameraSettings, bus: EventBus,
                 factory: Factory | None = None) -> None:
        """``factory`` makes the picamera2 object from a camera number (default: the real
        ``Picamera2``, imported lazily; tests pass ``edged_testing.camera``'s double)."""
        self.settings = settings
        self.bus = bus
        self._factory = factory
        self.health = DeviceHealth(device_name(settings))
        self.muted = False
        self._sink: ImageSink | None = None
        self._requests: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._reconfigure = asyncio.Event()
        self._unavailable: Unavailable | None = None
        self._backend: Picamera2Backend | None = None
        self._busy = False
        self._last_sent: float | None = None
        self.counts = {"sent": 0, "saved": 0, "refused": 0, "failed": 0}
        self.last_still: dict[str, Any] | None = None
        self._background: set[asyncio.Task[None]] = set()
        bus.observe(self._on_event, MuteChanged, WakeWordDetected, VoiceStateChanged)

    def attach(self, sink: ImageSink) -> None:
        """Send stills for the model through ``sink`` (the Live session)."""
        self._sink = sink

    # --- component API -------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the camera usable while enabled; a settings change re-opens it, disabling it
        closes it at once. Device failures are retried inside, never raised."""
        loop = asyncio.get_running_loop()
        self.health.listener = functools.partial(self._device_changed, loop)
        while True:
            self._reconfigure.clear()
            settings = self.settings
            if not settings.enabled:
                await self._reconfigure.wait()
                continue
            self._stop.clear()
            thread = threading.Thread(target=self._thread_main, args=(settings,),
                                      name="edged-camera", daemon=True)
            thread.start()
            try:
                await self._reconfigure.wait()
            finally:
                self._stop.set()
                # The thread finishes the capture in hand (bounded by capture_timeout_s).
                await asyncio.shield(asyncio.to_thread(
                    thread.join, settings.capture_timeout_s * (WARMUP_FRAMES + 2)))
                self.health.set_state("stopped")

    def status(self) -> dict[str, Any]:
        s = self.settings
        state = ("disabled" if not s.enabled else "muted" if self.muted else self.health.state)
        backend = self._backend
        return {
            "enabled": s.enabled, "state": state, "detail": self.health.error or "",
            "device": self.health.device, "unavailable": self._unavailable,
            "streaming": bool(backend is not None and backend.streaming),
            "muted": self.muted, "size": f"{s.width}x{s.height}",
            "jpeg_quality": s.jpeg_quality, "media_resolution": s.media_resolution,
            "send_on": s.send_on, "min_interval_s": s.min_interval_s,
            "stills": dict(self.counts), "last_still": self.last_still,
            "reopens": self.health.reopens, "failures": self.health.failures,
            "retry_in_s": self.health.retry_in_s,
        }

    def apply_settings(self, new: CameraSettings) -> list[str]:
        """Take new settings; device settings (and ``enabled``) re-open or close the camera at
        once. Nothing here needs a daemon restart (the daemon adds ``camera.enabled`` when the
        look tool was not offered at start)."""
        old, self.settings = self.settings, new
        if any(getattr(old, k) != getattr(new, k) for k in _DEVICE_KEYS):
            self.health.device = device_name(new)
            self._unavailable = None
            self._reconfigure.set()
        return []

    # --- stills --------------------------------------------------------------------------

    async def send(self, reason: str) -> Still:
        """Take a still and send it to the model; :class:`StillRefused` says why not."""
        still = await self.take(reason, to_model=True)
        sink = self._sink
        if sink is None or not await sink.send_image(still.jpeg):
            why = Refusal("failed", "not sent: the Live session is not connected")
            self._record(CameraStill(reason, "failed", detail=why.message))
            raise StillRefused(why)
        self._last_sent = time.monotonic()
        self._record(CameraStill(reason, "sent", len(still.jpeg), still.width, still.height,
                                 round(still.capture_ms, 1)), still)
        return still

    async def take(self, reason: str, *, to_model: bool = False) -> Still:
        """Capture one JPEG (a fresh frame) without sending it; ``to_model`` applies the rate
        limit. ``edgectl look`` uses this directly (outcome ``saved``)."""
        since = None if self._last_sent is None else time.monotonic() - self._last_sent
        why = refusal(enabled=self.settings.enabled, muted=self.muted,
                      device_state=self.health.state, unavailable=self._unavailable,
                      busy=self._busy, since_last_s=since,
                      min_interval_s=self.settings.min_interval_s, rate_limited=to_model)
        if why is not None:
            self._record(CameraStill(reason, "refused", detail=why.message))
            raise StillRefused(why)
        self._busy = True
        fut: concurrent.futures.Future[tuple[bytes, float]] = concurrent.futures.Future()
        try:
            self._requests.put(fut)
            jpeg, ms = await asyncio.wait_for(
                asyncio.wrap_future(fut),
                self.settings.capture_timeout_s * (WARMUP_FRAMES + 2))
        except (CameraUnavailable, TimeoutError) as e:
            fut.cancel()
            failed = Refusal("failed", f"camera failed: {e or 'no frame in time'}")
            self._record(CameraStill(reason, "failed", detail=failed.message))
            raise StillRefused(failed) from None
        finally:
            self._busy = False
        width, height = jpeg_size(jpeg) or (None, None)
        still = Still(jpeg, width, height, ms, time.time())
        if not to_model:
            self._record(CameraStill(reason, "saved", len(jpeg), width, height, round(ms, 1)),
                         still)
        return still

    def _record(self, ev: CameraStill, still: Still | None = None) -> None:
        self.counts[ev.outcome] += 1
        if still is not None:
            self.last_still = {"reason": ev.reason, "outcome": ev.outcome, **still.summary()}
            log.info("still %s for %s: %d bytes, %sx%s, %.0f ms", ev.outcome, ev.reason,
                     ev.bytes, ev.width, ev.height, ev.capture_ms or 0,
                     extra={"EDGED_EVENT": "still"})
        else:
            log.info("still %s for %s: %s", ev.outcome, ev.reason, ev.detail,
                     extra={"EDGED_EVENT": "still"})
        self.bus.publish(ev)

    def standby(self) -> None:
        """Stop streaming now (the next still starts the camera again); mute uses it."""
        self._requests.put(_PAUSE)

    # --- events in -----------------------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        """Observer: mute turns the camera off at once; wake / speech start may ask for an
        automatic still (``camera.send_on``)."""
        if isinstance(ev, MuteChanged):
            self.muted = ev.muted
            if ev.muted:
                self.standby()
            return
        reason = automatic_reason(self.settings.send_on, ev)
        if reason is not None and self.settings.enabled:
            self._spawn(self._automatic(reason))

    async def _automatic(self, reason: str) -> None:
        with contextlib.suppress(StillRefused):      # recorded (and logged) already
            await self.send(reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)                   # keep a reference until it finishes
        task.add_done_callback(self._background.discard)

    def _device_changed(self, loop: asyncio.AbstractEventLoop, h: DeviceHealth) -> None:
        """DeviceHealth listener; runs in the camera thread, publishes on the loop."""
        ev = DeviceChanged("camera", h.device, h.state, h.error)
        with contextlib.suppress(RuntimeError):      # the loop is closing: nobody listens
            loop.call_soon_threadsafe(self.bus.publish, ev)

    # --- the camera thread ---------------------------------------------------------------

    def _thread_main(self, settings: CameraSettings) -> None:
        backoff = Backoff(settings.retry_base_s, settings.retry_cap_s)
        backend = Picamera2Backend(settings, self._factory)

        def open_device() -> Picamera2Backend:
            try:
                backend.open()
            except CameraUnavailable as e:
                self._unavailable = e.reason
                raise
            self._unavailable = None
            self._backend = backend
            log.info("camera: %s open for %dx%d stills", backend.name, settings.width,
                     settings.height)
            return backend

        def failed() -> None:
            self._unavailable = "failed"
            self._fail_pending("the camera failed; re-opening it")

        try:
            keep_open("camera", self._stop, self.health, backoff, log, open_device,
                      lambda b: self._serve(b, settings, backoff), lambda b: b.close(),
                      DEVICE_ERRORS, on_failure=failed)
        finally:
            self._backend = None
            self._fail_pending("the camera was closed")

    def _serve(self, backend: Picamera2Backend, settings: CameraSettings,
               backoff: Backoff) -> None:
        last_use = time.monotonic()
        while not self._stop.is_set():
            try:
                req = self._requests.get(timeout=POLL_S)
            except queue.Empty:
                idle = time.monotonic() - last_use
                if backend.streaming and (self.muted or (
                        settings.idle_stop_s and idle > settings.idle_stop_s)):
                    log.info("camera: idle for %.0f s, stopping the stream", idle)
                    backend.stop()
                continue
            if req is _PAUSE:
                backend.stop()
                continue
            if not req.set_running_or_notify_cancel():
                continue                                  # the asker gave up already
            t0 = time.monotonic()
            try:
                jpeg = backend.capture()
            except DEVICE_ERRORS as e:
                req.set_exception(CameraUnavailable("failed", f"capture failed: "
                                                    f"{type(e).__name__}: {e}"))
                raise
            last_use = time.monotonic()
            req.set_result((jpeg, (last_use - t0) * 1000))
            self.health.frames += 1
            if backoff.attempt:
                backoff.reset()
                self.health.failures = 0

    def _fail_pending(self, why: str) -> None:
        while True:
            try:
                req = self._requests.get_nowait()
            except queue.Empty:
                return
            if req is not _PAUSE and req.set_running_or_notify_cancel():
                req.set_exception(CameraUnavailable("failed", why))
