"""The index file format: one SQLite DB per generation (documents, chunks, vec0, FTS5, meta).

Layout of ``index_dir``::

    CURRENT              the live generation number, replaced atomically (tmp+fsync+rename)
    index-000007.db      generation 7, live
    index-000006.db      generation 6, the standby: the previous live one, recycled next
    .sync.lock           held by the one running edged-index-sync

Why generations: the live generation is never written. The sync makes the next one beside it
(normally by renaming the standby and bringing it level with :func:`catch_up`, else a copy via
the SQLite backup API, or from scratch on a rebuild), applies its changes, verifies it, and only
then flips ``CURRENT``. A reader therefore always sees a whole index - old or new - whatever
point a sync is killed at, and no DB is ever renamed over one that is open. Readers hold a
shared flock on the file for each query; the sync takes an exclusive one (:func:`exclusive`)
before it touches the standby, so a query still running on it is never written under.
Recycling writes only the documents that changed in the last two runs, not the whole file.

Lexical side: a contentless FTS5 table over the chunk's Snowball stems in its own language
(``text.index_terms``), tokenized ``unicode61 remove_diacritics 2`` (case and accent folding).
Contentless because the words are already in ``chunks``: storing them twice doubled the file.
A contentless row is deleted by re-sending its indexed values, recomputed from ``chunks`` by the
same code (the stemmer version is in the meta table, so a stemmer change rebuilds instead).

Vector side: each vector twice, small. ``vec_chunks`` (vec0) holds its sign bits (``bit[dims]``,
64 bytes for 512 dims) for a fast Hamming stage that only picks candidates (search.SignMatrix
scans them in memory); ``chunks.vec`` holds
it as int8 (one byte per dimension, scaled to the largest component: cosine does not care) for
exact rescoring of those candidates. float32 vectors at 100k chunks were 200 MB and a 150 ms
brute-force scan.

Word features: ``chunks.terms`` / ``chunks.label`` hold the sorted hashes of the stems of the
whole chunk / of its title and heading (``text.term_hashes``), read by the search instead of
stemming candidate passages again.

Compact generations: ``auto_vacuum = INCREMENTAL`` and an ``incremental_vacuum`` before a
generation is verified, so pages freed by deleted documents leave the file instead of staying
in every later generation. A generation being built is unpublished, so it is written
with an in-memory journal and no syncs; it is fsynced once, whole, before it is published.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_vec

from edged.knowledge.chunking import CHUNKER_VERSION, Chunk
from edged.knowledge.text import TEXT_VERSION, index_terms, term_hashes

SCHEMA_VERSION = "3"
POINTER = "CURRENT"
LOCK_FILE = ".sync.lock"
FTS_TOKENIZER = "unicode61 remove_diacritics 2"
EMBED_BATCH = 256   # chunks embedded and written at a time: memory stays flat for big documents
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
    """A writer connection for an UNPUBLISHED generation (only the sync uses these).

    No reader sees the file until it is verified, fsynced and named by ``CURRENT``, and a run
    killed half-way has its file deleted by the next run, so the journal stays in memory
    (rollback still works) and nothing is synced until the end: every page is written once.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    _load_vec(conn)
    conn.execute("PRAGMA journal_mode=MEMORY")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-4000")   # 4 MB: 16 MB was no faster (make bench)
    return conn


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection: the daemon can never modify the index, even by accident.

    ``immutable=1`` holds by construction: a generation is never written while ``CURRENT``
    names it, and it is recycled only after the sync's exclusive flock (readers hold a shared
    one per query; search.Searcher). It lets the reader skip SQLite's locking and the ``-shm``
    file, so it also works from a read-only directory (a hardened unit with ReadOnlyPaths=).
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
    if dims % 8:
        raise ValueError(f"embedder dims {dims} must be a multiple of 8 (bit vectors)")
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")   # before the first table
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
            text TEXT NOT NULL,
            lang TEXT NOT NULL,
            vec BLOB NOT NULL,
            terms BLOB NOT NULL,
            label BLOB NOT NULL);
        CREATE INDEX chunks_doc ON chunks(doc_id);
        CREATE VIRTUAL TABLE vec_chunks USING vec0(
            chunk_id INTEGER PRIMARY KEY,
            embedding bit[{int(dims)}]);
        CREATE VIRTUAL TABLE fts_chunks USING fts5(
            title, heading, text, content='', tokenize="{FTS_TOKENIZER}");
        CREATE VIRTUAL TABLE fts_vocab USING fts5vocab(fts_chunks, 'row');
    """)
    with transaction(conn):
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
            ("schema_version", SCHEMA_VERSION), ("embedder", embedder), ("dims", str(dims)),
            ("chunker_version", CHUNKER_VERSION), ("fts_tokenizer", FTS_TOKENIZER),
            ("text_version", TEXT_VERSION)])


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
            "chunker_version": CHUNKER_VERSION, "fts_tokenizer": FTS_TOKENIZER,
            "text_version": TEXT_VERSION}
    diffs = [f"{k} {meta.get(k)!r} != {v!r}" for k, v in want.items() if meta.get(k) != v]
    return "; ".join(diffs) or None


def set_meta(conn: sqlite3.Connection, **values: str) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values.items())


def stored_documents(conn: sqlite3.Connection) -> dict[str, DocRow]:
    rows = conn.execute(
        "SELECT source_id, title, content_hash, etag, last_modified, size FROM documents")
    return {r[0]: DocRow(*r) for r in rows}


def bits(vectors: np.ndarray) -> np.ndarray:
    """Sign bits of vectors, packed as ``vec_bit()`` takes them (one row per vector)."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1, bitorder="little")


def int8(vectors: np.ndarray) -> np.ndarray:
    """Vectors as int8 scaled to their largest component (cosine is scale-free)."""
    v = np.asarray(vectors, np.float32)
    peak = np.abs(v).max(axis=-1, keepdims=True)
    return np.round(v * (127.0 / np.where(peak == 0, 1.0, peak))).astype(np.int8)


def _fts_values(title: str, heading: str, text: str, lang: str) -> tuple[str, str, str]:
    return (index_terms(title, lang), index_terms(heading, lang),  # type: ignore[arg-type]
            index_terms(text, lang))  # type: ignore[arg-type]


def _delete_doc_rows(conn: sqlite3.Connection, source_id: str) -> None:
    row = conn.execute("SELECT id, title FROM documents WHERE source_id = ?",
                       (source_id,)).fetchone()
    if row is None:
        return
    doc_id, title = row
    rows = conn.execute("SELECT id, heading, text, lang FROM chunks WHERE doc_id = ?",
                        (doc_id,)).fetchall()
    conn.executemany("DELETE FROM vec_chunks WHERE chunk_id = ?", [(r[0],) for r in rows])
    conn.executemany(
        "INSERT INTO fts_chunks(fts_chunks, rowid, title, heading, text)"
        " VALUES ('delete', ?, ?, ?, ?)",
        [(cid, *_fts_values(title, heading, text, lang)) for cid, heading, text, lang in rows])
    conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
    conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))


def _insert_chunk(conn: sqlite3.Connection, doc_id: int, title_terms: str, ordinal: int,
                  key: str, heading: str, text: str, lang: str, small: bytes,
                  packed: bytes) -> None:
    """One chunk's rows in chunks, vec_chunks and fts_chunks (inside the caller's transaction)."""
    heading_terms = index_terms(heading, lang)  # type: ignore[arg-type]
    text_terms = index_terms(text, lang)  # type: ignore[arg-type]
    cid = conn.execute(
        "INSERT INTO chunks(doc_id, ord, chunk_key, heading, text, lang, vec, terms, label)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (doc_id, ordinal, key, heading, text, lang, small,
         term_hashes(title_terms, heading_terms, text_terms),
         term_hashes(title_terms, heading_terms))).lastrowid
    conn.execute("INSERT INTO vec_chunks(chunk_id, embedding) VALUES (?, vec_bit(?))",
                 (cid, packed))
    conn.execute("INSERT INTO fts_chunks(rowid, title, heading, text) VALUES (?, ?, ?, ?)",
                 (cid, title_terms, heading_terms, text_terms))


def _insert_document(conn: sqlite3.Connection, doc: DocRow, n_chunks: int) -> int:
    cur = conn.execute(
        "INSERT INTO documents(source_id, title, content_hash, etag, last_modified, size,"
        " n_chunks) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (doc.source_id, doc.title, doc.content_hash, doc.etag, doc.last_modified, doc.size,
         n_chunks))
    assert cur.lastrowid is not None
    return cur.lastrowid


def replace_document(conn: sqlite3.Connection, doc: DocRow, chunks: Sequence[Chunk],
                     embed: Callable[[Sequence[Chunk]], np.ndarray]) -> None:
    """Delete + insert one document in ONE transaction (vec0 0.1.9 has no upsert).

    ``embed`` is called on batches of EMBED_BATCH chunks, each written before the next is
    embedded, so a 50 MB document never holds all its vectors in memory at once.
    """
    with transaction(conn):
        _delete_doc_rows(conn, doc.source_id)
        doc_id = _insert_document(conn, doc, len(chunks))
        titles = {lang: index_terms(doc.title, lang) for lang in ("es", "en")}
        for start in range(0, len(chunks), EMBED_BATCH):
            batch = chunks[start:start + EMBED_BATCH]
            vectors = embed(batch)
            if len(vectors) != len(batch):
                raise ValueError(f"{doc.source_id}: {len(batch)} chunks but {len(vectors)} "
                                 "vectors")
            packed, small = bits(vectors), int8(vectors)
            for i, chunk in enumerate(batch):
                _insert_chunk(conn, doc_id, titles[chunk.lang], chunk.ordinal, chunk.key,
                              chunk.heading, chunk.text, chunk.lang, small[i].tobytes(),
                              packed[i].tobytes())


def copy_document(src: sqlite3.Connection, dst: sqlite3.Connection, source_id: str) -> None:
    """Make ``dst`` hold ``src``'s version of one document (ONE transaction): rows are copied,
    nothing is parsed or embedded; the stems for FTS5 are recomputed from the text."""
    row = src.execute("SELECT id, title, content_hash, etag, last_modified, size, n_chunks"
                      " FROM documents WHERE source_id = ?", (source_id,)).fetchone()
    if row is None:
        raise ValueError(f"{source_id}: not in the source generation")
    src_id, title, *rest, n_chunks = row
    chunks = src.execute("SELECT id, ord, chunk_key, heading, text, lang, vec FROM chunks"
                         " WHERE doc_id = ? ORDER BY ord", (src_id,)).fetchall()
    with transaction(dst):
        _delete_doc_rows(dst, source_id)
        doc_id = _insert_document(dst, DocRow(source_id, title, *rest), n_chunks)
        titles = {lang: index_terms(title, lang) for lang in ("es", "en")}
        for cid, ordinal, key, heading, text, lang, small in chunks:
            packed = src.execute("SELECT embedding FROM vec_chunks WHERE chunk_id = ?",
                                 (cid,)).fetchone()[0]
            _insert_chunk(dst, doc_id, titles[lang], ordinal, key, heading, text, lang, small,
                          packed)


def catch_up(src: sqlite3.Connection, dst: sqlite3.Connection) -> int:
    """Make ``dst`` (an older generation) hold exactly ``src``'s documents, copying only those
    that differ by content hash; returns how many were copied or deleted."""
    want = dict(src.execute("SELECT source_id, content_hash FROM documents").fetchall())
    have = dict(dst.execute("SELECT source_id, content_hash FROM documents").fetchall())
    gone = sorted(set(have) - set(want))
    for source_id in gone:
        delete_document(dst, source_id)
    stale = sorted(sid for sid, digest in want.items() if have.get(sid) != digest)
    for source_id in stale:
        copy_document(src, dst, source_id)
    with transaction(dst):
        set_meta(dst, **dict(src.execute(
            "SELECT key, value FROM meta WHERE key IN ('built_at', 'updated_at')").fetchall()))
    return len(gone) + len(stale)


def exclusive(fd: int, wait_s: float) -> bool:
    """Take an exclusive flock on a generation file, waiting up to ``wait_s`` for readers that
    are in the middle of a query (``Searcher`` holds a shared lock for each one)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


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
    # contentless FTS5 has no row count of its own: the document-size table ("docsize") has one
    # row per indexed chunk
    n_fts = conn.execute("SELECT count(*) FROM fts_chunks_docsize").fetchone()[0]
    n_expected = conn.execute("SELECT coalesce(sum(n_chunks), 0) FROM documents").fetchone()[0]
    if not n_chunks == n_vec == n_fts == n_expected:
        raise IndexUnavailable(f"row counts disagree: chunks={n_chunks} vec={n_vec} "
                               f"fts={n_fts} documents.n_chunks={n_expected}")
    probe = conn.execute("SELECT chunk_id, embedding FROM vec_chunks LIMIT 1").fetchone()
    if probe is not None:
        got = conn.execute("SELECT chunk_id FROM vec_chunks WHERE embedding MATCH vec_bit(?)"
                           " AND k = 1",
                           (probe[1],)).fetchone()
        if got is None:
            raise IndexUnavailable("test KNN query returned nothing")
        conn.execute("SELECT rowid FROM fts_chunks WHERE fts_chunks MATCH 'a*' LIMIT 1").fetchall()


def compact(conn: sqlite3.Connection) -> None:
    """Give the pages freed by deleted documents back to the file system (auto_vacuum)."""
    # executescript steps the pragma to the end; execute() stops after its first page
    conn.executescript("PRAGMA incremental_vacuum")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
