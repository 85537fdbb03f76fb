"""Virtual ALSA devices for tests, the demo and the benchmark (no sound card needed).

Everything goes through alsa-lib's ``file`` PCM plugin, so the code under test uses the real
ALSA API exactly as on the Pi. Three kinds of device:

* ``add_capture(name, infile)``: a microphone that reads a raw 16 kHz S16_LE file as fast as
  the reader asks (``slave.pcm "null"``). After the end of the file alsa-lib keeps returning
  the last buffer, so end the file with silence.
* ``add_playback(name, outfile)``: a speaker that records everything written, instantly.
* ``add_codec(mic, speaker, ...)`` -> :class:`Codec`: a microphone and a speaker that run at
  real time (or ``speed`` x real time) on **one clock**, like one sound card. A child process
  moves one period each way per tick: it takes one period from the speaker's FIFO (silence if
  the writer was late: an underrun) and puts one period into the microphone's FIFO - the queued
  clips the test "says", plus, if the room is set, the speaker's own period coming back as an
  echo (a fixed delay, a room response, a gain) and a noise bed. The echo is therefore locked
  to the samples the speaker played, whatever the machine's load, which is what an echo
  canceller needs to be tested fairly. The speaker FIFO is shrunk to one page (4096 bytes,
  ~85 ms at 24 kHz): it plays the codec's hardware FIFO, so a blocked ``write`` paces playback
  and ``drop()`` leaves at most one pipe of audio "in the air". Everything played is recorded
  with the time it was played, so tests can count what was heard after an event.

Config loading: alsa-lib caches its configuration per process but re-reads it when the list of
files or a file's inode/mtime changes. :meth:`VirtualAlsa.activate` sets ``ALSA_CONFIG_PATH``
to ``<system alsa.conf>:<our asoundrc>`` and every rewrite replaces the file (new inode), so a
new device set is picked up by the next ``snd_pcm_open`` in the same process - no subprocess
per test is needed. :meth:`env` gives the same for child processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged.formats import CAPTURE_RATE, REPLY_RATE

_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 4096          # the virtual speaker's "codec FIFO": what is still heard after a drop
_MIC_PIPE_BYTES = 65536     # the virtual mic's slack: 2 s of audio, so a busy reader loses none
_SYSTEM_CONF = Path(os.environ.get("ALSA_CONFIG_DIR", "/usr/share/alsa")) / "alsa.conf"


def _quote(value: str | Path) -> str:
    text = str(value)
    if '"' in text or "\n" in text:
        raise ValueError(f"ALSA config value may not contain quotes or newlines: {text!r}")
    return f'"{text}"'


class VirtualAlsa:
    """A generated asoundrc with file-plugin PCMs; ``activate()`` makes this process use it."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.asoundrc = self.dir / "asoundrc"
        self._pcms: dict[str, str] = {}
        self._devices: list[Codec] = []
        self._activated = False
        self._saved_env: str | None = None
        self._write()

    # --- devices --------------------------------------------------------------------------

    def add_capture(self, name: str, infile: Path) -> None:
        self._define(name, f'type file\n  slave.pcm "null"\n  file "/dev/null"\n'
                           f"  infile {_quote(infile)}\n  format \"raw\"")

    def add_playback(self, name: str, outfile: Path) -> None:
        self._define(name, f'type file\n  slave.pcm "null"\n  file {_quote(outfile)}\n'
                           '  format "raw"')

    def add_codec(self, mic: str, speaker: str, period_ms: int = 20,
                  speed: float = 1.0) -> Codec:
        """A microphone and a speaker on one clock (see :class:`Codec`)."""
        codec = Codec(self.dir / f"{mic}-{speaker}", period_ms=period_ms, speed=speed)
        self.add_capture(mic, codec.mic_fifo)
        self.add_playback(speaker, codec.speaker_fifo)
        self._devices.append(codec)
        return codec

    def remove(self, name: str) -> None:
        """Make a device vanish from the configuration (the next open fails)."""
        self._pcms.pop(name, None)
        self._write()

    # --- process wiring -------------------------------------------------------------------

    @property
    def config_path(self) -> str:
        return f"{_SYSTEM_CONF}:{self.asoundrc}"

    def env(self) -> dict[str, str]:
        """Environment entries for a child process that should see these devices."""
        return {"ALSA_CONFIG_PATH": self.config_path}

    def activate(self) -> None:
        """Point this process's alsa-lib at the generated config (next open re-reads it);
        :meth:`close` restores the previous value."""
        if not self._activated:
            self._saved_env = os.environ.get("ALSA_CONFIG_PATH")
            self._activated = True
        os.environ["ALSA_CONFIG_PATH"] = self.config_path

    def close(self) -> None:
        for d in self._devices:
            d.close()
        self._devices.clear()
        if self._activated:
            self._activated = False
            if self._saved_env is None:
                os.environ.pop("ALSA_CONFIG_PATH", None)
            else:
                os.environ["ALSA_CONFIG_PATH"] = self._saved_env

    def __enter__(self) -> VirtualAlsa:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _define(self, name: str, body: str) -> None:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"virtual ALSA device name must be alphanumeric: {name!r}")
        self._pcms[name] = f"pcm.{name} {{\n  {body}\n}}\n"
        self._write()

    def _write(self) -> None:
        tmp = self.asoundrc.with_suffix(".tmp")
        tmp.write_text("# generated by edged_testing.alsa\n" + "".join(self._pcms.values()))
        os.replace(tmp, self.asoundrc)   # new inode: alsa-lib notices and reloads


@dataclass(frozen=True, slots=True)
class PlayedClip:
    """Handle for a queued clip: ``done`` is set once its last period entered the pipe."""

    done: threading.Event
    _started: list[float]
    seconds: float

    @property
    def started_at(self) -> float | None:
        """When the clip's first period entered the pipe (its first sample is "spoken")."""
        return self._started[0] if self._started else None

    @property
    def ended_at(self) -> float | None:
        """When the period after the clip's last one was due: the clip has been "said"."""
        return self._started[1] if len(self._started) > 1 else None


_MARK = struct.Struct("<dq")


class Speaker:
    """What a :class:`Codec`'s speaker played: the audio and when each period of it played."""

    def __init__(self, out: Path, marks: Path, rate: int) -> None:
        self.out = out
        self.marks = marks
        self.rate = rate

    @property
    def pipe_seconds(self) -> float:
        """Audio the pipe (our stand-in for the codec FIFO) can hold after a drop."""
        return _PIPE_BYTES / 2 / self.rate

    def data(self) -> bytes:
        return self.out.read_bytes()

    def marks_list(self, start: int = 0) -> list[tuple[float, int]]:
        """Every period that had sound, from the ``start``-th on: (monotonic time, total
        bytes played)."""
        with self.marks.open("rb") as f:
            f.seek(start * _MARK.size)
            raw = f.read()
        n = len(raw) // _MARK.size
        return [_MARK.unpack_from(raw, i * _MARK.size) for i in range(n)]

    def bytes_after(self, t: float) -> int:
        """Bytes the speaker played after monotonic time ``t``."""
        marks = self.marks_list()
        before = 0
        for mt, total in marks:
            if mt > t:
                break
            before = total
        return (marks[-1][1] if marks else 0) - before

    def last_sound_at(self) -> float | None:
        marks = self.marks_list()
        return marks[-1][0] if marks else None


class Codec:
    """A virtual sound card: a microphone and a speaker on one clock (module docstring).

    ``play(pcm)`` queues 16 kHz speech for the microphone (silence between clips);
    :meth:`set_room` sets the echo of the speaker and the noise bed; ``speaker`` reads back
    what was played. Clips and room settings go to the child process over its stdin; it
    reports when each clip started and ended over its stdout.
    """

    def __init__(self, base: Path, period_ms: int, speed: float) -> None:
        self.mic_fifo = base.with_suffix(".mic.fifo")
        self.speaker_fifo = base.with_suffix(".spk.fifo")
        self._noise = base.with_suffix(".noise.raw")
        self.speed = speed
        self.speaker = Speaker(base.with_suffix(".spk.raw"), base.with_suffix(".spk.marks"),
                               REPLY_RATE)
        for fifo in (self.mic_fifo, self.speaker_fifo):
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            os.mkfifo(fifo)
        self._clips: dict[int, PlayedClip] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from edged_testing.alsa import _codec_main; "
             "_codec_main(*sys.argv[1:])", str(self.mic_fifo), str(self.speaker_fifo),
             str(self.speaker.out), str(self.speaker.marks), str(period_ms), str(speed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"virtual sound card {base} did not start")
        self._reader = threading.Thread(target=self._read_reports, daemon=True,
                                        name=f"codec-{base.name}")
        self._reader.start()

    # --- the microphone ---------------------------------------------------------------------

    def play(self, pcm: bytes) -> PlayedClip:
        """Queue ``pcm`` (16 kHz S16_LE) after whatever is already queued."""
        with self._lock:
            cid = self._next_id
            self._next_id += 1
            clip = PlayedClip(threading.Event(), [], len(pcm) / 2 / CAPTURE_RATE)
            self._clips[cid] = clip
        self._send(b"C", struct.pack("<I", cid) + pcm)
        return clip

    def idle(self) -> bool:
        with self._lock:
            return all(c.done.is_set() for c in self._clips.values())

    def set_room(self, echo_gain_db: float | None = None, *, echo_delay_ms: float = 5.0,
                 rt60_s: float = 0.25, drr_db: float = 10.0, noise: bytes = b"",
                 seed: int = 0) -> None:
        """The room from now on: the speaker comes back ``echo_gain_db`` relative to what it
        played (``None``: no echo), ``echo_delay_ms`` later, through a direct path plus a
        decaying tail (``rt60_s``, its energy ``drr_db`` below the direct path's); ``noise``
        (16 kHz S16_LE, looped) is added as it is."""
        self._noise.write_bytes(noise)
        cfg = {"echo_gain_db": echo_gain_db, "echo_delay_ms": echo_delay_ms,
               "rt60_s": rt60_s, "drr_db": drr_db, "noise": str(self._noise) if noise else "",
               "seed": seed}
        self._send(b"R", json.dumps(cfg).encode())

    def _send(self, kind: bytes, body: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(kind + struct.pack("<I", len(body)) + body)
        self._proc.stdin.flush()

    def _read_reports(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            what, cid, t = line.split()
            with self._lock:
                clip = self._clips.get(int(cid))
            if clip is None:
                continue
            clip._started.append(float(t))
            if what == b"end":
                clip.done.set()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        for f in (self._proc.stdin, self._proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


class _Room:
    """The codec process's acoustic path from the speaker to the microphone."""

    def __init__(self, cfg: dict[str, object], period16: int) -> None:
        from edged.audio.frontend import Resampler24to16  # the device's own resampler

        self.gain = (None if cfg["echo_gain_db"] is None
                     else 10 ** (float(cfg["echo_gain_db"]) / 20))     # type: ignore[arg-type]
        rng = np.random.default_rng(int(cfg["seed"]))      # type: ignore[arg-type]
        n = max(2, int(float(cfg["rt60_s"]) * CAPTURE_RATE))   # type: ignore[arg-type]
        tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
        tail *= np.sqrt(10 ** (-float(cfg["drr_db"]) / 10)    # type: ignore[arg-type]
                        / float(np.sum(tail[1:] ** 2)))
        tail[0] = 1.0
        self.ir = tail
        self.overlap = np.zeros(n - 1)
        delay = int(float(cfg["echo_delay_ms"]) * CAPTURE_RATE / 1000)   # type: ignore[arg-type]
        self.line = np.zeros(delay + period16)
        self.resample = Resampler24to16()
        noise = str(cfg["noise"])
        self.noise = (np.frombuffer(Path(noise).read_bytes(), dtype="<i2").astype(np.float64)
                      if noise else None)
        self.noise_pos = 0

    def add(self, mic: np.ndarray, speaker24: np.ndarray) -> np.ndarray:
        n = len(mic)
        if self.gain is not None:
            self.line = np.concatenate([self.line[n:], self.resample(speaker24)])
            dry = self.line[:n]
            wet = np.convolve(dry, self.ir)
            wet[:len(self.overlap)] += self.overlap
            self.overlap = wet[n:].copy()
            mic = mic + wet[:n] * self.gain
        if self.noise is not None and len(self.noise):
            idx = (self.noise_pos + np.arange(n)) % len(self.noise)
            self.noise_pos = int((self.noise_pos + n) % len(self.noise))
            mic = mic + self.noise[idx]
        return mic


def _codec_main(mic_fifo: str, speaker_fifo: str, out: str, marks: str, period_ms: str,
                speed: str) -> None:
    """The virtual sound card process (see :class:`Codec`)."""
    mic_fd = os.open(mic_fifo, os.O_RDWR | os.O_NONBLOCK)
    fcntl.fcntl(mic_fd, _F_SETPIPE_SZ, _MIC_PIPE_BYTES)
    spk_fd = os.open(speaker_fifo, os.O_RDWR | os.O_NONBLOCK)
    fcntl.fcntl(spk_fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    ctl = sys.stdin.buffer.raw.fileno()       # type: ignore[attr-defined]
    os.set_blocking(ctl, False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    n16 = CAPTURE_RATE * int(period_ms) // 1000
    n24 = REPLY_RATE * int(period_ms) // 1000
    period = int(period_ms) / 1000 / float(speed)
    clips: deque[tuple[int, bytes]] = deque()
    current: tuple[int, bytes] | None = None
    room: _Room | None = None
    inbox = bytearray()
    total = 0
    parent = os.getppid()
    with open(out, "wb", buffering=0) as fo, open(marks, "wb", buffering=0) as fm:
        print("ready", flush=True)
        deadline = time.monotonic()
        while os.getppid() == parent:
            with contextlib.suppress(BlockingIOError):
                inbox += os.read(ctl, 1 << 20)
            while len(inbox) >= 5:
                size = struct.unpack_from("<I", inbox, 1)[0]
                if len(inbox) < 5 + size:
                    break
                kind, body = inbox[:1], bytes(inbox[5:5 + size])
                del inbox[:5 + size]
                if kind == b"C":
                    clips.append((struct.unpack_from("<I", body)[0], body[4:]))
                else:
                    room = _Room(json.loads(body), n16)
            now = time.monotonic()
            # the speaker: one period, or silence for what the writer did not provide in time
            try:
                played = os.read(spk_fd, n24 * 2)
            except BlockingIOError:
                played = b""
            if played:
                total += len(played)
                fo.write(played)
                fm.write(_MARK.pack(now, total))
            spk = np.zeros(n24)
            spk[:len(played) // 2] = np.frombuffer(played[:len(played) // 2 * 2], dtype="<i2")
            # the microphone: what is being said, the room, the echo
            said = bytearray()
            while len(said) < n16 * 2:
                if current is None:
                    if not clips:
                        break
                    current = clips.popleft()
                    print(f"start {current[0]} {now}", flush=True)
                take = n16 * 2 - len(said)
                said += current[1][:take]
                current = (current[0], current[1][take:])
                if not current[1]:
                    print(f"end {current[0]} {now + period}", flush=True)
                    current = None
            mic = np.zeros(n16)
            mic[:len(said) // 2] = np.frombuffer(bytes(said), dtype="<i2")
            if room is not None:
                mic = room.add(mic, spk)
            pcm = np.clip(np.round(mic), -32768, 32767).astype("<i2").tobytes()
            with contextlib.suppress(BlockingIOError):
                os.write(mic_fd, pcm)      # nobody reading: the room talks anyway
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.5:
                deadline = time.monotonic()      # far behind (a frozen machine): no burst
