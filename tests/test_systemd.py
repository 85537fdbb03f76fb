"""The shipped units pass `systemd-analyze verify` and score <= 2.0 on `security --offline`;
the install/uninstall scripts parse and their --dry-run describes the install without doing it.

verify checks that ExecStart binaries exist, and /opt/edged only exists on an installed Pi,
so the units are verified as copies whose /opt/edged/bin/<tool> paths point at executable
stubs of the same name in a temp dir - every other line is byte-identical to the shipped file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
ANALYZE = "/usr/bin/systemd-analyze"
MAX_EXPOSURE = 2.0     # systemd-timesyncd scores 2.3 on Debian 12


def _stubbed_copies(tmp: Path) -> list[Path]:
    bindir = tmp / "bin"
    bindir.mkdir()
    out = []
    for unit in sorted(UNITS.iterdir()):
        text = unit.read_text()
        for tool in set(re.findall(r"/opt/edged/bin/([\w-]+)", text)):
            stub = bindir / tool
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        copy = tmp / unit.name
        copy.write_text(text.replace("/opt/edged/bin/", f"{bindir}/"))
        out.append(copy)
    return out


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANALYZE, "verify", *map(str, paths)], capture_output=True,
                          text=True, timeout=60)


def test_units_verify_clean(tmp_path: Path) -> None:
    copies = _stubbed_copies(tmp_path)
    assert {p.name for p in copies} == {"edged.service", "edged-index-sync.service",
                                        "edged-index-sync.timer", "edged-retry.timer",
                                        "edged-ota-pull.service", "edged-ota-pull.timer"}
    res = _verify(copies)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr      # warnings (unknown keys...) count as failures


def test_verify_harness_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing binary are both reported."""
    copies = _stubbed_copies(tmp_path)
    svc = next(p for p in copies if p.name == "edged.service")
    svc.write_text(svc.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert "Unknown key 'NoNewPrivilege'" in _verify([svc]).stderr
    (tmp_path / "bin" / "edged").unlink()
    res = _verify([svc])
    assert res.returncode != 0 and "is not executable" in res.stderr


def _exposure(copy: Path) -> float:
    res = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(copy)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


@pytest.mark.parametrize("unit", ["edged.service", "edged-index-sync.service",
                                  "edged-ota-pull.service"])
def test_security_exposure_at_most_2(unit: str, tmp_path: Path) -> None:
    copy = next(p for p in _stubbed_copies(tmp_path) if p.name == unit)
    assert _exposure(copy) <= MAX_EXPOSURE


def test_ota_pull_unit_as_strict_as_the_daemon(tmp_path: Path) -> None:
    """The pull job talks to the internet: it may be no more exposed than edged itself."""
    copies = {p.name: p for p in _stubbed_copies(tmp_path)}
    assert _exposure(copies["edged-ota-pull.service"]) <= _exposure(copies["edged.service"])


def test_unit_contract() -> None:
    """The lifecycle facts the daemon relies on are in the unit (not just 'some' hardening)."""
    svc = (UNITS / "edged.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "User=edged",
                 "SupplementaryGroups=audio video", "StateDirectory=edged",
                 "RuntimeDirectory=edged", "ConfigurationDirectory=edged",
                 "LoadCredential=gemini_api_key:/etc/edged/gemini_api_key",
                 "Restart=on-failure", "RestartPreventExitStatus=78", "WatchdogSec=30s",
                 "ExecReload=/bin/kill -HUP $MAINPID", "StartLimitBurst=6",
                 "OnFailure=edged-retry.timer", "After=network.target sound.target",
                 "MemoryHigh=160M", "MemoryMax=224M", "OOMScoreAdjust=-100",
                 "DeviceAllow=char-dma_heap rw",
                 "ReadWritePaths=-/var/lib/prometheus/node-exporter"):
        assert f"\n{line}\n" in svc, line
    # edged copes offline: it must not wait for the network at boot
    assert "network-online.target" not in svc
    # DeviceAllow= takes device nodes or classes; /dev/dma_heap is a directory on a Pi
    assert not re.search(r"^DeviceAllow=/dev/dma_heap\s", svc, re.M)
    retry = (UNITS / "edged-retry.timer").read_text()
    for line in ("OnActiveSec=30min", "Unit=edged.service", "RemainAfterElapse=no"):
        assert f"\n{line}\n" in retry, line
    assert "[Install]" not in retry          # started by OnFailure= only, never enabled
    # The daemon's graceful stop budget must fit in TimeoutStopSec.
    from edged.config import ControlSettings
    stop_s = int(re.search(r"\nTimeoutStopSec=(\d+)s\n", svc).group(1))  # type: ignore[union-attr]
    assert ControlSettings().stop_timeout_s < stop_s
    sync = (UNITS / "edged-index-sync.service").read_text()
    for line in ("Type=oneshot", "IOSchedulingClass=idle", "Nice=10", "OOMScoreAdjust=500",
                 "MemoryHigh=128M", "MemoryMax=192M",
                 "ReadWritePaths=-/var/lib/prometheus/node-exporter",
                 "ExecStart=/opt/edged/bin/edged-index-sync --config /etc/edged/edged.toml"):
        assert f"\n{line}\n" in sync, line
    timer = (UNITS / "edged-index-sync.timer").read_text()
    for line in ("Persistent=true", "RandomizedDelaySec=90min", "OnCalendar=*-*-* 02:30"):
        assert f"\n{line}\n" in timer, line
    # OTA: an exit 75 (restart to apply an OTA change) is clean and restarted at once.
    for line in ("SuccessExitStatus=75", "RestartForceExitStatus=75"):
        assert f"\n{line}\n" in svc, line
    from edged.daemon.run import EXIT_RESTART
    assert EXIT_RESTART == 75
    pull = (UNITS / "edged-ota-pull.service").read_text()
    for line in ("Type=oneshot", "User=edged",
                 "ExecStart=/opt/edged/bin/edged ota pull --config /etc/edged/edged.toml"):
        assert f"\n{line}\n" in pull, line
    timer = (UNITS / "edged-ota-pull.timer").read_text()
    for line in ("OnUnitActiveSec=1h", "RandomizedDelaySec=15min"):
        assert f"\n{line}\n" in timer, line


def test_device_allow_covers_sound_and_camera_and_names_no_directory() -> None:
    """ALSA plus what libcamera opens: /dev/video* and v4l-subdev (video4linux), /dev/media*,
    /dev/dma_heap/* (class dma_heap). A path to a directory (e.g. /dev/dma_heap) matches no
    device node, so every path entry must be a device node pattern, not a directory."""
    svc = (UNITS / "edged.service").read_text()
    allows = re.findall(r"^DeviceAllow=(\S+) (\w+)$", svc, re.MULTILINE)
    assert "\nDevicePolicy=closed\n" in svc
    assert {(dev, mode) for dev, mode in allows} == {
        ("char-alsa", "rw"), ("char-video4linux", "rw"), ("char-media", "rw"),
        ("char-dma_heap", "rw")}
    for dev, _ in allows:
        assert dev.startswith(("char-", "block-")) or not dev.rstrip("/").endswith(
            ("dma_heap", "dri", "snd", "v4l")), dev
    assert "video" in re.search(r"\nSupplementaryGroups=(.*)\n", svc).group(1)  # type: ignore


@pytest.mark.parametrize("script", ["install-on-pi", "uninstall-from-pi"])
def test_scripts_parse(script: str) -> None:
    res = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_install_dry_run_plans_everything_and_changes_nothing(tmp_path: Path) -> None:
    before = {p: p.exists() for p in (Path("/opt/edged"), Path("/etc/edged"),
                                      Path("/etc/systemd/system/edged.service"))}
    (tmp_path / "k.pub").write_text("# a trusted OTA key\n")
    res = subprocess.run([str(REPO / "scripts" / "install-on-pi"), "--dry-run", "--admin",
                          "root", "--no-api-key", "--ota-key", str(tmp_path / "k.pub")],
                         capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, env=_without_key())
    assert res.returncode == 0, res.stderr
    out = res.stdout
    expected = [
        r"would run: /usr/bin/python3 -m venv --system-site-packages /opt/edged",
        r"would run: /opt/edged/bin/python -m pip install .* " + re.escape(str(REPO)),
        r"would run: install -m 0600 -o root -g root .* /etc/edged/gemini_api_key",
        r"would run: install -m 0640 -o root -g edged \S+/config/edged.example.toml "
        r"/etc/edged/edged.toml",
        r"would run: install -m 0644 \S+/systemd/edged.service /etc/systemd/system/"
        r"edged.service",
        r"would run: systemctl daemon-reload",
        r"would run: systemctl enable edged.service edged-index-sync.timer "
        r"edged-ota-pull.timer",
        r"would run: install -d -m 0755 -o root -g root /etc/edged/ota-keys",
        r"would run: install -m 0644 -o root -g root \S+/k\.pub /etc/edged/ota-keys/k\.pub",
    ]
    if (REPO / "models" / "edged-usem3-static" / "config.json").exists():
        # the default (multilingual) embedder goes with the code, whatever else was built
        expected.append(r"would run: cp -rL \S+/models/edged-usem3-static( \S+)? "
                        r"/var/lib/edged/models/")
    if not shutil.which("getent") or subprocess.run(["getent", "group", "edged"],
                                                   capture_output=True).returncode != 0:
        expected.append(r"would run: groupadd --system edged")
        expected.append(r"would run: useradd --system --gid edged --groups audio\\,video")
    for pattern in expected:
        assert re.search(pattern, out), (pattern, out)
    assert after_state(before) == before


def _without_key() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}


@pytest.mark.skipif(Path("/etc/edged/gemini_api_key").exists(),
                    reason="this machine already has an installed key")
def test_install_refuses_without_a_key_unless_told(tmp_path: Path) -> None:
    res = subprocess.run([str(REPO / "scripts" / "install-on-pi"), "--dry-run", "--admin",
                          "root"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, env=_without_key())
    assert res.returncode == 2
    assert "--api-key-file" in res.stderr and "--no-api-key" in res.stderr
    assert "Nothing was changed" in res.stderr and "would run" not in res.stdout
    empty = tmp_path / "empty"
    empty.write_text("")
    res = subprocess.run([str(REPO / "scripts" / "install-on-pi"), "--dry-run", "--admin",
                          "root", "--api-key-file", str(empty)], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, env=_without_key())
    assert res.returncode == 2 and "empty" in res.stderr
    key = tmp_path / "key"
    key.write_text("AIza-example\n")
    res = subprocess.run([str(REPO / "scripts" / "install-on-pi"), "--dry-run", "--admin",
                          "root", "--api-key-file", str(key)], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, env=_without_key())
    assert res.returncode == 0, res.stderr
    assert f"install -m 0600 -o root -g root {key} /etc/edged/gemini_api_key" in res.stdout


def after_state(before: dict[Path, bool]) -> dict[Path, bool]:
    return {p: p.exists() for p in before}


def test_uninstall_dry_run(tmp_path: Path) -> None:
    res = subprocess.run([str(REPO / "scripts" / "uninstall-from-pi"), "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ("would run: systemctl disable --now edged-ota-pull.timer edged-index-sync.timer "
            "edged.service") in res.stdout
    assert "kept /etc/edged and /var/lib/edged" in res.stdout
