"""OTA against a real `edged run` subprocess: the Live simulator, virtual ALSA devices, a bound
NOTIFY_SOCKET and `edgectl` / `edged ota pull` as the owner would run them.

The test plays systemd's part where it matters: a daemon that exits 75 (restart to apply) is
started again, and one killed by SIGKILL is started again without anyone looking at why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from test_daemon import Daemon, Notifications, write_config
from test_ota import REFUSALS, bundle, make_keys, refused_bundle, snapshot

from edged.control.client import ControlClient, RemoteError
from edged.ota.bundle import MAX_BUNDLE_BYTES
from edged.ota.state import CRASH_ENV
from edged_testing.alsa import VirtualAlsa
from edged_testing.sim import LiveSimulator, Reply, Rule, Scenario
from edged_testing.sim.wire import ensure_certs, server_ssl_context

BAD_MODEL = "gemini-0.0-not-a-live-model"
DEFAULT_MODEL = "gemini-3.8-live"


@pytest.fixture
async def sim() -> AsyncIterator[LiveSimulator]:
    scenario = Scenario(language="es", speed=20.0, rules=[
        Rule(match="hola", actions=[Reply(text="Hola, soy edged.")])])
    async with LiveSimulator(scenario) as s:       # models: the known Live models only
        yield s


class Rig:
    """One device: its config, virtual sound card, OTA directory and the daemon process
    (started again as systemd would)."""

    def __init__(self, tmp: Path, sim: LiveSimulator, index_dirs: Path, keys: Path,
                 window_s: float, **overrides: str) -> None:
        self.tmp, self.sim = tmp, sim
        for d in ("index", "sync"):
            (tmp / d).symlink_to(index_dirs / d)
        self.alsa = VirtualAlsa(tmp / "alsa")
        self.alsa.add_codec("mic", "spk")
        self.config = tmp / "edged.toml"
        self.overrides = {"ota__trusted_keys_dir": json.dumps(str(keys)),
                          "ota__device_id": '"pi-test"', "ota__groups": '["beta"]',
                          "ota__health_window_s": str(window_s), **overrides}
        self.write_config()
        self.ota_dir = tmp / "ota"
        self.current = self.ota_dir / "current.toml"
        self.d: Daemon | None = None
        self.starts = 0

    def write_config(self, **more: str) -> None:
        self.overrides.update(more)
        write_config(self.config, self.tmp, self.sim, **self.overrides)

    async def start(self, crash_at: str | None = None) -> Daemon:
        """Start edged (``crash_at``: SIGKILL itself at that OTA step) and wait for READY."""
        self.starts += 1
        nsock_path = self.tmp / "notify.sock"
        nsock_path.unlink(missing_ok=True)
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        nsock.bind(str(nsock_path))
        env = {k: v for k, v in os.environ.items()
               if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "GEMINI_API_KEY",
                            "WATCHDOG_PID", CRASH_ENV)}
        env.update(self.alsa.env(), NOTIFY_SOCKET=str(nsock_path), WATCHDOG_USEC="2000000",
                   PYTHONUNBUFFERED="1")
        if crash_at:
            env[CRASH_ENV] = crash_at
        stderr_file = self.tmp / f"daemon-{self.starts}.stderr"
        with stderr_file.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edged", "run", "--config", str(self.config),
                "--override", str(self.current), stdin=subprocess.DEVNULL, stdout=err,
                stderr=err, env=env, cwd=str(self.tmp))
        self.d = Daemon(proc, Notifications(nsock), self.tmp / "run" / "control.sock",
                        self.config, self.tmp / "state", stderr_file)
        await self.d.notify.wait_for(lambda m: "READY=1" in m.splitlines(), within_s=60)
        return self.d

    async def exited(self, within_s: float = 60) -> int:
        assert self.d is not None
        rc = await asyncio.wait_for(self.d.proc.wait(), within_s)
        self.d.notify.close()
        return rc

    async def stop(self) -> None:
        if self.d is not None:
            if self.d.proc.returncode is None:
                self.d.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.d.proc.wait(), 20)
                except TimeoutError:
                    self.d.proc.kill()
                    await self.d.proc.wait()
            self.d.notify.close()

    def close(self) -> None:
        self.alsa.close()

    async def edgectl(self, *args: str) -> tuple[int, str, str]:
        assert self.d is not None
        return await self.d.edgectl(*args)

    async def ota(self) -> dict[str, Any]:
        rc, out, err = await self.edgectl("ota", "status", "--json")
        assert rc == 0, err
        return json.loads(out)

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(self.tmp.glob("daemon-*.stderr")))


@pytest.fixture
async def keys(tmp_path: Path) -> tuple[SigningKey, Path]:
    return make_keys(tmp_path / "owner-keys")


def write_bundle(tmp: Path, raw: bytes, name: str) -> Path:
    p = tmp / f"{name}.bundle"
    p.write_bytes(raw)
    return p


def _remote_error(rig: Rig, raw: bytes) -> str:
    """``ota.apply`` straight over the socket (no edgectl checks); the refusal's message."""
    assert rig.d is not None
    try:
        list(ControlClient(rig.d.socket_path).ota_apply(raw))
    except RemoteError as e:
        return f"{e}"
    raise AssertionError("the daemon accepted it")


async def wait_for(pred: Callable[[], Any], what: str, within_s: float = 60) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_push_commit_refusals_and_rollback_of_a_refused_model(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path,
        keys: tuple[SigningKey, Path]) -> None:
    sk, keydir = keys
    rig = Rig(tmp_path, sim, index_dirs, keydir, window_s=6)
    try:
        await rig.start()
        st = await rig.d.wait_status(lambda s: s["session"]["state"] == "ready"   # type: ignore[union-attr]
                                     and s["health"] == "healthy")
        assert st["ota"]["version"] is None and st["ota"]["device_id"] == "pi-test"

        # 1. A good bundle: new voice and VAD; committed after its health window.
        cfg = '# beta voice\n[gemini]\nvoice = "Puck"\n\n[vad]\naggressiveness = 3\n'
        good = write_bundle(tmp_path, bundle(sk, cfg, 10, targets=("group:beta",)), "v10")
        rc, out, err = await rig.edgectl("ota", "apply", str(good))
        assert rc == 0, out + err
        assert "version 10" in out and "changes: gemini, vad" in out
        assert "committed: version 10 is current and last good" in out
        print(f"\n--- $ edgectl ota apply {good.name}  (exit {rc}) ---\n{out}{err}")
        st = await rig.d.status()     # type: ignore[union-attr]
        assert st["ota"]["version"] == 10 and st["ota"]["pending"] is None
        assert st["ota"]["last_result"]["result"] == "committed"
        assert st["audio"]["vad"]["aggressiveness"] == 3
        assert st["session"]["setup"]["voice"] == "Puck"
        assert rig.current.read_bytes() == cfg.encode()            # verbatim, comments kept
        setups = [c.setup for c in sim.connections]
        assert any(json.dumps(s).count("Puck") for s in setups)     # reconnected with it

        # 2. Every refusal: exit 1, a message naming the problem, nothing changed on disk.
        before = snapshot(rig.ota_dir)
        stranger = SigningKey.generate()
        for case, reason, words in REFUSALS:
            raw = refused_bundle(case, sk, stranger)
            path = write_bundle(tmp_path, raw, f"bad-{reason}")
            rc, out, err = await rig.edgectl("ota", "apply", str(path))
            assert rc == 1, (case, out, err)
            if case == "oversized":      # edgectl does not even send it; the daemon, sent it
                assert f"a bundle is at most {MAX_BUNDLE_BYTES}" in err, err  # anyway, refuses
                err = await asyncio.to_thread(_remote_error, rig, raw)
            assert f"bundle rejected ({reason})" in err and words in err, (case, err)
            if case == "flipped byte":
                print(f"\n--- $ edgectl ota apply {path.name}  (exit {rc}) ---\n{out}{err}")
            assert snapshot(rig.ota_dir) == before, case
        rc, text, _ = await rig.edgectl("status")
        ota_row = next(line for line in text.splitlines() if line.strip().startswith("OTA"))
        assert "version 10" in ota_row and "last REJECTED" in ota_row
        print("\n--- edgectl status after a refused bundle ---\n" + text)
        st = await rig.d.status()     # type: ignore[union-attr]
        assert st["ota"]["last_rejected"]["reason"] == "edged_too_old"   # the last one sent
        assert st["audio"]["vad"]["aggressiveness"] == 3                 # still version 10

        # 3. A bundle naming a model the server refuses (1008): rolled back by itself, well
        #    inside the health window, which the admin has meanwhile made long.
        rig.write_config(ota__health_window_s="300")
        rc, _, err = await rig.edgectl("reload")
        assert rc == 0, err
        ev_reader, ev_writer = await asyncio.open_unix_connection(str(rig.d.socket_path))  # type: ignore[union-attr]
        ev_writer.write(b'{"v":1,"id":"ev","method":"events"}\n')
        await ev_reader.readline()                                       # hello
        bad = write_bundle(tmp_path, bundle(sk, f'[gemini]\nmodel = "{BAD_MODEL}"\n', 11),
                           "v11")
        t0 = time.monotonic()
        rc, out, err = await rig.edgectl("ota", "apply", str(bad))
        took = time.monotonic() - t0
        assert rc == 1, out + err
        assert "ROLLED BACK: Gemini Live rejected the configuration (1008" in err, err
        print(f"\n--- $ edgectl ota apply {bad.name}  (exit {rc}, {took:.2f} s) ---\n{out}{err}")
        assert took < 300
        assert any(c.close_code == 1008 and BAD_MODEL in json.dumps(c.setup)
                   for c in sim.connections)
        ota_events = []
        while not ota_events or ota_events[-1]["action"] != "rolled_back":
            ev = json.loads(await asyncio.wait_for(ev_reader.readline(), 30))["result"]
            if ev["type"] == "ota":
                ota_events.append(ev)
        ev_writer.close()
        assert [e["action"] for e in ota_events] == ["trial", "rolled_back"]
        assert ota_events[-1]["version"] == 11 and ota_events[-1]["current"] == 10
        st = await rig.d.wait_status(lambda s: s["session"]["state"] == "ready")  # type: ignore[union-attr]
        assert st["session"]["setup"]["model"] == DEFAULT_MODEL
        assert st["session"]["setup"]["voice"] == "Puck"                 # version 10 again
        assert st["ota"]["version"] == 10 and st["ota"]["highest_version"] == 11
        rb = st["ota"]["last_rollback"]
        assert rb["version"] == 11 and rb["to"] == 10 and "1008" in rb["reason"]
        assert rig.current.read_bytes() == cfg.encode()
        rc, text, _ = await rig.edgectl("status")
        print("\n--- edgectl status after a rollback ---\n" + text)
        ota_row = next(line for line in text.splitlines() if line.strip().startswith("OTA"))
        assert "last rollback: v11 -> v10 (Gemini Live rejected the configuration" in ota_row
        rc, text, _ = await rig.edgectl("ota", "status")
        assert rc == 0 and "highest    11" in text
        print("\n--- edgectl ota status ---\n" + text)

        # Visible in metrics and the journal fields.
        rc, metrics, _ = await rig.edgectl("metrics")
        assert 'edged_ota_bundles_total{result="committed"} 1.0' in metrics
        assert 'edged_ota_bundles_total{result="rolled_back"} 1.0' in metrics
        assert f'edged_ota_bundles_total{{result="rejected"}} {len(REFUSALS)}.0' in metrics
        assert "edged_ota_version 10.0" in metrics
        logs = rig.logs()
        assert "EDGED_EVENT=ota" in logs and "EDGED_OTA_RESULT=rolled_back" in logs
        await rig.stop()
        assert rig.d.proc.returncode == 0       # type: ignore[union-attr]
    finally:
        await rig.stop()
        rig.close()


# Steps inside the daemon's apply where it kills itself; after each, a restart must come up
# with the old or the new config in effect (and the OTA record agreeing with it).
DAEMON_CRASH_STEPS = [
    ("verified", "good"), ("bundle:renamed", "good"), ("state-begin:tmp", "good"),
    ("state-begin:renamed", "good"), ("current-begin:renamed", "good"), ("reloaded", "good"),
    ("window", "good"), ("verdict", "good"), ("state-commit:renamed", "good"),
    ("state-rollback:renamed", "bad"), ("current-rollback:tmp", "bad"),
]


async def test_sigkill_at_each_step_of_a_daemon_apply(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path,
        keys: tuple[SigningKey, Path]) -> None:
    """One chain of starts: the start after each crash (armed to crash at the next step) is
    the check of the crash before it - it must become READY with the config the OTA record
    names, and that must be the old or the new one. (No step of the list fires while a start
    settles the previous crash, so every start reaches READY.)"""
    sk, keydir = keys
    rig = Rig(tmp_path, sim, index_dirs, keydir, window_s=2)
    aggressiveness = {None: 2}            # OTA version -> vad.aggressiveness it sets
    steps = [step for step, _ in DAEMON_CRASH_STEPS]
    try:
        version = 0
        d = await rig.start(crash_at=steps[0])
        for i, (step, kind) in enumerate(DAEMON_CRASH_STEPS):
            before = await rig.ota()
            st = await d.wait_status(lambda s: s["session"]["state"] == "ready")
            assert st["audio"]["vad"]["aggressiveness"] == aggressiveness[before["version"]]
            version += 1
            value = (aggressiveness[before["version"]] + 1) % 4     # differs from the old
            model = "" if kind == "good" else f'\n[gemini]\nmodel = "{BAD_MODEL}"\n'
            aggressiveness[version] = value
            path = write_bundle(tmp_path, bundle(
                sk, f"[vad]\naggressiveness = {value}\n{model}", version), f"c{version}")
            await rig.edgectl("ota", "apply", str(path))       # the daemon dies meanwhile
            rc = await rig.exited()
            assert rc == -signal.SIGKILL, (step, rc, rig.logs()[-3000:])
            was = before["version"]
            d = await rig.start(crash_at=steps[i + 1] if i + 1 < len(steps) else None)
            after = await rig.ota()
            assert after["version"] in (was, version), (step, after)
            assert after["pending"] is None, (step, after)       # settled before loading
            st = await d.wait_status(lambda s: s["session"]["state"] == "ready")
            assert st["audio"]["vad"]["aggressiveness"] == aggressiveness[after["version"]]
            if after["version"] == was and after["highest_version"] == version:
                assert after["last_result"]["result"] == "rolled_back", (step, after)
        final = json.loads((rig.ota_dir / "state.json").read_text())
        assert final["highest_version"] == version
        assert "stopped unexpectedly during the health window" in rig.logs()
        await rig.stop()
        assert await rig.exited() == 0
    finally:
        await rig.stop()
        rig.close()


async def test_missing_audio_device_rolls_back_across_restarts(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path,
        keys: tuple[SigningKey, Path]) -> None:
    """Audio devices open only at start: the bundle makes edged exit 75 (systemd restarts it),
    the trial continues after the restart, the device cannot open, so it is rolled back and
    edged restarts once more on the last good config."""
    sk, keydir = keys
    rig = Rig(tmp_path, sim, index_dirs, keydir, window_s=3)
    try:
        d = await rig.start()
        await d.wait_status(lambda s: s["audio"]["capture"]["state"] == "running")
        path = write_bundle(tmp_path, bundle(sk, '[audio]\ncapture_device = "nosuchmic"\n', 5),
                            "mic")
        rc, out, err = await rig.edgectl("ota", "apply", str(path))
        assert rc == 0 and "edged restarts to apply audio" in out, out + err
        assert await rig.exited() == 75
        d = await rig.start()                             # systemd: RestartForceExitStatus=75
        ota = await rig.ota()
        assert ota["pending"]["version"] == 5 and ota["pending"]["starts"] == 2
        assert await rig.exited(within_s=120) == 75      # rolled back: restart for the devices
        d = await rig.start()
        st = await d.wait_status(lambda s: s["audio"]["capture"]["state"] == "running")
        assert st["audio"]["capture"]["device"] == "mic"
        rb = st["ota"]["last_rollback"]
        assert rb["version"] == 5 and rb["to"] is None
        assert "capture device is retrying" in rb["reason"] and "nosuchmic" in rb["reason"]
        assert st["ota"]["version"] is None and not rig.current.exists()
    finally:
        await rig.stop()
        rig.close()


class _BundleHost:
    """A static HTTPS host serving one file with an ETag, recording what each request sent."""

    def __init__(self, tmp: Path) -> None:
        self.body = b""
        self.requests: list[tuple[str | None, int]] = []     # (If-None-Match, status)
        ca, cert, key = ensure_certs(tmp / "host-certs")
        self.ca = ca
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                etag = '"' + hashlib.sha256(host.body).hexdigest()[:16] + '"'
                inm = self.headers.get("If-None-Match")
                if inm == etag:
                    host.requests.append((inm, 304))
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                host.requests.append((inm, 200))
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(host.body)))
                self.end_headers()
                self.wfile.write(host.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = server_ssl_context(cert, key).wrap_socket(
            self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/fleet/edged.bundle"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_pull_from_https_host_with_etag(
        tmp_path: Path, sim: LiveSimulator, index_dirs: Path,
        keys: tuple[SigningKey, Path]) -> None:
    sk, keydir = keys
    host = _BundleHost(tmp_path)
    rig = Rig(tmp_path, sim, index_dirs, keydir, window_s=2,
              ota__pull_url=json.dumps(host.url), ota__pull_ca_file=json.dumps(str(host.ca)))

    async def pull() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edged", "ota", "pull", "--config", str(rig.config),
            "--override", str(rig.current), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM",
                                                                 "INVOCATION_ID")})
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    try:
        await rig.start()
        host.body = bundle(sk, "[vad]\naggressiveness = 3\n", 20)
        rc, out = await pull()
        assert rc == 0 and "version 20 handed to edged (pending)" in out, out
        assert host.requests == [(None, 200)]
        ota = await wait_for(lambda: _committed(rig, 20), "version 20 committed")
        assert ota["committed"]["version"] == 20

        rc, out = await pull()                         # unchanged: a 304, nothing applied
        assert rc == 0 and "not modified" in out, out
        assert host.requests[-1][1] == 304 and host.requests[-1][0] is not None
        assert (await rig.ota())["highest_version"] == 20
        assert (await rig.ota())["last_result"]["version"] == 20

        host.body = bundle(sk, "[vad]\naggressiveness = 1\n", 21)     # republished
        rc, out = await pull()
        assert rc == 0 and "version 21 handed to edged" in out, out
        assert host.requests[-1] == (host.requests[-2][0], 200)
        await wait_for(lambda: _committed(rig, 21), "version 21 committed")
        st = await rig.d.status()      # type: ignore[union-attr]
        assert st["audio"]["vad"]["aggressiveness"] == 1
        assert st["ota"]["committed"]["origin"].startswith(f"pull {host.url} (uid ")
    finally:
        await rig.stop()
        rig.close()
        host.close()


async def _committed(rig: Rig, version: int) -> dict[str, Any] | None:
    ota = await rig.ota()
    c = ota.get("committed")
    return ota if c and c["version"] == version and ota["pending"] is None else None

