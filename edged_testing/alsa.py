"""Virtual ALSA devices for tests, the demo and the benchmark (no sound card needed).

Everything goes through alsa-lib's ``file`` PCM plugin, so the code under test uses the real
ALSA API exactly as on the Pi. Four kinds of device:

* ``add_capture(name, infile)``: a microphone that reads a raw 16 kHz S16_LE file as fast as
  the reader asks (``slave.pcm "null"``). After the end of the file alsa-lib keeps returning
  the last buffer, so end the file with silence.
* ``add_playback(name, outfile)``: a speaker that records everything written, instantly.
* ``add_paced_capture(name, ...)`` -> :class:`PacedSource`: a microphone paced at real time
  (or ``speed`` x real time). The plugin's ``infile`` is a FIFO that a thread fills with one
  capture period every period; queued clips are "spoken", silence otherwise. The thread writes
  whole periods (atomic pipe writes), because the plugin does one ``read()`` per period and
  would otherwise see short reads.
* ``add_paced_playback(name, ...)`` -> :class:`PacedSink`: a speaker that consumes at real time.
  The plugin's ``file`` is a FIFO shrunk to one page (4096 bytes, ~85 ms at 24 kHz): that pipe
  plays the role of the codec's hardware FIFO, so a blocked ``write`` paces playback and
  ``drop()`` leaves at most one pipe of audio "in the air". A child process drains it and
  records every byte with the time it was consumed, so tests can count what was played after
  an event.

Config loading: alsa-lib caches its configuration per process but re-reads it when the list of
files or a file's inode/mtime changes. :meth:`VirtualAlsa.activate` sets ``ALSA_CONFIG_PATH``
to ``<system alsa.conf>:<our asoundrc>`` and every rewrite replaces the file (new inode), so a
new device set is picked up by the next ``snd_pcm_open`` in the same process - no subprocess
per test is needed. :meth:`env` gives the same for child processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
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
_PIPE_BYTES = 4096
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
        self._threads: list[PacedSource | PacedSink] = []
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

    def add_paced_capture(self, name: str, period_ms: int = 20, speed: float = 1.0,
                          rate: int = CAPTURE_RATE) -> PacedSource:
        src = PacedSource(self.dir / f"{name}.fifo", period_ms=period_ms, speed=speed, rate=rate)
        self.add_capture(name, src.fifo)
        self._threads.append(src)
        return src

    def add_paced_playback(self, name: str, speed: float = 1.0,
                           rate: int = REPLY_RATE) -> PacedSink:
        sink = PacedSink(self.dir / f"{name}.fifo", speed=speed, rate=rate)
        self.add_playback(name, sink.fifo)
        self._threads.append(sink)
        return sink

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
        for t in self._threads:
            t.close()
        self._threads.clear()
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


class PacedSource:
    """Feeds a capture FIFO with whole periods at (``speed`` x) real time: a live microphone.

    ``play(pcm)`` queues speech; between clips the "room" is silent. ``played_at`` records when
    each queued clip started entering the pipe, which benchmarks use as the speech onset.
    """

    def __init__(self, fifo: Path, period_ms: int, speed: float, rate: int) -> None:
        self.fifo = fifo
        self.rate = rate
        self.speed = speed
        self.chunk = rate * period_ms // 1000 * 2
        self.room: Room | None = None     # echo of the speaker + noise bed, mixed in if set
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo)
        # O_RDWR: opening never blocks and the pipe survives the reader closing/reopening.
        self._fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        self._clips: deque[tuple[bytes, threading.Event, list[float]]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped_bytes = 0
        self._thread = threading.Thread(target=self._run, name=f"paced-src-{fifo.name}",
                                        daemon=True)
        self._thread.start()

    def play(self, pcm: bytes) -> PlayedClip:
        """Queue ``pcm`` (16 kHz S16_LE) after whatever is already queued."""
        done = threading.Event()
        started: list[float] = []
        with self._lock:
            self._clips.append((pcm, done, started))
        return PlayedClip(done, started, len(pcm) / 2 / self.rate)

    def idle(self) -> bool:
        with self._lock:
            return not self._clips

    def _next_chunk(self) -> bytes:
        with self._lock:
            while self._clips:
                pcm, done, started = self._clips[0]
                if not started:
                    started.append(time.monotonic())
                if pcm:
                    out, rest = pcm[:self.chunk], pcm[self.chunk:]
                    self._clips[0] = (rest, done, started)
                    return out.ljust(self.chunk, b"\0")
                self._clips.popleft()
                started.append(time.monotonic())
                done.set()
        return bytes(self.chunk)

    def _run(self) -> None:
        period = self.chunk / 2 / self.rate / self.speed
        deadline = time.monotonic()
        while not self._stop.is_set():
            chunk = self._next_chunk()
            room = self.room
            if room is not None:
                chunk = room.add_to(chunk, time.monotonic())
            try:
                os.write(self._fd, chunk)
            except BlockingIOError:
                self.dropped_bytes += len(chunk)   # nobody is reading: the room talks anyway
            except OSError:
                return
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                deadline = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class Room:
    """What a microphone hears besides the person: the device's own speaker and a noise bed.

    The speaker's sound comes back ``echo_delay_ms`` later through a simple room response (a
    direct path plus an exponentially decaying reverberant tail, ``rt60_s``), ``echo_gain_db``
    relative to what the speaker played; the noise bed (any 16 kHz clip, looped) is added at its
    own level. The echo is rebuilt from what the :class:`PacedSink` actually consumed and when
    (its marks share CLOCK_MONOTONIC with this process), so it follows flushes, gaps and
    barge-ins exactly as a real room would. Used by the pacer thread of a :class:`PacedSource`
    (``source.room = Room(...)``); change ``echo_gain_db`` or ``noise`` at any time.
    """

    def __init__(self, speaker: PacedSink | None = None, *, echo_gain_db: float = -20.0,
                 echo_delay_ms: float = 5.0, rt60_s: float = 0.25, noise: bytes = b"",
                 seed: int = 0) -> None:
        self.speaker = speaker
        self.echo_gain_db = echo_gain_db
        self.echo_delay_s = echo_delay_ms / 1000
        self.noise = noise
        rng = np.random.default_rng(seed)
        n = int(rt60_s * CAPTURE_RATE)
        k = np.arange(n)
        tail = rng.standard_normal(n) * np.exp(-6.9 * k / max(1, n)) * 0.25
        tail[0] = 1.0                                        # the direct path
        self._ir = tail
        self._overlap = np.zeros(n - 1)
        self._noise_pos = 0
        self._marks_seen = 0
        self._bytes_seen = 0
        self._segments: deque[tuple[float, np.ndarray]] = deque()   # (wall start, 24 kHz)

    def add_to(self, chunk: bytes, now: float) -> bytes:
        """``chunk`` (16 kHz S16_LE, the period being "recorded" now) plus echo and noise."""
        x = np.frombuffer(chunk, dtype="<i2").astype(np.float64)
        n = len(x)
        speed = self.speaker.speed if self.speaker is not None else 1.0
        if self.speaker is not None:
            start = now - n / CAPTURE_RATE / speed - self.echo_delay_s / speed
            dry = self._played(start, n, speed)
            wet = np.convolve(dry, self._ir)
            wet[:len(self._overlap)] += self._overlap
            self._overlap = wet[n:].copy()
            x += wet[:n] * 10 ** (self.echo_gain_db / 20)
        if self.noise:
            bed = np.frombuffer(self.noise, dtype="<i2").astype(np.float64)
            idx = (self._noise_pos + np.arange(n)) % len(bed)
            self._noise_pos = int((self._noise_pos + n) % len(bed))
            x += bed[idx]
        return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()

    def _played(self, start: float, n: int, speed: float) -> np.ndarray:
        """The speaker's output resampled to 16 kHz for the wall-clock window that begins at
        ``start`` and lasts ``n`` capture samples (zeros where nothing played)."""
        assert self.speaker is not None
        marks = self.speaker.marks_list(self._marks_seen)
        if marks:
            with self.speaker.out.open("rb") as f:
                f.seek(self._bytes_seen)
                raw = f.read(marks[-1][1] - self._bytes_seen)
            base = self._bytes_seen
            for t, total in marks:
                seg = np.frombuffer(raw[self._bytes_seen - base:total - base], dtype="<i2")
                self._segments.append((t, seg.astype(np.float64)))
                self._bytes_seen = total
            self._marks_seen += len(marks)
        while self._segments and self._segments[0][0] < start - 2.0:
            self._segments.popleft()
        times = start + np.arange(n) / CAPTURE_RATE / speed
        out = np.zeros(n)
        for t0, seg in self._segments:
            t1 = t0 + len(seg) / REPLY_RATE / speed
            if t1 <= times[0] or t0 >= times[-1] or not len(seg):
                continue
            inside = (times >= t0) & (times < t1)
            pos = (times[inside] - t0) * REPLY_RATE * speed
            out[inside] = np.interp(pos, np.arange(len(seg)), seg)
        return out


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


class PacedSink:
    """Drains a playback FIFO at (``speed`` x) real time and records what was "heard".

    The reader runs in a child process, not a thread: alsa-lib's file plugin flushes its
    pending bytes into the FIFO inside ``snd_pcm_drop()``, and pyalsaaudio keeps the GIL
    there, so a reader thread in the same interpreter could never drain the pipe (deadlock).
    The child appends the audio to ``<fifo>.raw`` and a (monotonic time, total bytes) record
    per read to ``<fifo>.marks``; CLOCK_MONOTONIC is system-wide, so times compare directly.
    """

    def __init__(self, fifo: Path, speed: float, rate: int) -> None:
        self.fifo = fifo
        self.rate = rate
        self.speed = speed
        self.out = fifo.with_suffix(".raw")
        self.marks = fifo.with_suffix(".marks")
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from edged_testing.alsa import _sink_main; "
             "_sink_main(*sys.argv[1:])", str(fifo), str(self.out), str(self.marks),
             str(speed), str(rate)], stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"virtual speaker for {fifo} did not start")

    @property
    def pipe_seconds(self) -> float:
        """Audio the pipe (our stand-in for the codec FIFO) can hold after a drop."""
        return _PIPE_BYTES / 2 / self.rate

    def data(self) -> bytes:
        return self.out.read_bytes()

    def marks_list(self, start: int = 0) -> list[tuple[float, int]]:
        """Every read from the ``start``-th on: (monotonic time, total bytes consumed)."""
        with self.marks.open("rb") as f:
            f.seek(start * _MARK.size)
            raw = f.read()
        n = len(raw) // _MARK.size
        return [_MARK.unpack_from(raw, i * _MARK.size) for i in range(n)]

    def bytes_after(self, t: float) -> int:
        """Bytes the speaker consumed after monotonic time ``t``."""
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

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


_MARK = struct.Struct("<dq")


def _sink_main(fifo: str, out: str, marks: str, speed: str, rate: str) -> None:
    """The virtual speaker process (see :class:`PacedSink`)."""
    fd = os.open(fifo, os.O_RDWR)
    fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    bytes_per_s = int(rate) * 2 * float(speed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(out, "wb", buffering=0) as fo, open(marks, "wb", buffering=0) as fm:
        print("ready", flush=True)
        total = 0
        deadline = time.monotonic()
        parent = os.getppid()
        while True:
            if not select.select([fd], [], [], 0.5)[0]:
                if os.getppid() != parent:     # the test/demo died: don't linger
                    return
                continue
            chunk = os.read(fd, 480)          # 10 ms at 24 kHz
            now = time.monotonic()
            total += len(chunk)
            fo.write(chunk)
            fm.write(_MARK.pack(now, total))
            deadline = max(deadline, now - 0.02) + len(chunk) / bytes_per_s
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
