#!/usr/bin/env python3
"""Knowledge index benchmark on REAL text: build speed, query latency, size, writes, memory.

Prints figures and ratios, never pass/fail. The corpus is the one `make eval` uses (Debian
Reference in Spanish, Spanish man pages, the Python library reference; laid out by
``edged.knowledge.evaluate.prepare_corpus``), cut to 1k / 10k chunks, and copied into several
directories for 100k (same text, distinct documents), indexed by the real edged-index-sync code
path with the default (multilingual) embedder:

- build: chunks/s for a from-scratch build (parse + embed + insert + verify + publish),
- query p50/p95: embed the question and its translation + hybrid search, the labelled
  questions of `make eval` as the query set,
- size on disk and bytes per chunk; the file size after a big document came and went,
- bytes written (``/proc/self/io``) by a no-change sync and by a one-document change,
- peak RSS of a process indexing one ~20 MB document.

Run alone: .venv/bin/python scripts/bench_knowledge.py [--quick]   (--quick: no 100k)
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edged.config import load_settings
from edged.knowledge.embedders import make_embedder
from edged.knowledge.evaluate import load_questions, prepare_corpus
from edged.knowledge.search import Searcher
from edged.knowledge.sync import run_sync

CACHE = Path(".cache/eval-corpus")


def written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def corpus_of(corpus: Path, dest: Path, want: int, per_doc: dict[str, int]) -> int:
    """Copy whole documents (repeating the corpus in copyN/ directories) until ~want chunks."""
    total, copy = 0, 0
    while total < want:
        for rel, n in per_doc.items():
            if total >= want:
                break
            target = dest / f"copy{copy}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(corpus / rel, target)
            total += n
        copy += 1
    return total


BIG_DOC_PROBE = """
import resource, sys
from pathlib import Path
from edged.config import load_settings
from edged.knowledge.sync import run_sync
tmp = Path(sys.argv[1])
(tmp / "e.toml").touch()
s = load_settings(config_path=tmp / "e.toml", override_path=tmp / "none", env={})
s.sync.max_doc_bytes = 100_000_000
run_sync(s, source=str(tmp / "big"), index_dir=tmp / "bigidx")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 100k-chunk corpus")
    args = ap.parse_args()
    corpus = prepare_corpus(CACHE)
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "edged.toml").touch()   # defaults only: not this machine's /etc/edged
        settings = load_settings(config_path=tmp / "edged.toml", override_path=tmp / "none",
                                 env={})
        emb = make_embedder(settings)
        # chunks per document, from one full index of the corpus
        full = run_sync(settings, source=str(corpus), index_dir=tmp / "full", embedder=emb)
        searcher = Searcher(tmp / "full")
        conn = searcher._current()
        per_doc = dict(conn.execute(
            "SELECT source_id, n_chunks FROM documents ORDER BY source_id").fetchall())
        searcher.close()
        questions = load_questions()
        runner = asyncio.Runner()
        print(f"embedder {emb.name}; corpus {full.documents} documents, {full.chunks} chunks "
              f"of real text; {len(questions)} labelled questions as queries")
        print(f"{'chunks':>8} {'build s':>8} {'chunks/s':>9} {'MB':>7} {'B/chunk':>8} "
              f"{'p50 ms':>7} {'p95 ms':>7}")
        sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
        last = None
        for want in sizes:
            src, idx = tmp / f"src{want}", tmp / f"idx{want}"
            corpus_of(corpus, src, want, per_doc)
            t0 = time.perf_counter()
            res = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
            build = time.perf_counter() - t0
            searcher = Searcher(idx)
            lat = []
            for _ in range(2):
                for q in questions:
                    t = time.perf_counter()
                    vecs = runner.run(emb.embed([q.query, q.translation], "query"))
                    searcher.search(q.query, vecs, 4, also=(q.translation,))
                    lat.append((time.perf_counter() - t) * 1000)
            searcher.close()
            lat = lat[len(questions):]   # the first pass warms the page cache
            print(f"{res.chunks:>8} {build:>8.1f} {res.chunks / build:>9.0f} "
                  f"{res.db_bytes / 1e6:>7.1f} {res.db_bytes / res.chunks:>8.0f} "
                  f"{np.percentile(lat, 50):>7.2f} {np.percentile(lat, 95):>7.2f}", flush=True)
            last = (src, idx, res)
        runner.close()
        assert last is not None
        src, idx, res = last
        before = written()
        again = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
        print(f"no-change sync of {res.documents} documents: {written() - before} bytes "
              f"written, generation stays {again.generation}")
        one = next(src.rglob("*.txt"))
        one.write_text(one.read_text() + "\nUna línea nueva.\n")
        before = written()
        changed = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
        print(f"one-document change: {(written() - before) / 1e6:.1f} MB written for a "
              f"{changed.db_bytes / 1e6:.1f} MB generation (a generation is a whole new file)")
        big = tmp / "big"
        big.mkdir()
        para = (corpus / "debian-reference" / "ch09.es.html").read_text()
        reps = max(1, 20_000_000 // len(para))
        body = para.split("<body", 1)[1]
        (big / "big.html").write_text(para.split("<body", 1)[0] + "<body" + body * reps)
        small_db = changed.db_bytes
        shutil.copy(big / "big.html", src / "big.html")
        grown = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
        (src / "big.html").unlink()
        shrunk = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
        print(f"a {(big / 'big.html').stat().st_size / 1e6:.0f} MB document came and went: "
              f"{small_db / 1e6:.1f} MB -> {grown.db_bytes / 1e6:.1f} MB -> "
              f"{shrunk.db_bytes / 1e6:.1f} MB")
        probe = subprocess.run([sys.executable, "-c", BIG_DOC_PROBE, str(tmp)],
                               capture_output=True, text=True, check=True)
        print(f"peak RSS indexing that document alone: {int(probe.stdout) / 1e3:.0f} MB "
              f"(this process, for scale: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
