"""Server-side activity detection emulation: a plain energy detector over audio time.

Only the *shape* of Gemini's server VAD matters for the baseline mode (speech start may barge
in, end of speech comes ``silence_ms`` after the last loud audio), so a 10 ms RMS threshold is
enough. Time is counted in received samples, not wall-clock, so tests are deterministic
whatever the pacing of the client.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

WINDOW_S = 0.01
MIN_SPEECH_WINDOWS = 3   # 30 ms of loud audio before speech "starts": ignores clicks


class EnergyVad:
    def __init__(self, threshold_dbfs: float, silence_ms: int) -> None:
        self.threshold = 32768 * 10 ** (threshold_dbfs / 20)
        self.silence_s = silence_ms / 1000
        self.speaking = False
        self._loud_run = 0
        self._quiet_s = 0.0

    def feed(self, pcm: bytes, rate: int) -> list[Literal["start", "end"]]:
        """Feed S16_LE mono PCM; return the transitions it caused, in order."""
        x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
        n = max(1, int(rate * WINDOW_S))
        events: list[Literal["start", "end"]] = []
        for i in range(0, len(x), n):
            w = x[i:i + n]
            loud = float(np.sqrt(np.mean(w * w))) > self.threshold
            if not self.speaking:
                self._loud_run = self._loud_run + 1 if loud else 0
                if self._loud_run >= MIN_SPEECH_WINDOWS:
                    self.speaking, self._quiet_s = True, 0.0
                    events.append("start")
            elif loud:
                self._quiet_s = 0.0
            else:
                self._quiet_s += len(w) / rate
                if self._quiet_s >= self.silence_s:
                    self.speaking, self._loud_run = False, 0
                    events.append("end")
        return events

    def flush(self) -> bool:
        """audioStreamEnd: end an ongoing utterance now. True if one was ongoing."""
        was = self.speaking
        self.speaking, self._loud_run, self._quiet_s = False, 0, 0.0
        return was
