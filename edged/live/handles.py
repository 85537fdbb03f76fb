"""The newest resumption handle on disk, so a restart (a crash, an update) resumes the
conversation instead of starting a new one.

The file holds the handle, the model it belongs to (the server refuses to resume across models)
and when it stops being worth trying: ``HANDLE_TTL_S`` after it was issued, the server's
resumption window, counted from issue time because that is the latest moment we know the
session was alive (so the estimate errs on the early side). A refused or expired handle is
deleted. The file is created 0600 from the start (the handle resumes *this* conversation: it is
as private as the conversation) and replaced atomically, so a crash mid-write leaves either the
old handle or the new one. Writes run in a thread, newest value last, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HANDLE_TTL_S = 7200.0        # resumption handles stay valid 2 h after the session ends
HANDLE_FILE = "live-handle.json"     # in paths.state_dir (the daemon's StateDirectory)


@dataclass(frozen=True, slots=True)
class StoredHandle:
    handle: str
    model: str
    issued_at: float             # epoch seconds
    expires_at: float            # epoch seconds


class HandleStore:
    """``live-handle.json`` in the state directory (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._latest: StoredHandle | None = None
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None

    def load(self, model: str, now: float | None = None) -> StoredHandle | None:
        """The stored handle if it belongs to ``model`` and has not expired; else ``None``
        (an expired or unreadable file is removed, with the reason logged). Blocking: call it
        in a thread."""
        now = time.time() if now is None else now
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            stored = StoredHandle(str(data["handle"]), str(data["model"]),
                                  float(data["issued_at"]), float(data["expires_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring the stored resumption handle %s: %s", self.path, e)
            self._remove()
            return None
        if stored.expires_at <= now:
            log.info("the stored resumption handle expired; starting a new session")
            self._remove()
            return None
        if stored.model != model:
            log.info("the stored resumption handle is for %s, not %s; not resuming",
                     stored.model, model)
            return None
        return stored

    def save(self, handle: str, model: str) -> None:
        """Remember ``handle`` (written in the background; the newest call wins)."""
        issued = time.time()
        self._latest = StoredHandle(handle, model, issued, issued + HANDLE_TTL_S)
        self._schedule()

    def clear(self) -> None:
        """The handle was refused or dropped: nothing to resume after a restart."""
        self._latest = None
        self._schedule()

    async def flush(self) -> None:
        """Wait until the newest value is on disk (at shutdown, and in tests)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    # --- internals -------------------------------------------------------------------------

    def _schedule(self) -> None:
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            latest = self._latest
            try:
                if latest is None:
                    await asyncio.to_thread(self._remove)
                else:
                    await asyncio.to_thread(self._write, latest)
            except OSError as e:
                log.warning("cannot store the resumption handle in %s: %s", self.path, e)

    def _write(self, stored: StoredHandle) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = json.dumps({"handle": stored.handle, "model": stored.model,
                           "issued_at": stored.issued_at, "expires_at": stored.expires_at})
        self.path.parent.mkdir(parents=True, exist_ok=True)   # systemd makes it; by hand, we do
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
