"""Configurations that validate as types but cannot work are refused, by `edged check-config`
and by `edged run` (exit 78, before it opens anything), with the file, key, value and fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.cli import main
from edged.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]
LONG_DIR = "/run/" + "d" * 100
BAD: list[tuple[str, str, str, str]] = [
    # (TOML, key, what the message says is wrong, what it says to do)
    ('[gemini]\napi_key_file = "{tmp}/absent"\n', "gemini.api_key_file", "does not exist",
     "create it"),
    ('[gemini]\napi_key_file = "{tmp}/empty.key"\n', "gemini.api_key_file", "is empty",
     "write the API key"),
    ('[gemini]\napi_key_file = "{tmp}"\n', "gemini.api_key_file", "is a directory",
     "give the file"),
    ('[gemini]\napi_key = "  "\n', "gemini.api_key = <secret>", "is empty",
     "GEMINI_API_KEY"),
    ('[gemini]\nbase_url = "http://127.0.0.1:8765"\n', "gemini.base_url", "https://",
     "TLS"),
    ('[gemini]\nca_file = "{tmp}/absent.pem"\n', "gemini.ca_file", "cannot be read",
     "PEM file"),
    ("[session]\nconnect_timeout_s = inf\n", "session.connect_timeout_s = inf",
     "finite number", "plain number"),
    ("[session]\nstall_timeout_s = nan\n", "session.stall_timeout_s = nan", "finite number",
     "plain number"),
    ("[tools]\ntimeout_s = nan\n", "tools.timeout_s = nan", "finite number", "plain number"),
    ("[session]\nconfig_error_retry_s = 1e12\n", "session.config_error_retry_s",
     "longer than a day", "seconds"),
    (f'[control]\nsocket_path = "{LONG_DIR}/control.sock"\n', "control.socket_path",
     "at most 107", "choose a shorter one"),
    ('[control]\nsocket_path = "run/control.sock"\n', "control.socket_path", "absolute",
     "/run/edged"),
    ('[audio]\ncapture_device = "hw:0\\nplughw:1"\n', "audio.capture_device",
     "control character '\\n'", "one line"),
    ('[audio]\nplayback_device = "spk\\u0000"\n', "audio.playback_device",
     "control character '\\x00'", "one line"),
    ('[audio]\nplayback_device = ""\n', "audio.playback_device", "at least 1 character", ""),
    ('[control]\ngroup = "edged\\n"\n', "control.group", "control character", "one line"),
    ('[metrics]\nhttp_port = 9100\nhttp_host = "0.0.0.0"\n', "[metrics]", "to the network",
     "allow_remote = true"),
    ('[metrics]\nhttp_port = 9100\nhttp_host = "192.168.1.5"\n', "[metrics]",
     "to the network", "127.0.0.1"),
    ("[camera]\nwidth = 100000000\nheight = 100000000\n", "camera.width = 100000000",
     "less than or equal to 4608", ""),
    ("[camera]\nheight = 100000000\n", "camera.height = 100000000",
     "less than or equal to 3040", ""),
]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "empty.key").write_text("\n")
    return tmp_path


@pytest.mark.parametrize(("toml", "key", "wrong", "fix"), BAD,
                         ids=[b[1].split()[0] + ":" + b[2][:20] for b in BAD])
def test_check_config_refuses_what_cannot_work(tmp: Path, toml: str, key: str, wrong: str,
                                               fix: str, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    cfg = tmp / "edged.toml"
    cfg.write_text(toml.format(tmp=tmp))
    assert main(["check-config", "--config", str(cfg), "--override", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    line = next((ln for ln in err.splitlines() if key in ln), "")
    assert line.strip().startswith(f"{cfg}: "), err
    assert wrong in line and fix in line, line


def test_what_works_still_loads(tmp: Path) -> None:
    (tmp / "k").write_text("a-key\n")
    cfg = tmp / "edged.toml"
    cfg.write_text(f'[gemini]\napi_key_file = "{tmp}/k"\nbase_url = "https://127.0.0.1:1"\n'
                   '[metrics]\nhttp_port = 9100\nhttp_host = "::1"\n'
                   '[control]\nsocket_path = "/run/edged/control.sock"\n'
                   '[camera]\nwidth = 4608\nheight = 2592\n')
    s = load_settings(cfg, tmp / "x", env={})
    assert s.api_key() == "a-key"
    remote = tmp / "remote.toml"
    remote.write_text('[metrics]\nhttp_port = 9100\nhttp_host = "0.0.0.0"\nallow_remote = true\n')
    assert load_settings(remote, tmp / "x", env={}).metrics.allow_remote is True
    multi = tmp / "multi.toml"
    multi.write_text('[gemini]\nsystem_instruction = """Eres edged.\n\tResponde breve."""\n')
    assert "\n\t" in load_settings(multi, tmp / "x", env={}).gemini.system_instruction


def test_an_empty_systemd_credential_means_no_key_yet(tmp: Path) -> None:
    (tmp / "creds").mkdir()
    (tmp / "creds" / "gemini_api_key").write_text("")
    s = load_settings(None, tmp / "x", env={"CREDENTIALS_DIRECTORY": str(tmp / "creds")})
    assert s.api_key() is None
    (tmp / "creds" / "gemini_api_key").write_text("the-key\n")
    s = load_settings(None, tmp / "x", env={"CREDENTIALS_DIRECTORY": str(tmp / "creds")})
    assert s.api_key() == "the-key"


def test_the_daemon_refuses_to_start_on_them(tmp: Path) -> None:
    """Exit 78 (EX_CONFIG: the unit does not restart it), the reason in the log and in
    STATUS=, and nothing half-started: no control socket."""
    import socket

    sock_dir = tmp / "run"
    cfg = tmp / "edged.toml"
    cfg.write_text(f'[control]\nsocket_path = "{sock_dir}/control.sock"\n'
                   '[gemini]\nbase_url = "http://gemini.example"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp / "notify.sock"))
        notify.settimeout(30)
        env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY",)}
        proc = subprocess.run([sys.executable, "-m", "edged", "run", "--config", str(cfg),
                               "--override", str(tmp / "x")], capture_output=True, text=True,
                              timeout=120, env={**env, "NOTIFY_SOCKET": str(tmp / "notify.sock")},
                              stdin=subprocess.DEVNULL)
        status = notify.recv(4096).decode()
    assert proc.returncode == 78, proc.stderr
    assert "gemini.base_url = 'http://gemini.example': must be an https:// URL" in proc.stderr
    assert status.startswith("STATUS=invalid configuration: ") and "https://" in status
    assert not sock_dir.exists()


def test_config_errors_never_show_the_key(tmp: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, tmp / "x", env={"GEMINI_API_KEY": "AIza-secret\nvalue"})
    assert "AIza-secret" not in str(e.value) and "gemini.api_key = <secret>" in str(e.value)
