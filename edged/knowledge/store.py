"""The index file format: one SQLite DB per generation (documents, chunks, vec0, FTS5, meta).

Layout of ``index_dir``::

    CURRENT              the live generation number, replaced atomically (tmp+fsync+rename)
    index-000007.db      generation 7 (WAL mode while it is being built)
    .sync.lock           held by the one running edged-index-sync

Why generations: a published generation is never written again. The sync builds the next one
beside it (copy via the SQLite backup API, then incremental transactions, or from scratch on a
rebuild), verifies it, and only then flips ``CURRENT``. A reader therefore always sees a whole
index - old or new - whatever point a sync is killed at, and no DB is ever renamed over one
that is open (edge_ops.md §4).

FTS5 tokenizer: ``unicode61 remove_diacritics 2`` - Unicode-aware word splitting and case
folding for Spanish and English, and accent folding (also of letters with several diacritics),
so "informacion" finds "información" and "GOBERNANZA" finds "gobernanza". Porter stemming is
English-only and would mangle Spanish, so plurals are handled by prefix queries instead (see
``search.fts_query``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_vec

from edged.knowledge.chunking import CHUNKER_VERSION, Chunk

SCHEMA_VERSION = "1"
POINTER = "CURRENT"
LOCK_FILE = ".sync.lock"
FTS_TOKENIZER = "unicode61 remove_diacritics 2"
_GEN_FILE = re.compile(r"^index-(\d{6,})\.db$")


class IndexUnavailable(RuntimeError):
    """No usable index (none built yet, wrong embedder, unreadable); the message says the fix."""


@dataclass(frozen=True, slots=True)
class DocRow:
    source_id: str
    title: str
    content_hash: str
    etag: str | None
    last_modified: str | None
    size: int


def db_path(index_dir: Path, generation: int) -> Path:
    return index_dir / f"index-{generation:06d}.db"


def generation_of(path: Path) -> int | None:
    m = _GEN_FILE.match(path.name)
    return int(m.group(1)) if m else None


def read_pointer(index_dir: Path) -> int | None:
    """The live generation, or None if no index has been published yet."""
    try:
        text = (index_dir / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        raise IndexUnavailable(f"{index_dir / POINTER}: corrupt pointer {text[:40]!r}; "
                               "run edged-index-sync --full to rebuild") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, step: Callable[[str], None] | None = None) -> None:
    """Write a file so a crash leaves either the old or the new content: tmp, fsync, rename.

    ``step`` is called between the stages (the sync's crash-test checkpoints).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if step:
        step("tmp-written")
    tmp.replace(path)
    if step:
        step("renamed")
    fsync_dir(path.parent)


def write_pointer(index_dir: Path, generation: int,
                  step: Callable[[str], None] | None = None) -> None:
    atomic_write(index_dir / POINTER, f"{generation}\n".encode(), step)


def _load_vec(conn: sqlite3.Connection) -> None:
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)


def connect_rw(path: Path) -> sqlite3.Connection:
    """A writer connection (only the sync uses these), WAL, manual transactions."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    _load_vec(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection: the daemon can never modify the index, even by accident.

    ``immutable=1`` is true by construction: a published generation is checkpointed (empty WAL)
    and never written again. It lets the reader skip locking and the ``-shm`` file, so it also
    works from a read-only directory (a hardened unit with ReadOnlyPaths=).
    """
    if not path.exists():
        raise IndexUnavailable(f"index file {path} is missing")
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None,
                           check_same_thread=False)
    try:
        _load_vec(conn)
        conn.execute("PRAGMA busy_timeout=2000")
    except Exception:
        conn.close()
        raise
    return conn


def create_schema(conn: sqlite3.Connection, embedder: str, dims: int) -> None:
    """Tables of a fresh generation (unpublished until verified, so no transaction needed)."""
    conn.executescript(f"""
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE documents(
            id INTEGER PRIMARY KEY,
            source_id TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            etag TEXT,
            last_modified TEXT,
            size INTEGER NOT NULL,
            n_chunks INTEGER NOT NULL,
            updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')));
        CREATE TABLE chunks(
            id INTEGER PRIMARY KEY,
            doc_id INTEGER NOT NULL REFERENCES documents(id),
            ord INTEGER NOT NULL,
            chunk_key TEXT NOT NULL UNIQUE,
            heading TEXT NOT NULL,
            text TEXT NOT NULL);
        CREATE INDEX chunks_doc ON chunks(doc_id);
        CREATE VIRTUAL TABLE vec_chunks USING vec0(
            chunk_id INTEGER PRIMARY KEY,
            embedding float[{int(dims)}] distance_metric=cosine);
        CREATE VIRTUAL TABLE fts_chunks USING fts5(
            title, heading, text, tokenize="{FTS_TOKENIZER}");
    """)
    with transaction(conn):
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
            ("schema_version", SCHEMA_VERSION), ("embedder", embedder), ("dims", str(dims)),
            ("chunker_version", CHUNKER_VERSION), ("fts_tokenizer", FTS_TOKENIZER)])


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        raise IndexUnavailable(f"index has no readable meta table ({e}); "
                               "run edged-index-sync --full") from e


def incompatibility(meta: dict[str, str], embedder: str, dims: int) -> str | None:
    """Why an index cannot be reused with this embedder/chunker/schema, or None if it can."""
    want = {"schema_version": SCHEMA_VERSION, "embedder": embedder, "dims": str(dims),
            "chunker_version": CHUNKER_VERSION, "fts_tokenizer": FTS_TOKENIZER}
    diffs = [f"{k} {meta.get(k)!r} != {v!r}" for k, v in want.items() if meta.get(k) != v]
    return "; ".join(diffs) or None


def set_meta(conn: sqlite3.Connection, **values: str) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values.items())


def stored_documents(conn: sqlite3.Connection) -> dict[str, DocRow]:
    rows = conn.execute(
        "SELECT source_id, title, content_hash, etag, last_modified, size FROM documents")
    return {r[0]: DocRow(*r) for r in rows}


def _delete_doc_rows(conn: sqlite3.Connection, source_id: str) -> None:
    row = conn.execute("SELECT id FROM documents WHERE source_id = ?", (source_id,)).fetchone()
    if row is None:
        return
    ids = [(cid,) for (cid,) in conn.execute("SELECT id FROM chunks WHERE doc_id = ?", row)]
    conn.executemany("DELETE FROM vec_chunks WHERE chunk_id = ?", ids)
    conn.executemany("DELETE FROM fts_chunks WHERE rowid = ?", ids)
    conn.execute("DELETE FROM chunks WHERE doc_id = ?", row)
    conn.execute("DELETE FROM documents WHERE id = ?", row)


def replace_document(conn: sqlite3.Connection, doc: DocRow, chunks: Sequence[Chunk],
                     vectors: np.ndarray) -> None:
    """Delete + insert one document in ONE transaction (vec0 0.1.9 has no upsert)."""
    if len(chunks) != len(vectors):
        raise ValueError(f"{doc.source_id}: {len(chunks)} chunks but {len(vectors)} vectors")
    with transaction(conn):
        _delete_doc_rows(conn, doc.source_id)
        cur = conn.execute(
            "INSERT INTO documents(source_id, title, content_hash, etag, last_modified, size,"
            " n_chunks) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (doc.source_id, doc.title, doc.content_hash, doc.etag, doc.last_modified, doc.size,
             len(chunks)))
        doc_id = cur.lastrowid
        for chunk, vec in zip(chunks, vectors, strict=True):
            cid = conn.execute(
                "INSERT INTO chunks(doc_id, ord, chunk_key, heading, text) VALUES (?, ?, ?, ?, ?)",
                (doc_id, chunk.ordinal, chunk.key, chunk.heading, chunk.text)).lastrowid
            conn.execute("INSERT INTO vec_chunks(chunk_id, embedding) VALUES (?, ?)",
                         (cid, np.asarray(vec, np.float32).tobytes()))
            conn.execute("INSERT INTO fts_chunks(rowid, title, heading, text) VALUES (?, ?, ?, ?)",
                         (cid, doc.title, chunk.heading, chunk.text))


def delete_document(conn: sqlite3.Connection, source_id: str) -> None:
    with transaction(conn):
        _delete_doc_rows(conn, source_id)


def verify(conn: sqlite3.Connection) -> None:
    """Refuse to publish a generation that is not whole: integrity, meta, row counts, queries."""
    ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
    if ok != "ok":
        raise IndexUnavailable(f"integrity_check failed: {ok}")
    meta = read_meta(conn)
    for key in ("schema_version", "embedder", "dims", "chunker_version"):
        if key not in meta:
            raise IndexUnavailable(f"meta key {key!r} missing")
    n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    n_vec = conn.execute("SELECT count(*) FROM vec_chunks").fetchone()[0]
    n_fts = conn.execute("SELECT count(*) FROM fts_chunks").fetchone()[0]
    n_expected = conn.execute("SELECT coalesce(sum(n_chunks), 0) FROM documents").fetchone()[0]
    if not n_chunks == n_vec == n_fts == n_expected:
        raise IndexUnavailable(f"row counts disagree: chunks={n_chunks} vec={n_vec} "
                               f"fts={n_fts} documents.n_chunks={n_expected}")
    probe = conn.execute("SELECT chunk_id, embedding FROM vec_chunks LIMIT 1").fetchone()
    if probe is not None:
        got = conn.execute("SELECT chunk_id FROM vec_chunks WHERE embedding MATCH ? AND k = 1",
                           (probe[1],)).fetchone()
        if got is None:
            raise IndexUnavailable("test KNN query returned nothing")
        conn.execute("SELECT rowid FROM fts_chunks WHERE fts_chunks MATCH 'a*' LIMIT 1").fetchall()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
