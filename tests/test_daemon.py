"""`edged run` as a real subprocess under a fake systemd: a bound NOTIFY_SOCKET, the Live
simulator, virtual ALSA devices, a real knowledge index, and `edgectl` against its socket.

One daemon process per test carries several checks, because starting one costs seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edged.camera.jpeg import jpeg_size
from edged_testing import material as m
from edged_testing.alsa import Codec, VirtualAlsa
from edged_testing.camera import STUBS_DIR
from edged_testing.sim import LiveSimulator, Reply, Rule, Scenario

API_KEY = "AIzaSy-test-SECRET-0123456789abcdef"
WATCHDOG_USEC = 300_000     # the daemon pings every 0.15 s


class Notifications:
    """Every datagram the daemon sent to NOTIFY_SOCKET, with its arrival time.

    A thread reads the socket all the time, as systemd does, so the daemon never finds it
    full; ``items`` is appended to by that thread only.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.items: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.items.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        """Stop reading, keeping what is still queued (the last STOPPING=1)."""
        if self.sock.fileno() < 0:
            return
        self._stop.set()
        self._thread.join(5)
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.items.append((time.monotonic(), self.sock.recv(4096).decode()))
        self.sock.close()

    def lines(self) -> list[str]:
        return [line for _, msg in self.items for line in msg.splitlines()]

    async def wait_for(self, pred: Callable[[str], bool], after: int = 0,
                       within_s: float = 30.0) -> int:
        """Index (into items) of the first message after ``after`` matching ``pred``."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for i in range(after, len(self.items)):
                if pred(self.items[i][1]):
                    return i
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching notification within {within_s}s; got "
                             f"{[m for _, m in self.items[after:]][-10:]}")


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    notify: Notifications
    socket_path: Path
    config: Path
    state_dir: Path
    stderr_file: Path
    mic: Codec | None = None       # the virtual sound card's microphone (devices=True)

    async def edgectl(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edged.edgectl", "--socket", str(self.socket_path), *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def status(self) -> dict[str, Any]:
        rc, out, err = await self.edgectl("status", "--json")
        assert rc in (0, 1), err
        return json.loads(out)

    async def wait_status(self, pred: Callable[[dict[str, Any]], bool],
                          within_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = await self.status()
            if pred(st):
                return st
            await asyncio.sleep(0.2)
        raise AssertionError(f"status never matched: {json.dumps(st)[:2000]}")


def write_config(path: Path, tmp: Path, sim: LiveSimulator, **overrides: str) -> None:
    sections = {
        "gemini": {"base_url": json.dumps(sim.base_url), "ca_file": json.dumps(str(sim.ca_file)),
                   "api_key": json.dumps(API_KEY)},
        "audio": {"capture_device": '"mic"', "playback_device": '"spk"'},
        "control": {"socket_path": json.dumps(str(tmp / "run" / "control.sock")),
                    "group": '"root"'},
        "paths": {"state_dir": json.dumps(str(tmp / "state"))},
        "knowledge": {"index_dir": json.dumps(str(tmp / "index"))},
        "sync": {"state_dir": json.dumps(str(tmp / "sync"))},
        "metrics": {"textfile": json.dumps(str(tmp / "prom" / "edged.prom"))},
    }
    for dotted, value in overrides.items():
        sec, key = dotted.split("__")
        sections.setdefault(sec, {})[key] = value
    text = "".join(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) + "\n"
                   for sec, kv in sections.items())
    path.write_text(text)


@pytest.fixture
async def sim() -> AsyncIterator[LiveSimulator]:
    scenario = Scenario(language="es", speed=20.0, rules=[
        Rule(match="hola", actions=[Reply(text="Hola, soy edged y te escucho.")])])
    async with LiveSimulator(scenario) as s:
        yield s


async def start_daemon(tmp: Path, sim: LiveSimulator, index_dirs: Path,
                       devices: bool = True, env_extra: dict[str, str] | None = None,
                       **overrides: str) -> tuple[Daemon, VirtualAlsa]:
    for d in ("index", "sync"):
        if not (tmp / d).exists():
            (tmp / d).symlink_to(index_dirs / d)
    alsa = VirtualAlsa(tmp / "alsa")
    mic = alsa.add_codec("mic", "spk") if devices else None
    cfg = tmp / "edged.toml"
    write_config(cfg, tmp, sim, **overrides)
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(str(tmp / "notify.sock"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "GEMINI_API_KEY", "WATCHDOG_PID")}
    env.update(alsa.env(), NOTIFY_SOCKET=str(tmp / "notify.sock"),
               WATCHDOG_USEC=str(WATCHDOG_USEC), EDGED_DEBUG_HOOKS="1", PYTHONUNBUFFERED="1")
    env.update(env_extra or {})
    stderr_file = tmp / "daemon.stderr"
    with stderr_file.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edged", "run", "--config", str(cfg),
            "--override", str(tmp / "no-override.toml"), stdin=subprocess.DEVNULL,
            stdout=err, stderr=err, env=env, cwd=str(tmp))
    return (Daemon(proc, Notifications(nsock), tmp / "run" / "control.sock", cfg,
                   tmp / "state", stderr_file, mic), alsa)


async def stop(d: Daemon, alsa: VirtualAlsa) -> int:
    try:
        if d.proc.returncode is None:
            d.proc.send_signal(signal.SIGTERM)
            return await asyncio.wait_for(d.proc.wait(), 20)
        return d.proc.returncode
    finally:
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
        alsa.close()
        d.notify.close()


async def control_call(path: Path, method: str, params: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(json.dumps({"v": 1, "id": 1, "method": method, "params": params}).encode()
                 + b"\n")
    line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    return json.loads(line)


def _is(prefix: str) -> Callable[[str], bool]:
    return lambda msg: prefix in msg.splitlines()


async def test_lifecycle_notify_watchdog_reload_status_and_stop(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path) -> None:
    d, alsa = await start_daemon(tmp_path, sim, index_dirs)
    try:
        n = d.notify
        ready = await n.wait_for(_is("READY=1"))
        ready_msg = n.items[ready][1]
        assert any(line.startswith("STATUS=") and "cfg=" in line and "index=gen1" in line
                   for line in ready_msg.splitlines()), ready_msg
        assert d.socket_path.exists(), "READY=1 before the control socket listens"
        await n.wait_for(_is("WATCHDOG=1"), after=ready)

        st = await d.wait_status(lambda s: s["health"] == "healthy")
        assert st["schema_version"] == 1
        assert st["session"]["state"] == "ready"
        assert st["audio"]["capture"]["state"] == "running"
        assert st["index"]["generation"] == 1 and st["index"]["documents"] == 1
        assert st["control"]["group_problem"] is None

        rc, out, _ = await d.edgectl("status")
        assert rc == 0
        lines = out.splitlines()
        assert lines[0] == "edged: healthy"
        assert "\033[" not in out                     # not a TTY: no colour
        for label in ("session", "audio in", "audio out", "listen", "echo", "VAD", "camera",
                      "index", "config"):
            assert any(line.strip().startswith(label) for line in lines), (label, out)

        # ask: the answer streams back (partials, then a final line with the whole turn).
        ev_reader, ev_writer = await asyncio.open_unix_connection(str(d.socket_path))
        ev_writer.write(b'{"v":1,"id":"ev","method":"events"}\n')
        assert json.loads(await ev_reader.readline())["result"]["type"] == "hello"
        rc, out, err = await d.edgectl("--json", "ask", "hola, ¿me oyes?")
        assert rc == 0, err
        items = [json.loads(line) for line in out.splitlines()]
        assert set(items[0]) == {"deadline_s"} and items[0]["deadline_s"] > 0   # its bound
        items = items[1:]
        assert len(items) >= 2 and all("text" in i for i in items[:-1])
        final = items[-1]
        assert final["model"] == "".join(i["text"] for i in items[:-1])
        assert "edged" in final["model"] and final["user"] == "hola, ¿me oyes?"
        assert final["latency_s"] > 0
        events = []
        while not events or events[-1]["type"] != "turn":
            events.append(json.loads(await asyncio.wait_for(ev_reader.readline(), 10))["result"])
        ev_writer.close()
        types = [e["type"] for e in events]
        assert "transcription" in types and "turn_complete" in types
        assert events[-1]["kind"] == "text" and events[-1]["model"] == final["model"]
        sent = [m for _, m in sim.messages("clientContent")]
        assert any("hola, ¿me oyes?" in json.dumps(m, ensure_ascii=False) for m in sent)

        rc, out, _ = await d.edgectl("feedback", "good", "clara", "y", "rápida")
        assert rc == 0
        entry = json.loads((d.state_dir / "feedback.jsonl").read_text().splitlines()[-1])
        assert entry["rating"] == "good" and entry["note"] == "clara y rápida"
        assert entry["turn"]["user"] == "hola, ¿me oyes?"
        st = await d.status()
        assert st["feedback"] == {"good": 1, "bad": 0}
        assert st["turns"][-1]["kind"] == "text"

        rc, metrics, _ = await d.edgectl("metrics")
        assert rc == 0
        assert 'edged_turn_latency_seconds_count{kind="text"} 1.0' in metrics
        assert 'edged_live_bytes_total{direction="down"}' in metrics
        assert "edged_index_generation 1.0" in metrics
        assert 'edged_feedback_total{rating="good"} 1.0' in metrics

        # A stalled event loop stops the watchdog pings (the ping is not from a thread).
        mark = len(n.items)
        stall = asyncio.ensure_future(control_call(d.socket_path, "debug.stall",
                                                   {"seconds": 1.5}))
        i = await n.wait_for(lambda m: "STATUS=debug: stalling" in m, after=mark)
        assert (await stall)["ok"] is True
        after = await n.wait_for(_is("WATCHDOG=1"), after=i + 1)
        stall_gap = n.items[after][0] - n.items[i][0]
        assert not any("WATCHDOG=1" in m for _, m in n.items[i + 1:after])
        assert stall_gap >= 1.4, f"watchdog resumed {stall_gap:.2f}s into a 1.5 s stall"
        pings = [t for t, m in n.items[after:] if "WATCHDOG=1" in m]
        assert len(pings) >= 1

        # SIGHUP with an invalid config: RELOADING, then READY, old config kept, reason shown.
        good_cfg = d.config.read_text()
        version = st["config"]["version"]
        d.config.write_text(good_cfg + "\n[vad]\naggressiveness = 9\n")
        mark = len(n.items)
        d.proc.send_signal(signal.SIGHUP)
        rl = await n.wait_for(_is("RELOADING=1"), after=mark)
        rd = await n.wait_for(_is("READY=1"), after=rl)
        assert "reload rejected" in n.items[rd][1] and "vad.aggressiveness" in n.items[rd][1]
        rc, out, _ = await d.edgectl("status", "--json")
        st = json.loads(out)
        assert rc == 1 and st["health"] == "degraded"
        assert st["config"]["version"] == version
        assert st["config"]["last_reload"]["ok"] is False
        assert "vad.aggressiveness = 9" in st["config"]["last_reload"]["error"]
        rc, out, _ = await d.edgectl("status")
        assert rc == 1 and out.startswith("edged: degraded (")
        assert "REJECTED" in out

        # A valid change reloads live: the new version is applied, health comes back.
        d.config.write_text(good_cfg + "\n[vad]\naggressiveness = 3\n")
        rc, out, err = await d.edgectl("--json", "reload")
        assert rc == 0, err
        res = json.loads(out)
        assert res["ok"] is True and res["previous"] == version and res["version"] != version
        st = await d.status()
        assert st["health"] == "healthy" and st["audio"]["vad"]["aggressiveness"] == 3

        # A reload that cannot be applied in full (the metrics port is taken) still ends with
        # READY=1, says which part failed, and applies the rest.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            d.config.write_text(good_cfg.replace("[metrics]\n", f"[metrics]\nhttp_port = {taken}\n")
                                + "\n[vad]\naggressiveness = 1\n")
            mark = len(n.items)
            rc, out, err = await d.edgectl("--json", "reload")
            rl = await n.wait_for(_is("RELOADING=1"), after=mark)
            await n.wait_for(_is("READY=1"), after=rl)
        res = json.loads(out)
        assert rc == 1 and res["ok"] is False and res["error"].startswith("metrics: ")
        st = await d.status()
        assert st["audio"]["vad"]["aggressiveness"] == 1            # the rest was applied
        assert st["components"]["metrics"]["state"] == "degraded"
        assert st["config"]["last_reload"]["error"] == res["error"]
        # ... and a changed port is served once it is free.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        d.config.write_text(d.config.read_text().replace(f"http_port = {taken}",
                                                         f"http_port = {free}"))
        rc, out, err = await d.edgectl("--json", "reload")
        assert rc == 0 and json.loads(out)["ok"] is True, out + err
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{free}/metrics", timeout=10).read())
        assert b"edged_healthy" in body

        mark = len(n.items)
        rc = await stop(d, alsa)
        assert rc == 0
        assert any("STOPPING=1" in m.splitlines() for _, m in n.items[mark:])
        rc, _, err = await d.edgectl("status")
        assert rc == 3 and "not running" in err

        order = [line for line in n.lines() if line.split("=")[0] in
                 ("READY", "WATCHDOG", "RELOADING", "STOPPING")]
        first = {k: next(i for i, line in enumerate(order) if line.startswith(k))
                 for k in ("READY", "WATCHDOG", "RELOADING", "STOPPING")}
        assert first["READY"] < first["WATCHDOG"] < first["RELOADING"] < first["STOPPING"]
        assert order[-1] == "STOPPING=1"
        prom = (tmp_path / "prom" / "edged.prom").read_text()   # final write at stop
        assert 'edged_turns_total{kind="text",trigger="text"} 1.0' in prom
        logs = d.stderr_file.read_text()
        assert "reload rejected" in logs and "configuration reloaded" in logs
        assert API_KEY not in logs
    finally:
        await stop(d, alsa)


async def test_edgectl_listen_is_the_button_in_manual_mode(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path) -> None:
    """``listen.mode = "manual"``: speech alone sends nothing; ``edgectl listen`` (a button, a
    GPIO script) opens one turn whose audio goes up, shown in status and counted by trigger;
    while muted it is refused."""
    d, alsa = await start_daemon(tmp_path, sim, index_dirs, listen__mode='"manual"')
    try:
        await d.notify.wait_for(_is("READY=1"))
        await d.wait_status(lambda s: s["health"] == "healthy"
                            and s["audio"]["capture"]["state"] == "running")
        assert d.mic is not None
        question = m.scale_to(m.say("Hola, ¿me oyes bien?", "es"), -26)
        unasked = d.mic.play(m.silence(300) + question + m.silence(1500))
        assert await asyncio.to_thread(unasked.done.wait, 60)
        st = await d.wait_status(lambda s: s["audio"]["vad"]["turns"] >= 1)
        assert st["audio"]["state"] == "idle"
        assert not sim.messages("realtimeInput"), "speech nobody addressed went up"

        rc, out, err = await d.edgectl("listen")
        assert rc == 0, err
        assert out.startswith("listening: the question may start within 6.0 s"), out
        d.mic.play(question + m.silence(1500))
        st = await d.wait_status(lambda s: any(t["trigger"] == "listen" for t in s["turns"]),
                                 within_s=90)
        assert st["audio"]["listen"]["mode"] == "manual"
        starts = [b for _, b in sim.messages("realtimeInput")
                  if "activityStart" in b["realtimeInput"]]
        assert len(starts) == 1
        assert any("audio" in b["realtimeInput"] for _, b in sim.messages("realtimeInput"))
        rc, metrics, _ = await d.edgectl("metrics")
        assert 'edged_turns_total{kind="voice",trigger="listen"} 1.0' in metrics
        rc, out, _ = await d.edgectl("status")
        assert any(line.split()[:2] == ["listen", "manual"] for line in out.splitlines()), out

        rc, _, _ = await d.edgectl("mute")
        assert rc == 0
        rc, out, err = await d.edgectl("listen")
        assert rc == 1 and "muted" in err and "edgectl unmute" in err
    finally:
        await stop(d, alsa)


async def test_degraded_without_devices_events_and_mute(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path) -> None:
    """No sound card and no camera: the daemon still becomes READY, says why it is degraded,
    and keeps serving the control socket (events stream, mute)."""
    d, alsa = await start_daemon(tmp_path, sim, index_dirs, devices=False,
                                 camera__enabled="true")
    try:
        await d.notify.wait_for(_is("READY=1"))
        st = await d.wait_status(
            lambda s: s["audio"]["capture"]["state"] == "retrying"
            and s["session"]["state"] == "ready" and s["camera"]["state"] == "retrying")
        assert st["health"] == "degraded"
        assert any(p.startswith("capture: ") for p in st["problems"])
        assert any(p.startswith("camera: ") and "picamera2 is not installed" in p
                   for p in st["problems"])
        rc, out, _ = await d.edgectl("status")
        assert rc == 1
        assert out.splitlines()[0].startswith("edged: degraded (")
        assert "capture: " in out.splitlines()[0]

        reader, writer = await asyncio.open_unix_connection(str(d.socket_path))
        writer.write(b'{"v":1,"id":"ev","method":"events"}\n')
        hello = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert hello["partial"] is True and hello["result"]["type"] == "hello"
        rc, out, _ = await d.edgectl("mute")
        assert rc == 0 and out.strip() == "microphone muted"
        while True:
            ev = json.loads(await asyncio.wait_for(reader.readline(), 10))["result"]
            if ev["type"] == "mute":
                break
        assert ev["muted"] is True
        writer.close()
        # The daemon's socket shrugs off 1,000 malformed lines on one connection.
        reader, writer = await asyncio.open_unix_connection(str(d.socket_path))
        junk = [b"{", b"[]", b'{"v":1,"id":1,"method":"nope"}', b'{"v":9,"method":"status"}',
                b"\xff\xfe", b'{"v":1,"id":2,"method":"ask","params":{"text":""}}']
        for i in range(1000):
            writer.write(junk[i % len(junk)] + b"\n")
        await writer.drain()
        replies = [json.loads(await asyncio.wait_for(reader.readline(), 10))
                   for _ in range(1000)]
        assert all(r["ok"] is False and r["error"]["message"] for r in replies)
        assert {r["error"]["code"] for r in replies} == {
            "parse_error", "invalid_request", "unknown_method", "unsupported_version",
            "invalid_params"}
        writer.write(b'{"v":1,"id":"after","method":"health"}\n')
        after = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert after["id"] == "after" and after["result"]["health"] == "degraded"
        writer.close()
        assert (await d.status())["muted"] is True
        assert await stop(d, alsa) == 0
    finally:
        await stop(d, alsa)


async def test_camera_look_tool_edgectl_look_and_mute(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path) -> None:
    """The camera in the real daemon (picamera2 replaced by the stand-in module on
    PYTHONPATH): ``edgectl look`` saves a still and sends nothing; a spoken-style question makes
    the model call look and the still reaches the wire between the call and its response;
    muted, both are refused and the model says why."""
    stubs = str(STUBS_DIR) + os.pathsep + os.environ.get("PYTHONPATH", "")
    d, alsa = await start_daemon(tmp_path, sim, index_dirs, env_extra={"PYTHONPATH": stubs},
                                 camera__enabled="true")
    try:
        await d.notify.wait_for(_is("READY=1"))
        st = await d.wait_status(lambda s: s["camera"]["state"] == "running"
                                 and s["session"]["state"] == "ready")
        assert "look" in st["session"]["setup"]["tools"]
        assert sim.connections[-1].setup["generationConfig"]["mediaResolution"] == \
            "MEDIA_RESOLUTION_MEDIUM"
        rc, out, err = await d.edgectl("look", "-o", str(tmp_path / "framing.jpg"))
        assert rc == 0, err
        assert "not sent to the model" in out
        assert jpeg_size((tmp_path / "framing.jpg").read_bytes()) == (768, 768)
        assert sim.images() == []

        rc, out, err = await d.edgectl("ask", "¿Qué tengo delante?")
        assert rc == 0, err
        assert "Veo la foto que acabas de enviar: 768x768" in out
        [image] = sim.images()
        [(_, call)] = [(i, m) for i, m in enumerate(sim.connections[-1].sent)
                       if "toolCall" in m]
        call_id = call["toolCall"]["functionCalls"][0]["id"]
        assert image.pending_calls == (call_id,) and image.mime_type == "image/jpeg"
        order = [next(iter(m)) for m in sim.connections[-1].messages
                 if {"realtimeInput", "toolResponse"} & set(m)]
        assert order[-2:] == ["realtimeInput", "toolResponse"]   # image, then the answer
        st = await d.status()
        assert st["camera"]["stills"]["sent"] == 1 and st["camera"]["stills"]["saved"] == 1
        rc, out, _ = await d.edgectl("status")
        assert "running · picamera2 #0 · 768x768 · send_on tool" in out

        rc, _, _ = await d.edgectl("mute")
        assert rc == 0
        rc, _, err = await d.edgectl("look", "-o", str(tmp_path / "muted.jpg"))
        assert rc == 1 and "privacy: the device is muted" in err
        assert not (tmp_path / "muted.jpg").exists()
        rc, out, err = await d.edgectl("ask", "¿Qué tengo delante?")
        assert rc == 0, err
        assert "No puedo verlo: look: privacy: the device is muted" in out
        assert len(sim.images()) == 1 and sim.errors == []
        assert await stop(d, alsa) == 0
    finally:
        await stop(d, alsa)
