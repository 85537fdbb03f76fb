"""Capture and playback through the real ALSA API on virtual (file plugin) devices."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.audio.capture import Capture
from edged.audio.playback import BYTES_PER_MS, Playback, PlaybackEvent
from edged.config import AudioSettings
from edged.events import AudioFrame
from edged_testing import material as m
from edged_testing.alsa import VirtualAlsa
from edged_testing.speech import tone
from edged_testing.voice_rig import poll_until


@pytest.fixture
def va(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VirtualAlsa]:
    v = VirtualAlsa(tmp_path / "alsa")
    monkeypatch.setenv("ALSA_CONFIG_PATH", v.config_path)
    yield v
    v.close()


@contextlib.asynccontextmanager
async def running(*parts: Capture | Playback) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(p.run()) for p in parts]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def take(capture: Capture, n: int) -> list[AudioFrame]:
    out: list[AudioFrame] = []
    async for f in capture.frames():
        out.append(f)
        if len(out) == n:
            return out
    return out


async def next_event(pb: Playback, kind: str) -> PlaybackEvent:
    while True:
        ev = await pb.events.get()
        if ev.kind == kind:
            return ev


def ramp(seconds: float) -> bytes:
    return (np.arange(int(16000 * seconds)) % 30000).astype("<i2").tobytes()


@pytest.mark.parametrize("period_ms", [10, 20, 30])
async def test_capture_reads_the_device_exactly(va: VirtualAlsa, tmp_path: Path,
                                                period_ms: int) -> None:
    data = ramp(1.0)
    (tmp_path / "in.raw").write_bytes(data + m.silence(500))
    va.add_capture("mic", tmp_path / "in.raw")
    cap = Capture(AudioSettings(capture_device="mic", period_ms=period_ms))
    async with running(cap):
        frames = await asyncio.wait_for(take(cap, 1000 // period_ms), 10)
    assert all(len(f.pcm) == 32 * period_ms for f in frames)
    assert b"".join(f.pcm for f in frames) == data[:len(frames) * 32 * period_ms]
    assert [f.fresh for f in frames[:3]] == [True, False, False]   # only the first after open
    st = cap.status()
    assert st["state"] == "stopped" and st["frames"] >= len(frames) and st["error"] is None


async def test_capture_retries_until_the_device_appears(va: VirtualAlsa, tmp_path: Path) -> None:
    cap = Capture(AudioSettings(capture_device="latemic", retry_base_s=0.02, retry_cap_s=0.1))
    async with running(cap):
        await poll_until(lambda: cap.health.failures >= 3, 10)
        st = cap.status()
        assert st["state"] in ("retrying", "opening")
        assert "latemic" in st["error"]
        (tmp_path / "in.raw").write_bytes(ramp(0.5))
        va.add_capture("latemic", tmp_path / "in.raw")
        frames = await asyncio.wait_for(take(cap, 10), 10)
        assert b"".join(f.pcm for f in frames) == ramp(0.5)[:6400]
        assert cap.status()["state"] == "running" and cap.status()["error"] is None


async def test_capture_recovers_when_its_file_comes_back(va: VirtualAlsa, tmp_path: Path) -> None:
    infile = tmp_path / "gone.raw"
    va.add_capture("mic", infile)    # defined, but its source file does not exist yet
    cap = Capture(AudioSettings(capture_device="mic", retry_base_s=0.02, retry_cap_s=0.1))
    async with running(cap):
        await poll_until(lambda: cap.health.failures >= 2, 10)
        assert "mic" in (cap.status()["error"] or "")
        infile.write_bytes(ramp(0.5))
        frames = await asyncio.wait_for(take(cap, 5), 10)
    assert frames[0].pcm == ramp(0.5)[:640] and frames[0].fresh


async def test_playback_plays_reply_exactly_and_reports(va: VirtualAlsa, tmp_path: Path) -> None:
    out = tmp_path / "speaker.raw"
    va.add_playback("spk", out)
    pb = Playback(AudioSettings(playback_device="spk"))
    reply = tone(1.0, 24000, 300) + tone(0.5, 24000, 500)
    async with running(pb):
        for i in range(0, len(reply), 3840):     # 80 ms messages, like Live
            pb.enqueue(reply[i:i + 3840])
        pb.reply_done()
        first = await asyncio.wait_for(next_event(pb, "first_write"), 10)
        done = await asyncio.wait_for(next_event(pb, "finished"), 10)
        assert done.t >= first.t
        assert not pb.playing
    assert out.read_bytes() == reply


async def test_flush_stops_playback_within_the_buffer(va: VirtualAlsa) -> None:
    sink = va.add_paced_playback("spk")
    settings = AudioSettings(playback_device="spk", playback_buffer_ms=80)
    pb = Playback(settings)
    reply = tone(3.0, 24000, 300)
    async with running(pb):
        pb.enqueue(reply)
        pb.reply_done()
        await asyncio.wait_for(next_event(pb, "first_write"), 10)
        await poll_until(lambda: len(sink.data()) >= 0.3 * 48000, 10)
        t_flush = asyncio.get_running_loop().time()
        assert pb.flush() is True
        flushed = await asyncio.wait_for(next_event(pb, "flushed"), 5)
        await asyncio.sleep(0.3)     # let anything still in flight reach the "speaker"
    after = sink.bytes_after(t_flush)
    # What is heard after the flush: the ALSA buffer is dropped; only the one period being
    # written and the virtual codec FIFO (the pipe) can still come out.
    bound = (settings.playback_buffer_ms + 10) * BYTES_PER_MS + sink.pipe_seconds * 48000
    assert after <= bound, f"{after / 48:.0f} ms played after the flush"
    assert flushed.t - t_flush < 0.5
    assert len(sink.data()) < len(reply) / 2


async def test_playback_recovers_from_write_errors(va: VirtualAlsa, tmp_path: Path) -> None:
    """The speaker's file cannot be written (its directory is missing): every write fails
    with EIO; the reply in flight is dropped, the device retried, and the next reply plays."""
    out = tmp_path / "later" / "speaker.raw"
    va.add_playback("spk", out)
    pb = Playback(AudioSettings(playback_device="spk", retry_base_s=0.02, retry_cap_s=0.1))
    async with running(pb):
        pb.enqueue(tone(1.0, 24000, 300))
        pb.reply_done()
        await poll_until(lambda: pb.health.failures >= 1, 10)
        assert "spk" in pb.status()["last_error"]
        await asyncio.wait_for(next_event(pb, "flushed"), 10)
        assert not pb.playing
        out.parent.mkdir()
        reply = tone(0.2, 24000, 500)
        pb.enqueue(reply)
        pb.reply_done()
        await asyncio.wait_for(next_event(pb, "finished"), 10)
        assert pb.status()["state"] == "running" and pb.status()["error"] is None
    assert out.read_bytes() == reply


async def test_paced_capture_runs_at_real_time(va: VirtualAlsa) -> None:
    src = va.add_paced_capture("mic", period_ms=20, speed=1.0)
    clip = ramp(0.5)
    cap = Capture(AudioSettings(capture_device="mic"))
    async with running(cap):
        frames = await asyncio.wait_for(take(cap, 5), 10)    # the room is silent at first
        src.play(clip)
        got = b""
        async with asyncio.timeout(10):
            async for f in cap.frames():
                got += f.pcm
                if clip[-640:] in got:
                    break
                last = f
    assert got.find(clip) != -1, "the clip arrives intact, period-aligned"
    assert all(f.pcm == bytes(640) for f in frames)
    span = last.t - frames[0].t
    assert span >= 0.4, f"0.5 s of paced audio arrived in {span:.2f} s"
