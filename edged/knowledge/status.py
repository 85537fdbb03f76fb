"""Index facts for ``edgectl status``: generation, sizes, counts and the last sync's outcome.

Why it never raises: status is what an operator reads when something is wrong, so a missing or
broken index is reported as data (``available: false`` plus the reason and the fix).
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from edged.config import Settings
from edged.knowledge import store
from edged.knowledge.sync import read_record


def index_status(settings: Settings) -> dict[str, Any]:
    """Plain JSON-able facts about the live index and the last sync run (blocking, fast)."""
    index_dir = settings.knowledge.index_dir
    out: dict[str, Any] = {"index_dir": str(index_dir), "available": False,
                           "last_sync": read_record(settings.sync.state_dir)}
    try:
        gen = store.read_pointer(index_dir)
        if gen is None:
            out["error"] = (f"no index in {index_dir}; run edged-index-sync "
                            "(systemd: edged-index-sync.service)")
            return out
        path = store.db_path(index_dir, gen)
        with contextlib.closing(store.connect_ro(path)) as conn:
            meta = store.read_meta(conn)
            docs = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        out.update(available=True, generation=gen, db_path=str(path),
                   db_bytes=path.stat().st_size, documents=docs, chunks=chunks,
                   embedder=meta.get("embedder"), dims=int(meta.get("dims", 0)),
                   updated_at=meta.get("updated_at"), built_at=meta.get("built_at"))
    except (store.IndexUnavailable, sqlite3.Error, OSError) as e:
        out["error"] = f"index unreadable: {e}"
    return out
