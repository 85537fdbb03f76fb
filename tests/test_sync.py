"""edged-index-sync: incremental by hash, rebuilds, HTTP source with conditional GETs, bad
documents, the lock, crash safety under SIGKILL at every checkpoint, and generation switches
under a concurrently querying reader."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_knowledge import HashEmbedder, make_settings, write_docs
from test_metrics import prom_samples

from edged.config import Settings
from edged.knowledge import SAMPLE_KB, store, sync
from edged.knowledge.search import Searcher
from edged.knowledge.sync import (
    EXIT_LOCKED,
    EXIT_SKIPPED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
    run_sync,
    sync_and_record,
)
from edged.metrics import Metrics, Snapshot

V1 = {f"doc{i}.md": f"# Doc {i}\n\nVersion one of document {i}. Topic word{i} alpha.\n\n"
      f"## Part\n\nSecond section of doc {i} version one.\n" for i in range(6)}


def v2_of(docs: dict[str, str]) -> dict[str, str]:
    """3 changed, 1 deleted, 2 added, 2 unchanged."""
    new = dict(docs)
    for i in (0, 1, 2):
        new[f"doc{i}.md"] = docs[f"doc{i}.md"].replace("version one", "version TWO") + \
            "\n## Extra\n\nA new section in version TWO.\n"
    del new["doc3.md"]
    new["new-a.md"] = "# New A\n\nAn added document about beta.\n"
    new["new-b.txt"] = "Plain text added document about gamma.\n"
    return new


def state_of(index_dir: Path) -> dict[str, str]:
    """source id -> content hash of the live generation, after checking it is whole."""
    gen = store.read_pointer(index_dir)
    assert gen is not None
    with contextlib.closing(store.connect_ro(store.db_path(index_dir, gen))) as conn:
        store.verify(conn)   # integrity_check, meta keys, chunk/vec/fts counts agree
        meta = store.read_meta(conn)
        assert meta["generation"] == str(gen)
        return dict(conn.execute("SELECT source_id, content_hash FROM documents"))


def hashes(docs: dict[str, str]) -> dict[str, str]:
    return {k: hashlib.sha256(v.encode()).hexdigest() for k, v in docs.items()}


def sync_dir(settings: Settings, src: Path, emb: HashEmbedder, **kw: Any) -> sync.SyncResult:
    return run_sync(settings, source=str(src), embedder=emb, **kw)


def test_incremental_sync_adds_changes_deletes_and_skips_unchanged(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    emb = HashEmbedder()
    first = sync_dir(settings, src, emb)
    assert (first.added, first.generation, first.rebuilt) == (6, 1, True)
    assert state_of(idx) == hashes(V1)

    shutil.rmtree(src)
    v2 = v2_of(V1)
    write_docs(src, v2)
    emb.texts.clear()
    second = sync_dir(settings, src, emb)
    assert (second.added, second.changed, second.removed, second.unchanged) == (2, 3, 1, 2)
    assert second.generation == 2 and not second.rebuilt
    assert state_of(idx) == hashes(v2)
    # Only changed and added documents were embedded: no text of doc4/doc5 went to the model.
    embedded = "\n".join(emb.texts)
    assert "version TWO" in embedded and "beta" in embedded and "gamma" in embedded
    assert "document 4" not in embedded and "document 5" not in embedded
    assert second.chunks_embedded == len(emb.texts)
    with contextlib.closing(store.connect_ro(store.db_path(idx, 2))) as conn:
        texts = [r[0] for r in conn.execute(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE d.source_id = 'doc0.md'")]
        assert texts and all("version one" not in t for t in texts)
        assert any("new section" in t for t in texts)
        fts = conn.execute("SELECT count(*) FROM fts_chunks WHERE fts_chunks MATCH 'word3'")
        assert fts.fetchone()[0] == 0
    # The superseded generation stays as the standby the next change recycles; nothing else.
    assert sorted(p.name for p in idx.glob("index-*")) == ["index-000001.db", "index-000002.db"]

    emb.texts.clear()
    third = sync_dir(settings, src, emb)
    assert (third.unchanged, third.generation, third.chunks_embedded) == (7, 2, 0)
    assert emb.texts == [] and not store.db_path(idx, 3).exists()


def test_a_change_recycles_the_standby_and_writes_only_what_changed(tmp_path: Path) -> None:
    """Generation 3 is generation 1's file brought level: the documents generation 2 changed are
    copied from it (not embedded again), then this run's change is applied; generation 2 stays
    untouched as the next standby."""
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    emb = HashEmbedder()
    sync_dir(settings, src, emb)
    shutil.rmtree(src)
    v2 = v2_of(V1)
    write_docs(src, v2)
    sync_dir(settings, src, emb)
    standby_inode = store.db_path(idx, 1).stat().st_ino
    live_inode = store.db_path(idx, 2).stat().st_ino
    v3 = dict(v2, **{"doc4.md": v2["doc4.md"] + "\n## Later\n\nA third version of doc 4.\n"})
    write_docs(src, v3)
    emb.texts.clear()
    third = sync_dir(settings, src, emb)
    assert (third.changed, third.unchanged, third.generation) == (1, 6, 3)
    assert "third version" in "\n".join(emb.texts) and "version TWO" not in "\n".join(emb.texts)
    assert store.db_path(idx, 3).stat().st_ino == standby_inode      # recycled, not copied
    assert store.db_path(idx, 2).stat().st_ino == live_inode         # the next standby
    assert not store.db_path(idx, 1).exists()
    assert state_of(idx) == hashes(v3)
    with contextlib.closing(store.connect_ro(store.db_path(idx, 3))) as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0   # compact
    reader = Searcher(idx)
    assert {h.source for h in reader.search("beta", None, 3, "fts")} == {"new-a.md"}
    reader.close()


def test_published_generations_have_no_free_pages(tmp_path: Path) -> None:
    """A big document that came and went leaves no dead pages in the next generation."""
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    emb = HashEmbedder()
    sync_dir(settings, src, emb)
    big = "# Big\n\n" + "\n\n".join(f"Paragraph {i} of a big document " * 20 for i in range(300))
    write_docs(src, {"big.md": big})
    with_big = sync_dir(settings, src, emb)
    (src / "big.md").unlink()
    without = sync_dir(settings, src, emb)
    with contextlib.closing(store.connect_ro(store.db_path(idx, without.generation or 0))) as c:
        assert c.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert without.db_bytes < with_big.db_bytes / 2


def test_a_reader_in_a_query_on_the_standby_is_waited_for_then_copied_around(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query still running on the standby (its shared flock) is never written under: the
    sync waits READER_WAIT_S, then copies the live generation instead."""
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    emb = HashEmbedder()
    sync_dir(settings, src, emb)
    write_docs(src, {"doc0.md": "# Doc 0\n\nChanged once.\n"})
    sync_dir(settings, src, emb)
    standby = store.db_path(idx, 1)
    inode = standby.stat().st_ino
    monkeypatch.setattr(sync, "READER_WAIT_S", 0.05)
    fd = os.open(standby, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)   # as Searcher holds it during a query
        write_docs(src, {"doc0.md": "# Doc 0\n\nChanged twice.\n"})
        res = sync_dir(settings, src, emb)
    finally:
        os.close(fd)
    assert res.generation == 3 and store.db_path(idx, 3).stat().st_ino != inode
    assert state_of(idx)["doc0.md"] == hashes({"x": "# Doc 0\n\nChanged twice.\n"})["x"]


def test_embedder_change_and_full_force_a_rebuild_into_a_new_generation(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    sync_dir(settings, src, HashEmbedder())
    other = HashEmbedder(dims=16)
    res = sync_dir(settings, src, other)
    assert res.rebuilt and "embedder" in (res.rebuild_reason or "") and res.generation == 2
    assert res.unchanged == 6 and res.chunks_embedded == res.chunks
    with contextlib.closing(store.connect_ro(store.db_path(idx, 2))) as conn:
        assert store.read_meta(conn)["dims"] == "16"
    full = sync_dir(settings, src, other, full=True)
    assert full.rebuilt and full.rebuild_reason == "--full requested" and full.generation == 3
    assert state_of(idx) == hashes(V1)


def test_new_generation_is_picked_up_by_an_open_reader(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    emb = HashEmbedder()
    write_docs(src, V1)
    sync_dir(settings, src, emb)
    searcher = Searcher(idx)
    assert not [h for h in searcher.search("zebra", None, 3, "fts")]
    write_docs(src, {"zoo.md": "# Zoo\n\nA zebra lives here.\n"})
    sync_dir(settings, src, emb)
    hits = searcher.search("zebra", None, 3, "fts")
    assert searcher.generation == 2 and hits[0].source == "zoo.md"


def test_bad_documents_are_skipped_and_reported(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.sync.max_doc_bytes = 4096
    settings.sync.prom_textfile = tmp_path / "prom" / "edged_index.prom"
    src = tmp_path / "src"
    write_docs(src, {"good.md": "# Good\n\nFine text.\n", "junk.md": os.urandom(300) + b"\x00",
                     "huge.md": "x " * 5000, "latin.txt": "información".encode("latin-1"),
                     "photo.png": b"\x89PNG....", ".hidden.md": "ignored"})
    res = sync_and_record(settings, source=str(src), embedder=HashEmbedder())
    assert res.exit_code == EXIT_SKIPPED and res.status == "skipped_docs"
    assert (res.added, res.skipped) == (1, 4)
    for name in ("junk.md", "huge.md", "latin.txt", "photo.png"):
        assert any(e.startswith(name) for e in res.errors), name
    assert state_of(settings.knowledge.index_dir).keys() == {"good.md"}
    record = json.loads((settings.sync.state_dir / "last-sync.json").read_text())
    assert record["skipped"] == 4 and record["exit_code"] == 1 and record["generation"] == 1
    assert record["last_success"] == record["time"]
    prom = prom_samples(settings.sync.prom_textfile.read_text())
    assert prom[("edged_index_sync_documents", (("outcome", "skipped"),))] == 4
    assert prom[("edged_index_sync_live_chunks", ())] == 1
    assert prom[("edged_index_sync_exit_code", ())] == 1
    # node_exporter refuses a metric defined by two textfiles: the daemon's file owns the
    # edged_index_* names of the index it serves, so the sync's file must not repeat them.
    daemon = Metrics()
    daemon.snapshot = Snapshot(index_generation=1, index_bytes=1, index_docs=1, index_chunks=1,
                               last_sync_ok=True, last_sync_timestamp=1.0)
    assert {n for n, _ in prom}.isdisjoint(n for n, _ in prom_samples(daemon.render()))


def test_a_document_that_turns_bad_keeps_its_previous_version(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src = tmp_path / "src"
    write_docs(src, V1)
    sync_dir(settings, src, HashEmbedder())
    (src / "doc1.md").write_bytes(b"\xff\xfe\x00garbage")
    res = sync_dir(settings, src, HashEmbedder())
    assert res.skipped == 1 and "previous version kept" in res.errors[0]
    assert state_of(settings.knowledge.index_dir) == hashes(V1)


def test_second_run_while_locked_exits_3_and_changes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    idx.mkdir(parents=True)
    with sync.sync_lock(idx):
        res = sync_and_record(settings, source=str(src), embedder=HashEmbedder())
        assert res.exit_code == EXIT_LOCKED and "another edged-index-sync" in res.errors[0]
        assert str(os.getpid()) in res.errors[0]
        rc = main(["--config", str(tmp_path / "edged.toml"), "--source", str(src),
                   "--index-dir", str(idx), "--state-dir", str(tmp_path / "state")])
        assert rc == EXIT_LOCKED
    assert "another edged-index-sync is running" in capsys.readouterr().err
    assert store.read_pointer(idx) is None and not (tmp_path / "state").exists()


def test_cli_usage_errors_and_unreachable_source(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "3  another sync is running" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[sync]\nmax_doc_bytes = 'lots'\n")
    assert main(["--config", str(bad)]) == EXIT_USAGE
    assert "sync.max_doc_bytes" in capsys.readouterr().err
    cfg = tmp_path / "edged.toml"
    cfg.write_text("")
    state = ["--state-dir", str(tmp_path / "state"), "--index-dir", str(tmp_path / "idx")]
    assert main(["--config", str(cfg), *state]) == EXIT_USAGE   # no source anywhere
    assert main(["--config", str(cfg), "--source", str(tmp_path / "nope"), *state]) == \
        EXIT_UNREACHABLE
    assert "does not exist" in capsys.readouterr().err
    record = json.loads((tmp_path / "state" / "last-sync.json").read_text())
    assert record["status"] == "unreachable" and record["last_success"] is None


# --- HTTP source ----------------------------------------------------------------------------

class _Site(http.server.BaseHTTPRequestHandler):
    """Serves `files`; ETag = sha256; honours If-None-Match; logs each request's headers."""

    files: dict[str, bytes] = {}      # noqa: RUF012 - set per test
    log: list[tuple[str, int, str | None, str | None]] = []   # noqa: RUF012

    def do_GET(self) -> None:
        name = self.path.lstrip("/").split("/", 1)[1] if self.path.count("/") > 1 else ""
        data = self.files.get(name)
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        if data is None:
            self.log.append((name, 404, inm, ims))
            self.send_error(404)
            return
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if inm == etag:
            self.log.append((name, 304, inm, ims))
            self.send_response(304)
            self.end_headers()
            return
        self.log.append((name, 200, inm, ims))
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", "Sat, 21 Nov 2026 10:00:00 GMT")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    _Site.files, _Site.log = {}, []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}/kb"
    server.shutdown()
    server.server_close()


def publish(docs: dict[str, str], with_hash: set[str]) -> None:
    entries = []
    for name, body in docs.items():
        entry: dict[str, str] = {"path": name}
        if name in with_hash:
            entry["sha256"] = hashlib.sha256(body.encode()).hexdigest()
        entries.append(entry)
    _Site.files = {k: v.encode() for k, v in docs.items()}
    _Site.files["manifest.json"] = json.dumps({"documents": entries}).encode()


def test_http_source_uses_manifest_hashes_and_conditional_gets(tmp_path: Path,
                                                               site: str) -> None:
    settings = make_settings(tmp_path)
    docs = {"a.md": "# A\n\nalpha text\n", "b.md": "# B\n\nbeta text\n",
            "sub/c.txt": "gamma text\n"}
    publish(docs, with_hash={"a.md"})
    emb = HashEmbedder()
    first = run_sync(settings, source=site, embedder=emb)
    assert first.added == 3 and state_of(settings.knowledge.index_dir) == hashes(docs)

    _Site.log.clear()
    emb.texts.clear()
    second = run_sync(settings, source=site, embedder=emb)
    assert second.unchanged == 3 and second.generation == 1 and emb.texts == []
    fetched = {name: (code, inm, ims) for name, code, inm, ims in _Site.log
               if name != "manifest.json"}
    assert "a.md" not in fetched                       # manifest hash proved it unchanged
    code, inm, ims = fetched["b.md"]
    assert code == 304 and inm and inm.startswith('"')   # the stored ETag went back
    assert ims == "Sat, 21 Nov 2026 10:00:00 GMT"       # and the stored Last-Modified
    assert fetched["sub/c.txt"][0] == 304

    docs["b.md"] = "# B\n\nbeta changed\n"
    del docs["sub/c.txt"]
    publish(docs, with_hash={"a.md"})
    third = run_sync(settings, source=site, embedder=emb)
    assert (third.changed, third.removed, third.unchanged) == (1, 1, 1)
    assert state_of(settings.knowledge.index_dir) == hashes(docs)


def test_unreachable_http_source_changes_nothing(tmp_path: Path, site: str) -> None:
    settings = make_settings(tmp_path)
    publish({"a.md": "# A\n\nalpha\n"}, set())
    run_sync(settings, source=site, embedder=HashEmbedder())
    res = sync_and_record(settings, source="http://127.0.0.1:9/kb", embedder=HashEmbedder())
    assert res.exit_code == EXIT_UNREACHABLE and res.generation == 1
    _Site.files = {"a.md": b"x"}   # manifest now 404: also unreachable, not "everything deleted"
    res = sync_and_record(settings, source=site, embedder=HashEmbedder())
    assert res.exit_code == EXIT_UNREACHABLE
    assert state_of(settings.knowledge.index_dir).keys() == {"a.md"}


# --- crash safety ---------------------------------------------------------------------------

def _checkpoints(settings: Settings, src: Path, template: Path,
                 monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    original = sync._Checkpoints.__call__

    def counting(self: sync._Checkpoints, name: str) -> None:
        names.append(name)
        original(self, name)

    work = template.parent / "count"
    shutil.copytree(template, work)
    with monkeypatch.context() as m:
        m.setattr(sync._Checkpoints, "__call__", counting)
        run_sync(settings, source=str(src), index_dir=work, embedder=HashEmbedder())
    shutil.rmtree(work)
    return names


def test_sigkill_at_every_checkpoint_leaves_a_whole_index(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path)
    src, template = tmp_path / "src", tmp_path / "template"
    # two runs, so the template has a standby and the killed run recycles it in place
    write_docs(src, {k: v for k, v in V1.items() if k != "doc5.md"})
    run_sync(settings, source=str(src), index_dir=template, embedder=HashEmbedder())
    write_docs(src, V1)
    run_sync(settings, source=str(src), index_dir=template, embedder=HashEmbedder())
    assert store.db_path(template, 1).exists()
    shutil.rmtree(src)
    v2 = v2_of(V1)
    write_docs(src, v2)
    old, new = hashes(V1), hashes(v2)
    names = _checkpoints(settings, src, template, monkeypatch)
    assert "standby-renamed" in names and "standby-caught-up" in names, names
    total = len(names)
    assert total >= 20, total
    outcomes = []
    for n in range(1, total + 1):
        idx = tmp_path / f"idx{n}"
        shutil.copytree(template, idx)
        reader = Searcher(idx)
        assert reader.search("alpha", None, 3, "fts")
        pid = os.fork()
        if pid == 0:   # child: run the sync and die by SIGKILL at checkpoint n
            os.environ[sync.KILL_ENV] = str(n)
            try:
                run_sync(settings, source=str(src), index_dir=idx, embedder=HashEmbedder())
            finally:
                os._exit(99)   # reaching this means the kill did not happen
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, n
        # The reader that was open during the crash still answers...
        assert reader.search("alpha", None, 3, "fts"), n
        # ...and a fresh look sees a whole old or whole new index, never a mix.
        state = state_of(idx)
        assert state in (old, new), n
        outcomes.append("new" if state == new else "old")
        # The next run cleans up the killed run's leftovers and completes.
        res = run_sync(settings, source=str(src), index_dir=idx, embedder=HashEmbedder())
        assert state_of(idx) == new
        files = {p.name for p in idx.iterdir()}
        gen = store.db_path(idx, res.generation or 0).name
        standbys = {f for f in files if f.startswith("index-") and f < gen}
        assert len(standbys) <= 1, n
        assert files - standbys <= {store.POINTER, store.LOCK_FILE, gen}, n
        reader.close()
        shutil.rmtree(idx)
    assert "old" in outcomes and "new" in outcomes   # kills landed on both sides of the flip


def test_readers_query_continuously_through_generation_switches(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    versions = [{"a.md": f"# A\n\nkeyword marker version {v}\n",
                 "b.md": f"# B\n\nother text {v}\n"} for v in ("one", "two")]
    emb = HashEmbedder()
    write_docs(src, versions[0])
    sync_dir(settings, src, emb)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[str] = set()
    gens: set[int] = set()
    queries = 0

    def reader() -> None:
        nonlocal queries
        searcher = Searcher(idx, embedder_name=emb.name)
        vec = np.ones(emb.dims, np.float32) / np.sqrt(emb.dims)
        while not stop.is_set():
            try:
                hits = searcher.search("keyword marker", vec, 2)
                top = hits[0]
                assert top.source == "a.md", top
                seen.add(top.text.rsplit(" ", 1)[-1])
                gens.add(searcher.generation or 0)
                queries += 1
            except BaseException as e:
                errors.append(e)
                return
        searcher.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 9):
            write_docs(src, versions[i % 2])
            res = sync_dir(settings, src, emb, full=i % 3 == 0)
            assert res.generation == i + 1
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors[0]
    assert seen <= {"one", "two"} and queries > 0
    assert len(gens) >= 2


def test_sqlite_error_during_build_keeps_live_index(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    sync_dir(settings, src, HashEmbedder())
    write_docs(src, {"doc0.md": "# changed\n\ncompletely new\n"})

    def broken(conn: sqlite3.Connection) -> None:
        raise store.IndexUnavailable("integrity_check failed: simulated")

    monkeypatch.setattr(store, "verify", broken)
    res = sync_and_record(settings, source=str(src), embedder=HashEmbedder())
    assert res.exit_code == sync.EXIT_FAILED and "simulated" in res.errors[0]
    assert store.read_pointer(idx) == 1 and not store.db_path(idx, 2).exists()
    monkeypatch.undo()
    assert state_of(idx) == hashes(V1)


def test_unreadable_live_generation_is_rebuilt(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src, idx = tmp_path / "src", settings.knowledge.index_dir
    write_docs(src, V1)
    sync_dir(settings, src, HashEmbedder())
    store.db_path(idx, 1).write_bytes(b"garbage" * 1000)
    res = sync_dir(settings, src, HashEmbedder())
    assert res.rebuilt and res.rebuild_reason == "no readable live index"
    assert res.generation == 2 and state_of(idx) == hashes(V1)
    (idx / store.POINTER).write_text("not-a-number\n")
    res = sync_dir(settings, src, HashEmbedder())
    assert res.generation == 3 and state_of(idx) == hashes(V1)


def test_cli_builds_the_demo_index_from_the_sample_kb(tmp_path: Path) -> None:
    """The command the demo and the systemd unit run, as a real process with the real model."""
    cfg = tmp_path / "edged.toml"
    cfg.write_text(f'[sync]\nprom_textfile = "{tmp_path / "edged_index.prom"}"\n')
    cmd = [sys.executable, "-m", "edged.knowledge.sync", "--config", str(cfg), "--source",
           str(SAMPLE_KB), "--index-dir", str(tmp_path / "idx"), "--state-dir",
           str(tmp_path / "state")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    n = len(list(SAMPLE_KB.iterdir()))
    assert f"ok: generation 1 (+{n} ~0 -0 =0 skipped 0)" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"(+0 ~0 -0 ={n} skipped 0)" in again.stdout
    assert "0 embedded" in again.stdout
    prom = prom_samples((tmp_path / "edged_index.prom").read_text())
    assert prom[("edged_index_sync_live_documents", ())] == n
