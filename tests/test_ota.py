"""OTA bundles without a daemon: the format, every refusal, the health-window rules, and the
on-disk state killed (SIGKILL, as a power cut) at each named step of an apply.

The daemon-level flows (push, pull, rollback on a refused model) are in test_ota_daemon.py.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from edged.config import load_settings
from edged.events import ComponentChanged, DeviceChanged, SessionChanged
from edged.ota.admit import Device, admit, forbidden, path_keys
from edged.ota.bundle import (
    MAX_BUNDLE_BYTES,
    SIG_PREFIX,
    Bundle,
    BundleError,
    Meta,
    make_meta,
    sign,
    verify,
)
from edged.ota.health import Baseline, HealthWindow
from edged.ota.keys import TrustedKeys, generate, key_id
from edged.ota.state import CRASH_ENV, MAX_TRIAL_STARTS, OtaStore

REPO = Path(__file__).resolve().parents[1]
NOW = datetime.now(UTC).replace(microsecond=0)


# --- helpers the daemon tests share ------------------------------------------------------


def make_keys(d: Path, name: str = "owner") -> tuple[SigningKey, Path]:
    """A key pair from ``edged ota keygen``'s code; returns (secret key, keys directory)."""
    from edged.ota.keys import load_signing_key
    secret, _, _ = generate(d, name)
    return load_signing_key(secret), d


def bundle(key: SigningKey, config: str, version: int, *, created: datetime | None = None,
           expires: datetime | None = None, targets: tuple[str, ...] = (),
           min_edged_version: str | None = None) -> bytes:
    created = created or NOW
    meta = make_meta(version, created, expires or created + timedelta(days=30), targets,
                     min_edged_version)
    return sign(config.encode(), meta, key)


def sign_body(key: SigningKey, body: bytes) -> bytes:
    """Sign arbitrary body bytes (to make bundles ``sign`` itself would refuse)."""
    sig = key.sign(body).signature
    return (SIG_PREFIX + key_id(bytes(key.verify_key)).encode() + b" "
            + base64.b64encode(sig) + b"\n" + body)


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` with its bytes: "nothing changed" is this, unchanged."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --- format and refusals -----------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[SigningKey, TrustedKeys]:
    sk, d = make_keys(tmp_path / "keys")
    return sk, TrustedKeys.load(d)


def device(highest: int = 0, **kw: Any) -> Device:
    return Device(kw.get("device_id", "pi-kitchen"), tuple(kw.get("groups", ("beta",))),
                  kw.get("edged_version", "0.1.0"), highest)


def test_round_trip_keeps_config_bytes_verbatim(keys: tuple[SigningKey, TrustedKeys]) -> None:
    sk, trusted = keys
    cfg = '# the beta group speaks with Puck\n[gemini]\nvoice = "Puck"\n'
    raw = bundle(sk, cfg, 42, targets=("group:beta",))
    b = verify(raw, trusted)
    assert b.verified and b.meta.version == 42 and b.meta.targets == ("group:beta",)
    assert b.config_bytes == cfg.encode() and b.config == {"gemini": {"voice": "Puck"}}
    assert b.key_id == key_id(bytes(sk.verify_key))
    settings = admit(b, device(41), NOW, None)
    assert settings.gemini.voice == "Puck"


def test_every_single_byte_flip_is_refused(keys: tuple[SigningKey, TrustedKeys]) -> None:
    """Flip each byte of a bundle in turn: no variant verifies."""
    sk, trusted = keys
    raw = bundle(sk, "[vad]\naggressiveness = 3\n", 7)
    reasons = set()
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(BundleError) as e:
            verify(bytes(bad), trusted)
        reasons.add(e.value.reason)
    assert reasons <= {"bad_signature", "unknown_key", "unsigned"}


REFUSALS: list[tuple[str, str, str]] = [
    # (case, reason, words the message must contain)
    ("flipped byte", "bad_signature", "modified after signing"),
    ("no signature", "unsigned", "not a signed edged OTA bundle"),
    ("unknown key", "unknown_key", "does not trust"),
    ("older version", "replay", "not newer than version 10"),
    ("equal version", "replay", "not newer than version 10"),
    ("expired", "expired", "expired at"),
    ("other device", "not_targeted", "targets device:pi-hall"),
    ("invalid TOML", "invalid_toml", "not valid TOML"),
    ("schema-invalid value", "invalid_config", "vad.aggressiveness = 9"),
    ("forbidden key", "forbidden_key", "control.socket_path"),
    ("oversized", "too_large", f"limit is {MAX_BUNDLE_BYTES}"),
    ("edged too old", "edged_too_old", "needs edged >= 9.0"),
]


def refused_bundle(case: str, sk: SigningKey, stranger: SigningKey) -> bytes:
    """The bundle for one row of :data:`REFUSALS`, against a device at version 10."""
    good = "[vad]\naggressiveness = 3\n"
    if case == "flipped byte":
        raw = bytearray(bundle(sk, good, 11))
        raw[raw.index(b"= 3")+2] = ord("1")               # aggressiveness = 1, same length
        return bytes(raw)
    if case == "no signature":
        return good.encode()
    if case == "unknown key":
        return bundle(stranger, good, 11)
    if case == "older version":
        return bundle(sk, good, 9)
    if case == "equal version":
        return bundle(sk, good, 10)
    if case == "expired":
        return bundle(sk, good, 11, created=NOW - timedelta(days=2),
                      expires=NOW - timedelta(days=1))
    if case == "other device":
        return bundle(sk, good, 11, targets=("device:pi-hall", "group:alpha"))
    if case == "invalid TOML":
        meta = make_meta(11, NOW, NOW + timedelta(days=1))
        return sign_body(sk, ("\n".join(meta.lines()) + "\n\n[vad\naggressiveness = 3\n")
                         .encode())
    if case == "schema-invalid value":
        return bundle(sk, "[vad]\naggressiveness = 9\n", 11)
    if case == "forbidden key":
        return bundle(sk, '[control]\nsocket_path = "/tmp/x.sock"\n', 11)
    if case == "oversized":
        meta = make_meta(11, NOW, NOW + timedelta(days=1))
        pad = "# " + "x" * 98 + "\n"
        return sign_body(sk, ("\n".join(meta.lines()) + "\n\n" + good
                              + pad * (MAX_BUNDLE_BYTES // len(pad))).encode())
    if case == "edged too old":
        return bundle(sk, good, 11, min_edged_version="9.0")
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "reason", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_problem(case: str, reason: str, words: str, tmp_path: Path,
                                   keys: tuple[SigningKey, TrustedKeys]) -> None:
    sk, trusted = keys
    stranger = SigningKey.generate()
    raw = refused_bundle(case, sk, stranger)
    with pytest.raises(BundleError) as e:
        admit(verify(raw, trusted), device(10, device_id="pi-kitchen"), NOW, None)
    assert e.value.reason == reason
    assert words in str(e.value), str(e.value)


def test_forbidden_keys_by_name_and_by_type() -> None:
    paths = path_keys()
    # every filesystem path in the schema, found by type
    assert {"gemini.ca_file", "gemini.api_key_file", "knowledge.index_dir", "sync.state_dir",
            "metrics.textfile", "ota.trusted_keys_dir", "paths.state_dir"} <= paths
    bad = forbidden({"ota": {"health_window_s": 1}, "control": {"group": "x"},
                     "paths": {"state_dir": "/"}, "gemini": {"api_key": "k", "voice": "Puck",
                                                             "ca_file": "/etc/ssl/x.pem"},
                     "knowledge": {"top_k": 3, "local_model": "/x"}, "vad": {"frame_ms": 20}})
    assert [b.split(":")[0] for b in bad] == [
        "ota.health_window_s", "control.group", "paths.state_dir", "gemini.api_key",
        "gemini.ca_file", "knowledge.local_model"]


def test_what_a_bundle_may_change() -> None:
    """The settings an owner changes over the air (voice, prompt, VAD, wake-up timing, model,
    knowledge source) are not forbidden."""
    assert forbidden({"gemini": {"voice": "Puck", "system_instruction": "x", "model": "m",
                                 "language": "en-US", "base_url": "https://gw"},
                      "vad": {"aggressiveness": 3}, "sync": {"source": "https://kb/"},
                      "audio": {"capture_device": "plughw:1"}, "echo": {"policy": "mute"},
                      "knowledge": {"top_k": 3}}) == []


def test_sign_refuses_what_a_device_would(tmp_path: Path) -> None:
    """`edged ota sign` validates before signing: mistakes surface on the laptop."""
    subprocess.run([sys.executable, "-m", "edged", "ota", "keygen", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[vad]\naggressiveness = 9\n[ota]\ndevice_id = \"x\"\n")
    res = subprocess.run([sys.executable, "-m", "edged", "ota", "sign", str(cfg), "--key",
                          str(tmp_path / "edged-ota.key"), "--version", "3"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "ota.device_id: OTA trust settings" in res.stderr, res.stderr
    assert not list(tmp_path.glob("*.bundle"))
    cfg.write_text("[vad]\naggressiveness = 9\n")
    res = subprocess.run([sys.executable, "-m", "edged", "ota", "sign", str(cfg), "--key",
                          str(tmp_path / "edged-ota.key"), "--version", "3"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "vad.aggressiveness = 9" in res.stderr, res.stderr


def test_inspect_shows_signer_validity_and_effective_diff(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "edged", "ota"]
    subprocess.run([*run, "keygen", "--out", str(tmp_path / "k"), "--name", "laptop"],
                   check=True, capture_output=True, timeout=60)
    cfg = tmp_path / "voice.toml"
    cfg.write_text('[gemini]\nvoice = "Puck"\n')
    out = subprocess.run([*run, "sign", str(cfg), "--key", str(tmp_path / "k" / "laptop.key"),
                          "--version", "2026113001", "--expires", "7d", "--target",
                          "group:beta", "--comment", "voice test"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert "voice-v2026113001.bundle: version 2026113001" in out
    current = tmp_path / "current.toml"
    current.write_text("[vad]\naggressiveness = 3\n")
    res = subprocess.run([*run, "inspect", str(tmp_path / "voice-v2026113001.bundle"),
                          "--keys", str(tmp_path / "k"), "--current", str(current)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    assert "signature valid" in text and "version   2026113001" in text
    assert "valid for 6 more days" in text and "targets   group:beta" in text
    assert "gemini.voice: 'Kore' -> 'Puck'" in text
    assert "vad.aggressiveness: 3 -> 2" in text      # the bundle replaces the current layer
    res = subprocess.run([*run, "inspect", str(tmp_path / "voice-v2026113001.bundle")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "NOT CHECKED" in res.stdout


def test_trusted_keys_skip_writable_files_and_rotate(tmp_path: Path) -> None:
    old, d = make_keys(tmp_path / "keys", "old")
    new, _ = make_keys(tmp_path / "keys", "new")
    trusted = TrustedKeys.load(d)
    assert set(trusted.keys) == {key_id(bytes(old.verify_key)), key_id(bytes(new.verify_key))}
    (d / "new.pub").chmod(0o666)
    trusted = TrustedKeys.load(d)
    assert set(trusted.keys) == {key_id(bytes(old.verify_key))}
    assert "writable by group or others" in trusted.problems[0]


# --- health window -----------------------------------------------------------------------


def window(baseline: Baseline, changed: list[str], session: str = "ready",
           capture: str = "running") -> HealthWindow:
    return HealthWindow(baseline, changed, session, {"capture": (capture, None)},
                        {"session": ("ok", ""), "knowledge": ("ok", "")})


def test_health_config_error_fails_at_once() -> None:
    w = window(Baseline(True, {"capture": True}, frozenset({"session"})), ["gemini"])
    assert w.observe(SessionChanged("connecting")) is None
    why = w.observe(SessionChanged("config_error", "1008: models/x is not found"))
    assert why is not None and "1008" in why


def test_health_blames_only_what_the_bundle_could_break() -> None:
    offline = Baseline(False, {"capture": False}, frozenset())
    w = window(offline, ["gemini", "vad"], session="backoff", capture="retrying")
    w.observe(SessionChanged("backoff", "network: no route"))
    assert w.verdict() is None          # offline and no sound card before: not the bundle
    online = Baseline(True, {"capture": True}, frozenset({"knowledge"}))
    w = window(online, ["vad"])
    w.observe(SessionChanged("backoff", "network"))
    assert w.verdict() is None          # a network blip: the bundle did not touch the session
    w = window(online, ["gemini"])
    w.observe(SessionChanged("backoff", "network"))
    assert "did not come back" in (w.verdict() or "")
    w = window(offline, ["audio"], capture="retrying")
    w.observe(DeviceChanged("capture", "nope", "retrying", "cannot open capture device 'nope'"))
    assert "cannot open capture device 'nope'" in (w.verdict() or "")
    w = window(online, [])
    w.observe(ComponentChanged("knowledge", "degraded", "search tool unavailable"))
    assert "knowledge is degraded" in (w.verdict() or "")


# --- the state on disk, killed at each step ---------------------------------------------


def admin_file(d: Path) -> Path:
    p = d / "edged.toml"
    p.write_text("[vad]\naggressiveness = 1\n")
    return p


def effective(admin: Path, store: OtaStore) -> int:
    return load_settings(admin, store.current_path, env={}).vad.aggressiveness


_WORKER = r"""
import sys, json
from pathlib import Path
from edged.ota.bundle import split, parse_body, Bundle
from edged.ota.state import OtaStore
store = OtaStore(Path(sys.argv[1]))
op = sys.argv[2]
if op == "begin":
    raw = Path(sys.argv[3]).read_bytes()
    kid, _, body = split(raw)
    meta, cfg, config = parse_body(body)
    store.begin(Bundle(raw, kid, meta, cfg, config, True), 60.0, {"changed": ["vad"]})
elif op == "commit":
    store.commit("healthy")
elif op == "rollback":
    store.rollback("test")
elif op == "stop":
    store.mark_clean_stop()
elif op == "boot":
    store.boot()
print("done")
"""


def run_step(current: Path, op: str, *args: str, crash: str | None = None) -> int:
    env = {**os.environ, CRASH_ENV: crash or ""}
    return subprocess.run([sys.executable, "-c", _WORKER, str(current), op, *args], env=env,
                          capture_output=True, timeout=60, cwd=REPO).returncode


# (operation, step) pairs; each kill must leave old (aggressiveness 2) or new (3).
CRASH_STEPS = [
    ("begin", "bundle:tmp"), ("begin", "bundle:renamed"), ("begin", "state-begin:tmp"),
    ("begin", "state-begin:renamed"), ("begin", "current-begin:tmp"),
    ("begin", "current-begin:renamed"), ("commit", "state-commit:tmp"),
    ("commit", "state-commit:renamed"), ("rollback", "state-rollback:tmp"),
    ("rollback", "state-rollback:renamed"), ("rollback", "current-rollback:tmp"),
    ("rollback", "current-rollback:renamed"), ("stop", "state-stop:tmp"),
    ("boot", "state-rollback:tmp"), ("boot", "current-rollback:renamed"),
]


@pytest.mark.parametrize(("op", "step"), CRASH_STEPS, ids=[f"{o}-{s}" for o, s in CRASH_STEPS])
def test_sigkill_at_each_step_leaves_old_or_new(op: str, step: str, tmp_path: Path) -> None:
    sk, _ = make_keys(tmp_path / "keys")
    admin = admin_file(tmp_path)
    current = tmp_path / "ota" / "current.toml"
    old, new = tmp_path / "old.bundle", tmp_path / "new.bundle"
    old.write_bytes(bundle(sk, "[vad]\naggressiveness = 2\n", 1))
    new.write_bytes(bundle(sk, "# candidate\n[vad]\naggressiveness = 3\n", 2))
    assert run_step(current, "begin", str(old)) == 0 and run_step(current, "commit") == 0
    if op != "begin":
        assert run_step(current, "begin", str(new)) == 0
    if op == "boot":           # a crash during the window: the start rolls back ... killed
        args: tuple[str, ...] = ()
    else:
        args = (str(new),) if op == "begin" else ()
    rc = run_step(current, op, *args, crash=step)
    assert rc == -signal.SIGKILL, f"the process was not killed at {step} (rc {rc})"
    # restart: boot settles the state before the config is read
    store = OtaStore(current)
    store.boot()
    value = effective(admin, store)
    assert value in (2, 3)
    assert store.pending is None or store.pending["clean_stop"] is False
    # the record and the file agree, and a second boot changes nothing
    assert value == {1: 2, 2: 3}[store.version]     # type: ignore[index]
    before = snapshot(current.parent)
    OtaStore(current).boot()
    assert snapshot(current.parent) == before
    assert not list(current.parent.glob(".*.tmp"))
    # anti-replay survives every crash after the trial was recorded
    if op != "begin" or step.startswith(("state-begin:renamed", "current-begin")):
        assert store.highest_version == 2


def test_clean_stop_continues_the_trial_a_crash_rolls_it_back(tmp_path: Path) -> None:
    sk, _ = make_keys(tmp_path / "keys")
    admin = admin_file(tmp_path)
    current = tmp_path / "ota" / "current.toml"
    (tmp_path / "new.bundle").write_bytes(bundle(sk, "[vad]\naggressiveness = 3\n", 5))
    assert run_step(current, "begin", str(tmp_path / "new.bundle")) == 0
    store = OtaStore(current)
    for start in range(2, MAX_TRIAL_STARTS + 1):
        store.mark_clean_stop()
        boot = OtaStore(current).boot()
        store = OtaStore(current)
        assert boot.trial == 5 and store.pending["starts"] == start    # type: ignore[index]
        assert effective(admin, store) == 3
    store.mark_clean_stop()
    boot = OtaStore(current).boot()
    assert boot.rolled_back and "within 3 starts" in boot.rolled_back
    store = OtaStore(current)
    assert store.version is None and not current.exists()
    assert effective(admin, store) == 1                       # the admin file alone
    assert store.state["last_rollback"]["to"] is None
    assert json.loads((current.parent / "state.json").read_text())["highest_version"] == 5


def test_meta_lines_round_trip() -> None:
    m = Meta(3, NOW, NOW + timedelta(hours=1), ("device:a",), "0.1", "hi")
    sk = SigningKey.generate()
    raw = sign(b"", m, sk)
    trusted = TrustedKeys({key_id(bytes(sk.verify_key)): sk.verify_key}, Path("."))
    b: Bundle = verify(raw, trusted)
    assert b.meta == m and b.config == {}


def test_unreadable_state_is_never_silently_reset(tmp_path: Path) -> None:
    """Forgetting state.json would accept every old version again: refuse and say how."""
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(OSError, match="move it away to reset OTA"):
        OtaStore(tmp_path / "current.toml")
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[control]\nsocket_path = "{tmp_path}/c.sock"\n'
                   f'[paths]\nstate_dir = "{tmp_path}/state"\n')
    res = subprocess.run([sys.executable, "-m", "edged", "run", "--config", str(cfg),
                          "--override", str(tmp_path / "current.toml")], capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID")})
    assert res.returncode == 78 and "unreadable OTA state" in res.stderr, res.stderr


def test_pull_url_must_be_https() -> None:
    from edged.config import ConfigError
    with pytest.raises(ConfigError, match="pull_url must start with https://"):
        load_settings(Path(os.devnull), Path(os.devnull), env={},
                      extra={"ota": {"pull_url": "http://example.org/b"}})


def test_edgectl_refuses_an_oversized_file_without_sending_it(tmp_path: Path) -> None:
    big = tmp_path / "big.bundle"
    big.write_bytes(b"x" * (MAX_BUNDLE_BYTES + 1))
    res = subprocess.run([sys.executable, "-m", "edged.edgectl", "--socket",
                          str(tmp_path / "none.sock"), "ota", "apply", str(big)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and f"at most {MAX_BUNDLE_BYTES}" in res.stderr


def test_pull_code_runs_with_write_xor_execute_memory(tmp_path: Path) -> None:
    """edged-ota-pull.service sets MemoryDenyWriteExecute=yes: the code it runs (TLS set-up,
    PyNaCl verification) must work without W+X memory. PR_SET_MDWE (Linux >= 6.3) enforces
    the same rule on this process as systemd's filter does."""
    sk, d = make_keys(tmp_path / "keys")
    (tmp_path / "b.bundle").write_bytes(bundle(sk, "[vad]\naggressiveness = 3\n", 1))
    code = f"""
import ctypes, mmap, sys
from pathlib import Path
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    print("unsupported"); sys.exit(0)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("not enforced"); sys.exit(1)
except OSError:
    pass
from edged.ota.pull import ssl_context
from edged.ota.bundle import verify
from edged.ota.keys import TrustedKeys
ssl_context(None)
print(verify(Path({str(tmp_path / 'b.bundle')!r}).read_bytes(),
             TrustedKeys.load(Path({str(d)!r}))).meta.version)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    if res.stdout.strip() == "unsupported":
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert res.returncode == 0 and res.stdout.strip() == "1", res.stdout + res.stderr


def test_pull_url_credentials_are_never_shown() -> None:
    from edged.ota.pull import shown_url
    assert shown_url("https://host.example/f.bundle") == "https://host.example/f.bundle"
    assert shown_url("https://u:pw@host.example:8443/f.bundle?X-Amz-Signature=abc#x") == \
        "https://host.example:8443/f.bundle?…"
