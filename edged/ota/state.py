"""The device's OTA state on disk, written so a kill or power cut leaves the old or the new config.

It lives in the directory of the override file (``/var/lib/edged/config/``, the service's
StateDirectory)::

    current.toml          the OTA layer edged.config reads: the effective bundle's config bytes
    state.json            the commit record (below); the one file that decides what is in effect
    bundles/<N>.bundle    the signed bundles still referenced (committed, and a pending one)

``state.json`` holds the highest version ever accepted (anti-replay), the committed version
(= last good), a pending candidate under trial, and the last result and rollback with why.

Every file is replaced the same way: write a temp file in the same directory, fsync it, rename
it over the target, fsync the directory. So each file is always whole - old or new - and
``state.json`` is the authority: :meth:`OtaStore.boot`, run before the daemon loads its config,
makes ``current.toml`` agree with it, and decides about a candidate that was on trial when the
daemon last stopped:

* stopped without marking a clean stop (crash, watchdog kill, power loss) -> roll back;
* stopped cleanly (a restart the candidate needed, a reboot) -> continue the trial, at most
  :data:`MAX_TRIAL_STARTS` starts.

The order of writes in :meth:`begin`, :meth:`commit` and :meth:`rollback` is chosen so that
this rule alone gives old-or-new at every point; tests kill the process at each named step
(:func:`crash_point`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edged.ota.bundle import Bundle, fmt_time, parse_body, split

log = logging.getLogger("edged.ota")

STATE_FILE = "state.json"
BUNDLES_DIR = "bundles"
MAX_TRIAL_STARTS = 3
CRASH_ENV = "EDGED_OTA_CRASH_AT"     # tests: SIGKILL this process at the named step


def crash_point(step: str) -> None:
    """Test hook: die here, as a power cut would, when ``$EDGED_OTA_CRASH_AT`` names ``step``."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat(
        timespec="seconds")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, step: str, mode: int = 0o640) -> None:
    """Replace ``path`` with ``data`` durably: temp + fsync + rename + fsync(dir)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    crash_point(f"{step}:tmp")
    os.replace(tmp, path)
    crash_point(f"{step}:renamed")
    _fsync_dir(path.parent)


def _remove(path: Path, step: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        crash_point(f"{step}:removed")
        _fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class Boot:
    """What :meth:`OtaStore.boot` did: ``rolled_back`` names why, ``trial`` a continuing one."""

    rolled_back: str | None = None
    trial: int | None = None
    repaired: bool = False


class OtaStore:
    """Reads and writes the OTA state; one per daemon (one writer: the daemon's event loop,
    or ``boot`` before it starts)."""

    def __init__(self, override_path: Path) -> None:
        self.current_path = override_path
        self.dir = override_path.parent
        self.state_path = self.dir / STATE_FILE
        self.bundles = self.dir / BUNDLES_DIR
        self.state: dict[str, Any] = self._read()

    # --- reading ---------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # Never silently reset anti-replay state: keep refusing until a person looks.
            raise OSError(f"{self.state_path}: unreadable OTA state ({e}); move it away to "
                          "reset OTA (every bundle version is then accepted again)") from e
        return data if isinstance(data, dict) else {}

    @property
    def highest_version(self) -> int:
        return int(self.state.get("highest_version") or 0)

    @property
    def committed(self) -> dict[str, Any] | None:
        return self.state.get("committed")

    @property
    def pending(self) -> dict[str, Any] | None:
        return self.state.get("pending")

    @property
    def version(self) -> int | None:
        """The version in effect: the candidate during a trial, else the committed one."""
        cur = self.pending or self.committed
        return None if cur is None else int(cur["version"])

    def bundle_path(self, version: int) -> Path:
        return self.bundles / f"{version}.bundle"

    def config_bytes(self, version: int) -> bytes:
        """The config of a stored bundle (verified when it was accepted)."""
        _, _, body = split(self.bundle_path(version).read_bytes())
        return parse_body(body)[1]

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "highest_version": self.highest_version,
                "committed": self.committed, "pending": self.pending,
                "last_result": self.state.get("last_result"),
                "last_rollback": self.state.get("last_rollback")}

    # --- writing ---------------------------------------------------------------------------

    def _save(self, state: dict[str, Any], step: str) -> None:
        data = json.dumps({**state, "schema": 1}, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.state_path, data, step)
        self.state = state

    def begin(self, bundle: Bundle, window_s: float, trial: dict[str, Any]) -> None:
        """Put a verified, admitted bundle on trial: its file, then the record (the commit
        point: the candidate is accepted and its version can never be applied again), then
        ``current.toml``. ``trial``: what the health window needs after a restart (its
        baseline, the changed sections). The caller reloads the daemon afterwards."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.bundles.mkdir(exist_ok=True, mode=0o750)
        v = bundle.meta.version
        atomic_write(self.bundle_path(v), bundle.raw, "bundle")
        now = time.time()
        self._save({**self.state, "highest_version": v, "pending": {
            "version": v, "key_id": bundle.key_id, "sha256": sha256(bundle.config_bytes),
            "created": fmt_time(bundle.meta.created), "comment": bundle.meta.comment,
            "previous": None if self.committed is None else self.committed["version"],
            "applied_at": iso(now), "deadline": iso(now + window_s), "window_s": window_s,
            "starts": 1, "clean_stop": False, **trial}}, "state-begin")
        atomic_write(self.current_path, bundle.config_bytes, "current-begin")

    def commit(self, note: str = "") -> dict[str, Any]:
        """The candidate passed its health window: it becomes current and last good."""
        p = self.pending
        assert p is not None, "commit without a pending candidate"
        at = iso()
        committed = {k: p.get(k) for k in ("version", "key_id", "sha256", "created", "comment",
                                           "origin")}
        result = {"version": p["version"], "result": "committed", "at": at, "reason": note}
        self._save({**self.state, "committed": {**committed, "committed_at": at},
                    "pending": None, "last_result": result}, "state-commit")
        self._prune()
        return result

    def rollback(self, reason: str) -> dict[str, Any]:
        """Back to the committed version (or to no OTA layer): the record first, then
        ``current.toml`` (a crash in between is repaired by :meth:`boot`)."""
        p = self.pending
        assert p is not None, "rollback without a pending candidate"
        to = None if self.committed is None else self.committed["version"]
        at = iso()
        result = {"version": p["version"], "result": "rolled_back", "at": at, "reason": reason}
        self._save({**self.state, "pending": None, "last_result": result,
                    "last_rollback": {"version": p["version"], "to": to, "at": at,
                                      "reason": reason}}, "state-rollback")
        self._restore_current("current-rollback")
        self._prune()
        return result

    def mark_clean_stop(self) -> None:
        """The daemon is stopping on purpose during a trial: the next start continues it."""
        if self.pending is not None and not self.pending.get("clean_stop"):
            self._save({**self.state, "pending": {**self.pending, "clean_stop": True}},
                       "state-stop")

    def boot(self) -> Boot:
        """Run before the config is loaded: settle a trial the last run left, and make
        ``current.toml`` agree with the record. Idempotent."""
        if not self.state:
            return Boot()
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        p = self.pending
        if p is not None:
            if not p.get("clean_stop"):
                why = (f"edged stopped unexpectedly during the health window of version "
                       f"{p['version']} (crash, watchdog timeout or power loss)")
                self.rollback(why)
                return Boot(rolled_back=why)
            if int(p.get("starts", 1)) >= MAX_TRIAL_STARTS:
                why = (f"version {p['version']} was not confirmed healthy within "
                       f"{MAX_TRIAL_STARTS} starts of edged")
                self.rollback(why)
                return Boot(rolled_back=why)
            self._save({**self.state, "pending": {**p, "starts": int(p.get("starts", 1)) + 1,
                                                  "clean_stop": False}}, "state-boot")
        repaired = self._restore_current("current-boot")
        self._prune()
        return Boot(trial=None if self.pending is None else int(self.pending["version"]),
                    repaired=repaired)

    def _restore_current(self, step: str) -> bool:
        """Make ``current.toml`` hold the config the record says is in effect; True if it
        had to be rewritten."""
        cur = self.pending or self.committed
        try:
            have = self.current_path.read_bytes()
        except FileNotFoundError:
            have = None
        if cur is None:
            if have is None:
                return False
            _remove(self.current_path, step)
            return True
        if have is not None and sha256(have) == cur["sha256"]:
            return False
        atomic_write(self.current_path, self.config_bytes(int(cur["version"])), step)
        return True

    def _prune(self) -> None:
        keep = {f"{c['version']}.bundle" for c in (self.committed, self.pending) if c}
        with contextlib.suppress(FileNotFoundError):
            for f in self.bundles.iterdir():
                if f.name not in keep:
                    f.unlink(missing_ok=True)
