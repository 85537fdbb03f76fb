"""The local speech gate: decides when a user turn starts and ends, keeping the onset.

Pure logic over PCM bytes (webrtcvad + numpy), no ALSA and no asyncio, so every decision is
unit-testable on synthetic audio. One :meth:`VadGate.feed` call per capture frame returns the
:mod:`edged.events` speech messages it caused:

``SpeechStarted`` (t = estimated onset) -> ``SpeechAudio`` batches (first the pre-roll, then
live audio, each ``batch_ms`` long) -> ``SpeechEnded`` (silence or maximum turn length; t = the
estimated end of speech, i.e. ``end_silence_ms`` before the decision).

Decisions, in order (docs/voice.md says why each is there):

* webrtcvad only accepts 10/20/30 ms frames, so capture periods are re-chunked to ``frame_ms``.
* A continuous ring keeps the last ``preroll_ms`` + trigger window of audio; right after
  ``SpeechStarted`` the turn's audio begins ``preroll_ms`` before the estimated onset (the
  first voiced frame of the trigger window). The trigger fires only after several voiced
  frames; without the ring the first syllable would be clipped.
* Start: ``start_voiced_frames`` voiced among the last ``start_window_frames``. The turn is
  then *pending* until ``min_speech_ms`` of voiced audio accumulated (coughs and clicks are
  dropped); nothing is lost meanwhile, the pending audio follows the pre-roll.
* End: ``end_silence_ms`` of consecutive unvoiced frames. ``max_turn_s`` cuts a turn that
  never pauses (usually noise); the gate then stays deaf until a real pause.
* Warm-up: the first ``warmup_ms`` after a (re)start only fill the pre-roll ring. They never
  trigger a turn and never count as silence (counted as silence, it would end turns at once).
* Echo (while the device itself is speaking, :class:`EchoSettings`): ``guard`` counts a frame
  as voiced only if it is also at least ``bargein_min_dbfs`` loud and needs ``bargein_min_ms``
  of such speech before the turn (= a barge-in) is confirmed; ``mute`` ignores the microphone;
  ``open`` changes nothing (its own voice may interrupt the device).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

from edged.config import EchoSettings, VadSettings
from edged.events import AudioFrame, SpeechAudio, SpeechEnded, SpeechEvent, SpeechStarted
from edged.formats import CAPTURE_RATE, bytes_per_ms

RATE = CAPTURE_RATE
BYTES_PER_MS = bytes_per_ms(RATE)
GateState = Literal["warmup", "idle", "pending", "speaking", "cooldown"]


def dbfs(pcm: bytes) -> float:
    """RMS level of S16_LE audio in dB relative to full scale (silence -> -120)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    if x.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(x * x)))
    return 20 * math.log10(rms / 32768) if rms >= 1e-6 * 32768 else -120.0


@dataclass(slots=True)
class _Frame:
    pcm: bytes
    t: float          # monotonic time of the frame's first sample
    voiced: bool


@dataclass(slots=True)
class GateStats:
    frames: int = 0
    voiced: int = 0
    uplinked: int = 0
    turns: int = 0
    rejected: int = 0          # triggers that never reached min speech (or barge-in guard)

    def as_dict(self) -> dict[str, float | int]:
        total = max(1, self.frames)
        return {"frames": self.frames, "speech_ratio": round(self.voiced / total, 3),
                "gated_ratio": round(self.uplinked / total, 3), "turns": self.turns,
                "rejected_triggers": self.rejected}


class VadGate:
    """Turns a stream of capture frames into speech turns (see the module docstring)."""

    def __init__(self, vad: VadSettings, echo: EchoSettings,
                 classify: Callable[[bytes], bool] | None = None) -> None:
        self._classify = classify
        self.stats = GateStats()
        self.configure(vad, echo)
        self.reset()

    def configure(self, vad: VadSettings, echo: EchoSettings) -> None:
        """Apply new parameters; takes effect from the next frame (live reload)."""
        self.vad = vad
        self.echo = echo
        self._webrtc = webrtcvad.Vad(vad.aggressiveness)
        self._frame_bytes = vad.frame_ms * BYTES_PER_MS
        self._preroll_frames = math.ceil(vad.preroll_ms / vad.frame_ms)
        ring_frames = self._preroll_frames + vad.start_window_frames
        old = list(getattr(self, "_ring", ()))
        self._ring: deque[_Frame] = deque(old[-ring_frames:], maxlen=ring_frames)
        self._window: deque[bool] = deque(getattr(self, "_window", ()),
                                          maxlen=vad.start_window_frames)

    def reset(self) -> None:
        """Forget everything (capture restarted, unmuted): warm up again, no turn open."""
        self.state: GateState = "warmup"
        self._ring.clear()
        self._window.clear()
        self._rest = b""
        self._warm_ms = 0
        self._turn: list[_Frame] = []
        self._batch = bytearray()
        self._voiced_ms = 0
        self._silence_ms = 0
        self._turn_ms = 0
        self._onset_frames = 0
        self._last_voiced_end = 0.0
        self._guarded = False

    @property
    def in_turn(self) -> bool:
        return self.state == "speaking"

    def end_turn(self, reason: Literal["silence", "max_length", "muted", "device"],
                 t: float) -> list[SpeechEvent]:
        """Close an open turn from outside (mute, the microphone went away); a pending trigger
        is simply dropped."""
        events: list[SpeechEvent] = []
        if self.state == "speaking":
            events += self._flush_batch(t)
            events.append(SpeechEnded(t=t, reason=reason))
        self.state = "idle"
        self._turn = []
        self._window.clear()
        return events

    def feed(self, frame: AudioFrame, playing: bool = False) -> list[SpeechEvent]:
        """Process one capture frame; ``playing``: the device's speaker is active right now."""
        data = self._rest + frame.pcm
        events: list[SpeechEvent] = []
        fb = self._frame_bytes
        n = len(data) // fb
        for i in range(n):
            # frame.t is when the read returned (the end of this period); times of earlier
            # samples are counted back from it, so no drift accumulates across periods.
            t = frame.t - (len(data) - i * fb) / BYTES_PER_MS / 1000
            events += self._step(data[i * fb:(i + 1) * fb], t, playing)
        self._rest = data[n * fb:]
        return events

    # --- one VAD frame -------------------------------------------------------------------

    def _is_voiced(self, pcm: bytes, playing: bool) -> bool:
        if playing and self.echo.policy == "mute":
            return False
        voiced = self._classify(pcm) if self._classify else self._webrtc.is_speech(pcm, RATE)
        if voiced and playing and self.echo.policy == "guard":
            return dbfs(pcm) >= self.echo.bargein_min_dbfs
        return voiced

    def _step(self, pcm: bytes, t: float, playing: bool) -> list[SpeechEvent]:
        fm = self.vad.frame_ms
        voiced = self._is_voiced(pcm, playing)
        f = _Frame(pcm, t, voiced)
        self.stats.frames += 1
        self.stats.voiced += voiced
        if self.state == "warmup":
            self._ring.append(f)
            self._warm_ms += fm
            if self._warm_ms >= self.vad.warmup_ms:
                self.state = "idle"
            return []
        if self.state == "idle":
            self._ring.append(f)
            self._window.append(voiced)
            if sum(self._window) >= self.vad.start_voiced_frames:
                return self._trigger(playing)
            return []
        self._silence_ms = 0 if voiced else self._silence_ms + fm
        if voiced:
            self._last_voiced_end = t + fm / 1000
        if self.state == "cooldown":
            self._ring.append(f)
            if self._silence_ms >= self.vad.end_silence_ms:
                self.state = "idle"
                self._window.clear()
            return []
        if self.state == "pending":
            self._turn.append(f)
            self._onset_frames += 1
            self._voiced_ms += fm * voiced
            if self._silence_ms >= self.vad.end_silence_ms:
                self.stats.rejected += 1
                self._ring.extend(self._turn)
                self._turn = []
                self._window.clear()
                self.state = "idle"
                return []
            return self._confirm_if_ready(t)
        # speaking
        self._ring.append(f)
        events = self._add_audio(pcm, t)
        if self._silence_ms >= self.vad.end_silence_ms:
            # SpeechEnded.t is the estimated end of speech (the last voiced frame), so the
            # end_silence_ms hangover shows up in every end-of-speech latency downstream.
            return events + self._close(self._last_voiced_end, "silence")
        self._turn_ms += fm
        if self._turn_ms >= self.vad.max_turn_s * 1000:
            return events + self._close(t + fm / 1000, "max_length")
        return events

    def _trigger(self, playing: bool) -> list[SpeechEvent]:
        """N of M voiced: the turn becomes pending, starting with the whole pre-roll ring."""
        frames = list(self._ring)
        window = list(self._window)
        onset_idx = len(frames) - len(window) + window.index(True)
        self._turn = frames[max(0, onset_idx - self._preroll_frames):]
        self._onset_t = frames[onset_idx].t
        self._onset_frames = len(frames) - onset_idx
        self._voiced_ms = sum(self.vad.frame_ms for f in frames[onset_idx:] if f.voiced)
        self._silence_ms = 0
        self._guarded = playing and self.echo.policy == "guard"
        self.state = "pending"
        return self._confirm_if_ready(frames[-1].t)

    def _confirm_if_ready(self, t: float) -> list[SpeechEvent]:
        need = self.echo.bargein_min_ms if self._guarded else self.vad.min_speech_ms
        if self._voiced_ms < need:
            return []
        self.state = "speaking"
        self.stats.turns += 1
        # turn length is counted in audio time from the onset (the clock may be paced)
        self._turn_ms = self._onset_frames * self.vad.frame_ms
        self._ring.clear()
        events: list[SpeechEvent] = [SpeechStarted(t=self._onset_t)]
        for f in self._turn:
            events += self._add_audio(f.pcm, t)
        self._turn = []
        return events

    def _add_audio(self, pcm: bytes, t: float) -> list[SpeechEvent]:
        self._batch += pcm
        self.stats.uplinked += 1
        if len(self._batch) >= self.vad.batch_ms * BYTES_PER_MS:
            return self._flush_batch(t)
        return []

    def _flush_batch(self, t: float) -> list[SpeechEvent]:
        if not self._batch:
            return []
        out = SpeechAudio(pcm=bytes(self._batch), t=t)
        self._batch = bytearray()
        return [out]

    def _close(self, t: float, reason: Literal["silence", "max_length"]) -> list[SpeechEvent]:
        events = self._flush_batch(t)
        events.append(SpeechEnded(t=t, reason=reason))
        self._window.clear()
        self.state = "cooldown" if reason == "max_length" else "idle"
        return events
