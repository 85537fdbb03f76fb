"""The local speech gate: decides when a user turn starts and ends, keeping the onset.

Pure logic over the front end's frames (each one speech-detector frame with its speech
probability, see :mod:`edged.audio.frontend`): no ALSA, no asyncio, no DSP, so every decision
is unit-testable. One :meth:`VadGate.feed` call per frame returns the :mod:`edged.events`
speech messages it caused:

``SpeechStarted`` (t = estimated onset) -> ``SpeechAudio`` batches (first the pre-roll, then
live audio, each ``batch_ms`` long) -> ``SpeechEnded`` (silence, maximum length, mute, device
lost; t = the estimated end of speech).

Decisions, in order (docs/voice.md says why each is there):

* A frame is voiced when its speech probability reaches ``vad.threshold``.
* A continuous ring keeps the last ``preroll_ms`` + start window of audio; right after
  ``SpeechStarted`` the turn's audio begins ``preroll_ms`` before the estimated onset (the
  first voiced frame of the start window), so the first syllable is never clipped.
* Start: ``start_voiced_ms`` of voiced frames within ``start_window_ms``. The turn is then
  *pending* until ``min_speech_ms`` of voiced audio accumulated (coughs and clicks are
  dropped); nothing is lost meanwhile, the pending audio follows the pre-roll.
* End: ``end_silence_ms`` of silence. Speech resumes only with two voiced frames in a row:
  one voiced frame between unvoiced ones (a spoon on a plate; the speech detector scores some
  such clicks just above ``vad.threshold``) counts as silence, else a click landing just
  before the end doubled the end-of-turn latency. ``max_turn_s`` cuts a turn that
  never pauses; the gate then waits for a pause, but at most ``cooldown_s``, so it is never
  deaf for long.
* Warm-up: the first ``warmup_ms`` after a (re)start only fill the pre-roll ring. They never
  trigger a turn and never count as silence (counted as silence, they would end turns).
* :meth:`VadGate.open_at` (wake word, ``edgectl listen``): look for a turn whose audio starts
  no earlier than a given time, using the frames already heard since then - "okay nabu, ¿qué
  hora es?" in one breath gives a turn that starts right after the wake word.
* The device's own voice (``playing``), by the policy the voice loop passes with each frame:
  ``trusted`` (the echo canceller has converged) - a barge-in needs ``echo.bargein_ms`` of
  speech at least ``echo.bargein_snr_db`` above the background (the gate tracks the level of
  unvoiced frames; noise and what is left of the echo can fool the detector for a frame or
  three, but they are not louder than themselves); ``guard`` - a frame counts as voiced only
  if it is also ``bargein_min_dbfs`` loud, and a barge-in needs ``bargein_min_ms`` of such
  speech; ``mute`` - the microphone is ignored; ``open`` - no protection. Levels are those
  the speech detector heard (echo cancelled, before noise suppression).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from edged.audio.frontend import EchoMonitor, dbfs
from edged.config import EchoSettings, VadSettings
from edged.events import AudioFrame, SpeechAudio, SpeechEnded, SpeechEvent, SpeechStarted
from edged.formats import CAPTURE_RATE, bytes_per_ms

RATE = CAPTURE_RATE
BYTES_PER_MS = bytes_per_ms(RATE)
SILERO_FRAME_MS = 32
HISTORY_S = 3.0            # frames kept for open_at (the wake word's latency and more)
GateState = Literal["warmup", "idle", "pending", "speaking", "cooldown"]
EndReason = Literal["silence", "max_length", "muted", "device"]
EchoPolicy = Literal["trusted", "guard", "mute", "open"]


def barge_in_policy(echo: EchoMonitor | None, fallback: EchoPolicy) -> EchoPolicy:
    """How to treat the microphone while the device speaks: fast barge-in once the echo
    canceller has converged; no barge-in at all while it is still converging (its own voice
    passes nearly unchanged for the first seconds); ``fallback`` (``echo.policy``) without a
    canceller or when it fails to converge."""
    if echo is None or echo.failing:
        return fallback
    return "trusted" if echo.trusted else "mute"


def frame_ms(vad: VadSettings) -> int:
    """The speech detector's frame length: what one gate frame lasts."""
    return SILERO_FRAME_MS if vad.engine == "silero" else vad.frame_ms


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
    rejected: int = 0          # triggers that never reached min speech (or barge-in need)

    def as_dict(self) -> dict[str, float | int]:
        total = max(1, self.frames)
        return {"frames": self.frames, "speech_ratio": round(self.voiced / total, 3),
                "gated_ratio": round(self.uplinked / total, 3), "turns": self.turns,
                "rejected_triggers": self.rejected}


class VadGate:
    """Turns a stream of speech-detector frames into speech turns (see the module docstring)."""

    def __init__(self, vad: VadSettings, echo: EchoSettings) -> None:
        self.stats = GateStats()
        self.configure(vad, echo)
        self.reset()

    def configure(self, vad: VadSettings, echo: EchoSettings) -> None:
        """Apply new parameters; takes effect from the next frame (live reload)."""
        self.vad = vad
        self.echo = echo
        fm = self._fm = frame_ms(vad)
        self._preroll_frames = math.ceil(vad.preroll_ms / fm)
        self._start_voiced = math.ceil(vad.start_voiced_ms / fm)
        window = max(self._start_voiced, math.ceil(vad.start_window_ms / fm))
        ring_frames = self._preroll_frames + window
        old = list(getattr(self, "_ring", ()))
        self._ring: deque[_Frame] = deque(old[-ring_frames:], maxlen=ring_frames)
        self._window: deque[bool] = deque(getattr(self, "_window", ()), maxlen=window)
        self._history: deque[_Frame] = deque(getattr(self, "_history", ()),
                                             maxlen=math.ceil(HISTORY_S * 1000 / fm))

    def reset(self) -> None:
        """Forget everything (capture restarted, unmuted): warm up again, no turn open."""
        self.state: GateState = "warmup"
        self._ring.clear()
        self._window.clear()
        self._history.clear()
        self._warm_ms = 0
        self._turn: list[_Frame] = []
        self._batch = bytearray()
        self._voiced_ms = 0
        self._silence_ms = 0
        self._lone_voiced = False   # the last frame was one voiced frame after silence
        self._turn_ms = 0
        self._cool_ms = 0
        self._onset_frames = 0
        self._onset_t = 0.0
        self._last_voiced_end = 0.0
        self._need_ms = self.vad.min_speech_ms
        self._not_before: float | None = None
        self._floor_db: float | None = None

    @property
    def in_turn(self) -> bool:
        return self.state == "speaking"

    def end_turn(self, reason: EndReason, t: float) -> list[SpeechEvent]:
        """Close an open turn from outside (mute, the microphone went away); a pending trigger
        is simply dropped."""
        events: list[SpeechEvent] = []
        if self.state == "speaking":
            events += self._flush_batch(t)
            events.append(SpeechEnded(t=t, reason=reason))
        self.state = "idle"
        self._turn = []
        self._window.clear()
        self._not_before = None
        return events

    def open_at(self, t: float, playing: bool = False,
                policy: EchoPolicy | None = None) -> list[SpeechEvent]:
        """Start looking for a turn whose audio begins no earlier than ``t`` (the end of the
        wake word, or now for ``edgectl listen``), counting what was heard since ``t``.

        A turn the gate was following that started before ``t`` is abandoned without events
        (it was not addressed to the device). Returns what the frames since ``t`` already
        decide, e.g. a confirmed turn when the question followed the wake word at once.
        """
        if self.state == "speaking":
            self._batch.clear()
        since = [f for f in self._history if f.t >= t - self._fm / 2000]
        self.state = "idle"
        self._turn = []
        self._not_before = t
        self._ring.clear()
        self._window.clear()
        events: list[SpeechEvent] = []
        for f in since:
            self._ring.append(f)
            self._window.append(f.voiced)
            if self.state == "idle":
                if sum(self._window) >= self._start_voiced:
                    events += self._trigger(playing, policy or self.echo.policy)
            else:
                events += self._after_trigger(f, playing)
        return events

    def feed(self, frame: AudioFrame, playing: bool = False,
             policy: EchoPolicy | None = None) -> list[SpeechEvent]:
        """Process one front-end frame. ``playing``: the device's speaker is active right now;
        ``policy``: how to treat the microphone meanwhile (default ``echo.policy``;
        ``trusted`` once the echo canceller has converged)."""
        policy = policy or self.echo.policy
        voiced = self._is_voiced(frame, playing, policy)
        # frame.t is the time of the frame's last sample
        f = _Frame(frame.pcm, frame.t - len(frame.pcm) / BYTES_PER_MS / 1000, voiced)
        self.stats.frames += 1
        self.stats.voiced += voiced
        self._history.append(f)
        if self.state == "warmup":
            self._ring.append(f)
            self._warm_ms += self._fm
            if self._warm_ms >= self.vad.warmup_ms:
                self.state = "idle"
            return []
        if self.state == "idle":
            self._ring.append(f)
            self._window.append(voiced)
            if sum(self._window) >= self._start_voiced:
                return self._trigger(playing, policy)
            return []
        return self._after_trigger(f, playing)

    # --- one frame ------------------------------------------------------------------------

    def _is_voiced(self, frame: AudioFrame, playing: bool, policy: EchoPolicy) -> bool:
        voiced = (frame.speech or 0.0) >= self.vad.threshold
        level = frame.level if frame.level is not None else dbfs(frame.pcm)
        floor = level if self._floor_db is None else self._floor_db
        if not voiced:
            # the background level: quick to fall, slow to rise, and one odd frame moves it
            # only part of the way
            floor += (0.2 if level < floor else 0.02) * (level - floor)
            self._floor_db = floor
        if not playing or policy == "open":
            return voiced
        if policy == "trusted":
            return voiced and level >= floor + self.echo.bargein_snr_db
        if policy == "mute":
            return False
        return voiced and level >= self.echo.bargein_min_dbfs      # guard

    def _after_trigger(self, f: _Frame, playing: bool) -> list[SpeechEvent]:
        fm = self._fm
        resumed = f.voiced and (self._silence_ms == 0 or self._lone_voiced)
        self._lone_voiced = f.voiced and not resumed
        if resumed:
            self._silence_ms = 0
            self._last_voiced_end = f.t + fm / 1000
        else:
            self._silence_ms += fm
        if self.state == "cooldown":
            self._ring.append(f)
            self._cool_ms += fm
            if (self._silence_ms >= self.vad.end_silence_ms
                    or self._cool_ms >= self.vad.cooldown_s * 1000):
                self.state = "idle"
                self._window.clear()
            return []
        if self.state == "pending":
            self._turn.append(f)
            self._onset_frames += 1
            self._voiced_ms += fm * f.voiced
            if self._silence_ms >= self.vad.end_silence_ms:
                self.stats.rejected += 1
                self._ring.extend(self._turn)
                self._turn = []
                self._window.clear()
                self.state = "idle"
                return []
            return self._confirm_if_ready(f.t)
        # speaking
        self._ring.append(f)
        events = self._add_audio(f.pcm, f.t)
        if self._silence_ms >= self.vad.end_silence_ms:
            # SpeechEnded.t is the estimated end of speech (the last voiced frame), so the
            # end_silence_ms hangover shows up in every end-of-speech latency downstream.
            return events + self._close(self._last_voiced_end, "silence")
        self._turn_ms += fm
        if self._turn_ms >= self.vad.max_turn_s * 1000:
            return events + self._close(f.t + fm / 1000, "max_length")
        return events

    def _trigger(self, playing: bool, policy: EchoPolicy) -> list[SpeechEvent]:
        """Enough voiced frames: the turn becomes pending, starting with the pre-roll."""
        frames = list(self._ring)
        window = list(self._window)
        onset_idx = len(frames) - len(window) + window.index(True)
        start = max(0, onset_idx - self._preroll_frames)
        if self._not_before is not None:          # never before the wake word's end
            while start < onset_idx and frames[start].t < self._not_before - self._fm / 2000:
                start += 1
        self._turn = frames[start:]
        self._onset_t = frames[onset_idx].t
        self._onset_frames = len(frames) - onset_idx
        self._voiced_ms = sum(self._fm for f in frames[onset_idx:] if f.voiced)
        self._silence_ms = 0
        self._lone_voiced = False
        if not playing:
            self._need_ms = self.vad.min_speech_ms
        elif policy == "trusted":
            self._need_ms = self.echo.bargein_ms
        elif policy == "guard":
            self._need_ms = self.echo.bargein_min_ms
        else:
            self._need_ms = self.vad.min_speech_ms
        self.state = "pending"
        return self._confirm_if_ready(frames[-1].t)

    def _confirm_if_ready(self, t: float) -> list[SpeechEvent]:
        if self._voiced_ms < self._need_ms:
            return []
        self.state = "speaking"
        self.stats.turns += 1
        self._not_before = None
        # turn length is counted in audio time from the onset (the clock may be paced)
        self._turn_ms = self._onset_frames * self._fm
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
        self._cool_ms = 0
        self.state = "cooldown" if reason == "max_length" else "idle"
        return events
