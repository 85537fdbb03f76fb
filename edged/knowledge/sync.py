"""edged-index-sync: bring the knowledge index up to date with its source, crash-safely.

Run nightly by a systemd timer and by hand. Every run that changes anything makes a NEW
generation (``index-<gen>.db``) beside the live one - the standby (the previous live generation)
renamed and brought level with the live one, or a copy through the SQLite backup API when there
is no usable standby, or an empty DB for a rebuild - applies the changes (each document's
delete+insert in one transaction), compacts and verifies it (integrity_check, meta, row counts, a
test KNN and FTS query), fsyncs it, and only then flips the ``CURRENT`` pointer (tmp + fsync +
rename + fsync dir). The old live generation becomes the standby. The daemon's searcher
notices the pointer change before its next query. A run killed at any point leaves ``CURRENT``
naming a complete, verified generation; the next run deletes the leftovers. A run with nothing
to change writes nothing but its result record.

Incremental by content hash: unchanged documents are neither parsed nor embedded. An embedder,
chunker, tokenizer or schema change (meta mismatch) or ``--full`` rebuilds from scratch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from edged.config import ConfigError, Settings, load_settings
from edged.knowledge import store
from edged.knowledge.chunking import Chunk, DocumentError, ParsedDoc, kind_of, parse
from edged.knowledge.embedders import Embedder, EmbedderError, make_embedder
from edged.knowledge.sources import FetchError, Listed, Source, SourceUnreachable, open_source

log = logging.getLogger("edged.knowledge.sync")

EXIT_OK = 0            # index up to date (changed or not)
EXIT_SKIPPED = 1       # completed, but some documents were skipped (see "errors")
EXIT_USAGE = 2         # bad command line or configuration
EXIT_LOCKED = 3        # another edged-index-sync holds the lock; nothing done
EXIT_UNREACHABLE = 4   # the source could not be listed; index unchanged
EXIT_FAILED = 5        # embedder or verification failure; the live index is unchanged

EXIT_CODES_HELP = """exit codes:
  0  index up to date (whether or not anything changed)
  1  completed, but some documents were skipped (listed in the result record's "errors")
  2  usage or configuration error
  3  another sync is running (lock held); nothing was done
  4  source unreachable (directory missing, manifest not fetchable); index unchanged
  5  failed (embedder unavailable, new generation failed verification); index unchanged
"""

RECORD_FILE = "last-sync.json"
READER_WAIT_S = 10.0   # how long a recycling run waits for a query still running on the standby
KILL_ENV = "EDGED_SYNC_KILL_AT"   # test hook: SIGKILL this process at checkpoint N


class SyncLocked(RuntimeError):
    pass


class UsageError(ValueError):
    pass


@dataclass
class SyncResult:
    time: str
    source: str
    index_dir: str
    status: str = "ok"
    exit_code: int = EXIT_OK
    generation: int | None = None
    previous_generation: int | None = None
    rebuilt: bool = False
    rebuild_reason: str | None = None
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    documents: int = 0
    chunks: int = 0
    chunks_embedded: int = 0
    db_bytes: int = 0
    duration_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    last_success: str | None = None


class _Checkpoints:
    """Numbered points where a crash test may kill the run (``EDGED_SYNC_KILL_AT=N``).

    Why in production code: SIGKILL at an exact step is the only honest way to prove the
    crash-safety claim, and a counter costs nothing when the variable is unset.
    """

    def __init__(self) -> None:
        self.count = 0
        target = os.environ.get(KILL_ENV, "")
        self.kill_at = int(target) if target.isdigit() else None

    def __call__(self, name: str) -> None:
        self.count += 1
        if self.count == self.kill_at:
            log.warning("test hook: SIGKILL at checkpoint %d (%s)", self.count, name)
            os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def sync_lock(index_dir: Path) -> Iterator[None]:
    """One run at a time: an fcntl lock the kernel releases even if the run is SIGKILLed."""
    fd = os.open(index_dir / store.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise SyncLocked(f"another edged-index-sync is running on {index_dir} "
                             f"(pid {holder or '?'}); try again later") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _remove_db_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def _cleanup(index_dir: Path, live: int | None, standby: bool = True) -> tuple[int, Path | None]:
    """Delete every generation file but the live one and, if ``standby``, the newest older one
    (the previous live generation, kept to be recycled by the next changing run); leftovers of
    killed runs are newer than the live one and always go.

    Returns the highest generation number seen (numbers only ever grow) and the standby's path.
    Deleting a file a reader still has open is safe on Linux: its descriptor keeps the data
    until it reopens.
    """
    highest = live or 0
    older: dict[int, list[Path]] = {}
    for p in index_dir.iterdir():
        base = p.name.split("-wal")[0].split("-shm")[0].split("-journal")[0]
        gen = store.generation_of(Path(base))
        if gen is None:
            if p.name == f".{store.POINTER}.tmp":
                p.unlink()
            continue
        highest = max(highest, gen)
        if gen != live:
            older.setdefault(gen, []).append(p)
    keep = max((g for g in older if live is not None and g < live), default=None) \
        if standby else None
    if keep is not None and older[keep] != [store.db_path(index_dir, keep)]:
        keep = None   # a journal beside it: not a cleanly published file, do not reuse it
    for gen, paths in older.items():
        if gen != keep:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    return highest, (store.db_path(index_dir, keep) if keep is not None else None)


def _recycle(standby: Path, path: Path, live: sqlite3.Connection, emb: Embedder,
             cp: _Checkpoints) -> sqlite3.Connection | None:
    """The next generation made from the standby (the previous live generation): renamed to
    ``path``, then brought level with the live one by copying the documents that differ. Only
    the last run's changes are written, never the whole index. None if the standby cannot be
    used (built for another embedder, unreadable, or a reader still in a query on it after
    READER_WAIT_S): the caller copies the live generation instead."""
    fd = os.open(standby, os.O_RDONLY)
    try:
        if not store.exclusive(fd, READER_WAIT_S):
            log.warning("a reader is still using %s; copying the live generation instead",
                        standby.name)
            return None
        try:
            with contextlib.closing(store.connect_ro(standby)) as probe:
                why = store.incompatibility(store.read_meta(probe), emb.name, emb.dims)
        except (store.IndexUnavailable, sqlite3.Error) as e:
            why = str(e)
        if why:
            log.info("standby %s not reusable (%s)", standby.name, why)
            return None
        standby.rename(path)   # from here on a killed run leaves a leftover the next deletes
        store.fsync_dir(path.parent)
        cp("standby-renamed")
        conn = store.connect_rw(path)
        n = store.catch_up(live, conn)
        log.info("recycled %s as %s: %d documents brought level", standby.name, path.name, n)
        cp("standby-caught-up")
        return conn
    finally:
        os.close(fd)


def _embed_text(title: str, heading: str, text: str) -> str:
    """What gets embedded: the chunk with its title and heading, for context-free chunks."""
    return "\n".join(part for part in (title, heading, text) if part)


def run_sync(settings: Settings, *, source: str | None = None, index_dir: Path | None = None,
             full: bool = False, embedder: Embedder | None = None) -> SyncResult:
    """One sync run. Raises UsageError, SyncLocked, SourceUnreachable, EmbedderError,
    store.IndexUnavailable (verification); the live index is unchanged whenever it raises."""
    start = time.monotonic()
    index_dir = index_dir or settings.knowledge.index_dir
    spec = source or settings.sync.source
    if not spec:
        raise UsageError("no source: set sync.source in the config or pass --source DIR_OR_URL")
    src = open_source(spec, settings.sync.http_timeout_s)
    result = SyncResult(time=datetime.now(UTC).isoformat(timespec="seconds"),
                        source=src.description, index_dir=str(index_dir))
    index_dir.mkdir(parents=True, exist_ok=True)
    cp = _Checkpoints()
    with sync_lock(index_dir):
        cp("locked")
        try:
            current = store.read_pointer(index_dir)
        except store.IndexUnavailable as e:
            log.warning("%s; rebuilding", e)
            current = None
        highest, standby = _cleanup(index_dir, current)
        cp("cleaned-leftovers")
        emb = embedder or make_embedder(settings)
        old = None
        if current is not None:
            try:
                old = store.connect_ro(store.db_path(index_dir, current))
                store.read_meta(old)
            except (store.IndexUnavailable, sqlite3.Error) as e:
                # A live generation that cannot be read is replaced, not left serving errors.
                log.warning("live generation %d unreadable (%s); rebuilding", current, e)
                if old is not None:
                    old.close()
                old = None
        try:
            _sync_into(settings, src, index_dir, old, current, standby, highest, full, emb,
                       result, cp)
        finally:
            if old is not None:
                old.close()
    result.duration_s = round(time.monotonic() - start, 3)
    return result


@dataclass
class _Plan:
    """What a run is allowed to do, decided before any document is read."""

    reuse: bool                       # incremental on a copy of the live generation
    stored: dict[str, store.DocRow]   # what the live generation holds (empty on rebuild)
    max_bytes: int


def _prepare(src: Source, item: Listed, plan: _Plan,
             result: SyncResult) -> tuple[store.DocRow, ParsedDoc] | None:
    """Decide one listed document: None if unchanged or skipped (counted), else what to write."""
    prev = plan.stored.get(item.source_id)

    def skip(msg: str) -> None:
        kept = " (previous version kept)" if prev is not None and plan.reuse else ""
        result.errors.append(msg + kept)
        result.skipped += 1
        log.warning("skipped %s%s", msg, kept)

    if kind_of(item.source_id) is None:
        skip(f"{item.source_id}: unsupported type (index .md, .txt, .html)")
        return None
    if item.size is not None and item.size > plan.max_bytes:
        skip(f"{item.source_id}: {item.size} bytes exceeds sync.max_doc_bytes={plan.max_bytes}")
        return None
    reused = prev if plan.reuse else None
    if reused is not None and ((item.sha256 and item.sha256 == reused.content_hash)
                               or (item.etag and item.etag == reused.etag)):
        result.unchanged += 1
        return None
    try:
        fetched = src.fetch(item, reused, plan.max_bytes)
    except FetchError as e:
        skip(str(e))
        return None
    if fetched.data is None:   # 304 Not Modified (conditional headers only sent when reusing)
        result.unchanged += 1
        return None
    if len(fetched.data) > plan.max_bytes:
        skip(f"{item.source_id}: larger than sync.max_doc_bytes={plan.max_bytes}")
        return None
    digest = hashlib.sha256(fetched.data).hexdigest()
    if reused is not None and reused.content_hash == digest:
        result.unchanged += 1
        return None
    try:
        parsed = parse(item.source_id, fetched.data)
    except DocumentError as e:
        skip(str(e))
        return None
    if prev is None:
        result.added += 1
    elif prev.content_hash != digest:
        result.changed += 1
    else:
        result.unchanged += 1   # same content, re-embedded only because of a rebuild
    return (store.DocRow(item.source_id, parsed.title, digest, fetched.etag,
                         fetched.last_modified, len(fetched.data)), parsed)


def _sync_into(settings: Settings, src: Source, index_dir: Path, old: sqlite3.Connection | None,
               current: int | None, standby: Path | None, highest: int, full: bool,
               emb: Embedder, result: SyncResult, cp: _Checkpoints) -> None:
    """Stream the listing into a new generation, created only once something must change
    (documents are embedded and written one at a time: memory stays flat on a 512 MB Pi)."""
    result.previous_generation = current
    why = "no readable live index" if old is None else (
        "--full requested" if full else store.incompatibility(store.read_meta(old), emb.name,
                                                              emb.dims))
    plan = _Plan(reuse=why is None, stored=store.stored_documents(old) if old else {},
                 max_bytes=settings.sync.max_doc_bytes)
    result.rebuilt, result.rebuild_reason = not plan.reuse, why
    listing = src.list()
    removed = sorted(set(plan.stored) - {item.source_id for item in listing})
    result.removed = len(removed)
    cp("listed")
    gen = max(highest, current or 0) + 1
    path = store.db_path(index_dir, gen)
    conn: sqlite3.Connection | None = None

    def new_generation() -> sqlite3.Connection:
        if plan.reuse:
            assert old is not None
            recycled = _recycle(standby, path, old, emb, cp) if standby is not None else None
            if recycled is not None:
                cp("generation-created")
                return recycled
            dst = sqlite3.connect(path)   # no standby: a whole copy of the live generation
            old.backup(dst)
            dst.close()
            c = store.connect_rw(path)
        else:
            c = store.connect_rw(path)
            store.create_schema(c, emb.name, emb.dims)
        cp("generation-created")
        return c

    try:
        with asyncio.Runner() as runner:
            for item in listing:
                todo = _prepare(src, item, plan, result)
                if todo is None:
                    continue
                row, parsed = todo
                if conn is None:
                    conn = new_generation()


                def embed(batch: Sequence[Chunk], title: str = row.title) -> np.ndarray:
                    texts = [_embed_text(title, c.heading, c.text) for c in batch]
                    return runner.run(emb.embed(texts, "document"))

                cp(f"parsed {row.source_id}")
                store.replace_document(conn, row, parsed.chunks, embed)
                result.chunks_embedded += len(parsed.chunks)
                cp(f"embedded and written {row.source_id}")
        for problem in getattr(src, "problems", []):
            result.errors.append(problem)
            result.skipped += 1
            log.warning("skipped %s", problem)
        if conn is None and plan.reuse and not removed:   # nothing to change: no new file
            assert old is not None
            result.generation = current
            _fill_totals(result, old, store.db_path(index_dir, current or 0))
            return
        if conn is None:
            conn = new_generation()
        for source_id in removed:
            if plan.reuse:
                store.delete_document(conn, source_id)
            cp(f"removed {source_id}")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with store.transaction(conn):
            store.set_meta(conn, generation=str(gen), updated_at=now,
                           summary=json.dumps(_summary(conn), ensure_ascii=False),
                           **({} if plan.reuse else {"built_at": now}))
        cp("meta-written")
        store.compact(conn)
        store.verify(conn)
        cp("verified")
        conn.close()
        store.fsync_file(path)
        store.fsync_dir(index_dir)
        cp("fsynced")
    except BaseException:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        _remove_db_files(path)
        raise
    store.write_pointer(index_dir, gen, cp)
    cp("published")
    result.generation = gen
    _cleanup(index_dir, gen, standby=plan.reuse)   # after a rebuild the old one is no use
    cp("old-generations-removed")
    with contextlib.closing(store.connect_ro(path)) as fresh:
        _fill_totals(result, fresh, path)


def _summary(conn: sqlite3.Connection) -> dict[str, object]:
    """What the index covers, for the tool description: languages and the biggest titles."""
    langs = dict(conn.execute("SELECT lang, count(*) FROM chunks GROUP BY lang").fetchall())
    titles = [t for (t,) in conn.execute(
        "SELECT title FROM documents ORDER BY n_chunks DESC, source_id LIMIT 12")]
    docs = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    return {"documents": docs, "chunks_by_language": langs, "titles": titles}


def _fill_totals(result: SyncResult, conn: sqlite3.Connection, path: Path) -> None:
    result.documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    result.chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    result.db_bytes = path.stat().st_size


def read_record(state_dir: Path) -> dict[str, object] | None:
    """The last run's result record, or None if there has been no run (or it is unreadable)."""
    try:
        data = json.loads((state_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_outputs(settings: Settings, result: SyncResult) -> None:
    """Result record (atomic JSON) and, if configured, the Prometheus textfile."""
    state_dir = settings.sync.state_dir
    prev = read_record(state_dir) or {}
    last_ok = result.time if result.exit_code in (EXIT_OK, EXIT_SKIPPED) else prev.get(
        "last_success")
    result.last_success = last_ok if isinstance(last_ok, str) else None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        store.atomic_write(state_dir / RECORD_FILE,
                           (json.dumps(asdict(result), indent=2) + "\n").encode())
    except OSError as e:
        log.error("cannot write sync record in %s: %s (set sync.state_dir)", state_dir, e)
    prom = settings.sync.prom_textfile
    if prom is None:
        return
    try:
        prom.parent.mkdir(parents=True, exist_ok=True)
        store.atomic_write(prom, _exposition(result))
    except OSError as e:
        log.error("cannot write %s: %s (check sync.prom_textfile)", prom, e)


def _exposition(result: SyncResult) -> bytes:
    """The sync's Prometheus textfile. Every name starts with ``edged_index_sync_``: the daemon's
    own textfile already exports the index it serves as ``edged_index_*``, and node_exporter's
    textfile collector rejects a metric that two files in its directory both define."""
    reg = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(f"edged_index_sync_{name}", doc, registry=reg).set(value)

    gauge("last_run_timestamp_seconds", "Start time of the last sync run.",
          datetime.fromisoformat(result.time).timestamp())
    gauge("exit_code", "Exit code of the last sync run (0 ok).", result.exit_code)
    gauge("duration_seconds", "Duration of the last sync run.", result.duration_s)
    docs = Gauge("edged_index_sync_documents", "Documents by outcome in the last sync run.",
                 ["outcome"], registry=reg)
    for outcome in ("added", "changed", "removed", "unchanged", "skipped"):
        docs.labels(outcome).set(getattr(result, outcome))
    gauge("chunks_embedded", "Chunks embedded by the last sync run.", result.chunks_embedded)
    gauge("live_generation", "Index generation live after the last sync run.",
          result.generation or 0)
    gauge("live_documents", "Documents in the index live after the last sync run.",
          result.documents)
    gauge("live_chunks", "Chunks in the index live after the last sync run.", result.chunks)
    gauge("live_db_bytes", "Size of the index file live after the last sync run.",
          result.db_bytes)
    if result.last_success:
        gauge("last_success_timestamp_seconds", "Last successful sync run.",
              datetime.fromisoformat(result.last_success).timestamp())
    return generate_latest(reg)


def sync_and_record(settings: Settings, *, source: str | None = None,
                    index_dir: Path | None = None, full: bool = False,
                    embedder: Embedder | None = None) -> SyncResult:
    """run_sync that never raises: failures become a result with an exit code, recorded."""
    start = time.monotonic()
    idx = index_dir or settings.knowledge.index_dir
    try:
        result = run_sync(settings, source=source, index_dir=idx, full=full, embedder=embedder)
        if result.skipped:
            result.status, result.exit_code = "skipped_docs", EXIT_SKIPPED
    except SyncLocked as e:
        # The running sync will write the record; overwriting it here would hide its outcome.
        failed = SyncResult(time=datetime.now(UTC).isoformat(timespec="seconds"),
                            source=source or settings.sync.source, index_dir=str(idx),
                            status="locked", exit_code=EXIT_LOCKED, errors=[str(e)])
        return failed
    except (UsageError, SourceUnreachable, EmbedderError, store.IndexUnavailable,
            sqlite3.Error, OSError) as e:
        code, status = {UsageError: (EXIT_USAGE, "usage"),
                        SourceUnreachable: (EXIT_UNREACHABLE, "unreachable")}.get(
            type(e), (EXIT_FAILED, "failed"))
        result = SyncResult(time=datetime.now(UTC).isoformat(timespec="seconds"),
                            source=source or settings.sync.source, index_dir=str(idx),
                            status=status, exit_code=code, errors=[str(e)],
                            duration_s=round(time.monotonic() - start, 3))
        with contextlib.suppress(Exception):
            result.generation = store.read_pointer(idx)
    _write_outputs(settings, result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="edged-index-sync", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Update the on-device knowledge index from its source (directory or "
                    "http(s) URL with manifest.json), crash-safely, one run at a time.",
        epilog=EXIT_CODES_HELP + "\nexample (demo index from the packaged sample knowledge):\n"
               "  edged-index-sync --source $(python -c 'import edged.knowledge as k; "
               "print(k.SAMPLE_KB)') --index-dir /tmp/edged-index")
    ap.add_argument("--config", type=Path, help="admin config file (default /etc/edged/edged.toml)")
    ap.add_argument("--source", help="override sync.source: a directory or an http(s) base URL")
    ap.add_argument("--index-dir", type=Path, help="override knowledge.index_dir")
    ap.add_argument("--state-dir", type=Path, help="override sync.state_dir (result record)")
    ap.add_argument("--full", action="store_true", help="rebuild from scratch (new generation)")
    ap.add_argument("--json", action="store_true", help="print the result record as JSON")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        if args.state_dir is not None:
            settings.sync.state_dir = args.state_dir
    except ConfigError as e:
        print(f"edged-index-sync: {e}", file=sys.stderr)
        return EXIT_USAGE
    result = sync_and_record(settings, source=args.source, index_dir=args.index_dir,
                             full=args.full)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(f"edged-index-sync: {result.status}: generation {result.generation} "
              f"(+{result.added} ~{result.changed} -{result.removed} ={result.unchanged} "
              f"skipped {result.skipped}); {result.documents} docs, {result.chunks} chunks, "
              f"{result.chunks_embedded} embedded in {result.duration_s:.2f} s")
    for err in result.errors:
        print(f"edged-index-sync: {err}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
