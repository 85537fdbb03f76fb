#!/usr/bin/env python3
"""Knowledge index benchmark on REAL text: build speed, query latency, size, writes, memory.

Prints figures and ratios, never pass/fail. The corpus is the one `make eval` uses (Debian
Reference in Spanish, Spanish man pages, the Python library reference; laid out by
``edged.knowledge.evaluate.prepare_corpus``), cut to 1k / 10k chunks, and copied into several
directories for 100k (same text, distinct documents), indexed by the real edged-index-sync code
path with the default (multilingual) embedder:

- build: chunks/s for a from-scratch build (parse + embed + insert + verify + publish), wall
  clock and per CPU-second (the machine is shared: CPU time is the steadier figure),
- query p50/p95: embed the question and its translation + hybrid search + ranking, the
  labelled questions of `make eval` as the query set, three timed passes after a warm one;
  wall clock per pass, and CPU time per query over the three passes (on a shared machine the
  wall clock includes waiting for a core),
- size on disk, bytes per chunk, free pages left in the published file,
- bytes written (``/proc/self/io``: wchar = what the sync asked to write, write_bytes = what
  reached the block layer) by a no-change sync and by one-document changes: the first change
  after a build copies the live generation (no standby yet), later ones recycle the standby,
- peak RSS of the nightly sync as the timer runs it (the ``edged-index-sync`` command, its own
  process), with what is resident after imports and after loading the embedder,
- peak RSS indexing one 2 MB and one 20 MB document (is memory flat in the document size?).

The load average is printed with every row: figures from a busy machine are slower.
Run alone: .venv/bin/python scripts/bench_knowledge.py [--quick]   (--quick: no 100k)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edged.config import load_settings
from edged.knowledge import store
from edged.knowledge.embedders import make_embedder
from edged.knowledge.evaluate import load_questions, prepare_corpus
from edged.knowledge.search import Searcher
from edged.knowledge.sync import run_sync

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "eval-corpus"
PASSES = 3


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def io_counters() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value)
    return out


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


def free_pages(idx: Path) -> int:
    gen = store.read_pointer(idx)
    with contextlib.closing(store.connect_ro(store.db_path(idx, gen or 0))) as conn:
        return conn.execute("PRAGMA freelist_count").fetchone()[0]


# A child that reports its resident memory at each stage and its peak at the end.
STAGES_PROBE = """
import sys
from pathlib import Path
def rss(field="VmRSS"):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
base = rss()
from edged.config import load_settings
from edged.knowledge.sync import run_sync
from edged.knowledge.embedders import make_embedder
imports = rss()
s = load_settings(Path(sys.argv[1]))
emb = make_embedder(s)
emb.encode(["hola"])
model = rss()
run_sync(s, embedder=emb)
print(base, imports, model, rss("VmHWM"))   # this image's peak (ru_maxrss: see PEAK_HELPER)
"""


# Runs a command and prints its peak RSS. Why a helper: Linux carries the RSS high-water mark
# of the process image a child replaces at exec into its ru_maxrss, so a child forked or
# spawned by this (big) benchmark would report the benchmark's size. The helper is small.
PEAK_HELPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def child_peak_mb(cmd: list[str]) -> tuple[float, str]:
    """Run a command, return its peak RSS (MB) and its stdout."""
    res = subprocess.run([sys.executable, "-c", PEAK_HELPER, *cmd], capture_output=True,
                         text=True)
    if res.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[:3]} exited {res.returncode}: {res.stderr[-500:]}")
    return int(res.stderr.split()[-1]) / 1024, res.stdout


def sync_config(tmp: Path, name: str, source: Path, index: Path, max_doc: int = 2_000_000) -> Path:
    cfg = tmp / f"{name}.toml"
    cfg.write_text(f'[knowledge]\nindex_dir = "{index}"\n[sync]\nsource = "{source}"\n'
                   f'state_dir = "{tmp / (name + "-state")}"\nmax_doc_bytes = {max_doc}\n')
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 100k-chunk corpus")
    args = ap.parse_args()
    corpus = prepare_corpus(CACHE)
    (REPO / "bench-out").mkdir(exist_ok=True)
    # on disk, not tmpfs: the write counters must see the writes
    with tempfile.TemporaryDirectory(prefix="knowledge-", dir=REPO / "bench-out") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "edged.toml").touch()   # defaults only: not this machine's /etc/edged
        settings = load_settings(config_path=tmp / "edged.toml", override_path=tmp / "none",
                                 env={})
        emb = make_embedder(settings)
        full = run_sync(settings, source=str(corpus), index_dir=tmp / "full", embedder=emb)
        searcher = Searcher(tmp / "full")
        with contextlib.closing(store.connect_ro(store.db_path(tmp / "full", 1))) as conn:
            per_doc = dict(conn.execute(
                "SELECT source_id, n_chunks FROM documents ORDER BY source_id").fetchall())
        searcher.close()
        shutil.rmtree(tmp / "full")
        questions = load_questions()
        runner = asyncio.Runner()
        print(f"embedder {emb.name}; corpus {full.documents} documents, {full.chunks} chunks "
              f"of real text; {len(questions)} labelled questions as queries")
        print(f"{'chunks':>8} {'build s':>8} {'chunks/s':>9} {'per CPU-s':>9} {'MB':>7} "
              f"{'B/chunk':>8} {'free pg':>7}  query p50/p95 ms wall, {PASSES} passes; CPU ms")
        sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
        built: dict[int, tuple[Path, Path]] = {}
        for want in sizes:
            src, idx = tmp / f"src{want}", tmp / f"idx{want}"
            corpus_of(corpus, src, want, per_doc)
            before = load()
            t0, c0 = time.perf_counter(), time.process_time()
            res = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
            build, cpu = time.perf_counter() - t0, time.process_time() - c0
            searcher = Searcher(idx)
            passes, cpus = [], []
            for p in range(PASSES + 1):
                lat, cpu_ms = [], []
                for q in questions:
                    t, c = time.perf_counter(), time.process_time()
                    vecs = runner.run(emb.embed([q.query, q.translation], "query"))
                    searcher.search(q.query, vecs, 4, also=(q.translation,))
                    lat.append((time.perf_counter() - t) * 1000)
                    cpu_ms.append((time.process_time() - c) * 1000)
                if p:   # the first pass warms the page cache and loads the sign bits
                    passes.append((np.percentile(lat, 50), np.percentile(lat, 95)))
                    cpus.extend(cpu_ms)
            searcher.close()
            spread = "  ".join(f"{a:.1f}/{b:.1f}" for a, b in passes)
            print(f"{res.chunks:>8} {build:>8.1f} {res.chunks / build:>9.0f} "
                  f"{res.chunks / cpu:>9.0f} {res.db_bytes / 1e6:>7.1f} "
                  f"{res.db_bytes / res.chunks:>8.0f} {free_pages(idx):>7}  {spread}  "
                  f"{np.percentile(cpus, 50):.1f}/{np.percentile(cpus, 95):.1f}   "
                  f"({before} -> {load()})", flush=True)
            built[want] = (src, idx)
        runner.close()

        src, idx = built[sizes[-1]]
        docs = sorted(src.rglob("*.txt"))

        def written(step: str, change: int | None) -> None:
            if change is not None:
                one = docs[change]
                one.write_text(one.read_text() + f"\nUna línea nueva {change}.\n")
            before = io_counters()
            res = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
            after = io_counters()
            print(f"  {step}: {(after['wchar'] - before['wchar']) / 1e6:8.1f} MB asked, "
                  f"{(after['write_bytes'] - before['write_bytes']) / 1e6:8.1f} MB to disk; "
                  f"generation {res.generation} of {res.db_bytes / 1e6:.1f} MB, "
                  f"{free_pages(idx)} free pages", flush=True)

        print(f"bytes written per sync, {sizes[-1] // 1000}k-chunk index ({load()}):")
        written("no change", None)
        written("1 document changed, first change after the build (copies: no standby)", 0)
        written("1 document changed (recycles the standby)", 1)
        written("1 document changed (recycles the standby)", 2)
        big = src / "big.html"
        shutil.copyfile(corpus / "debian-reference" / "ch09.es.html", big)
        written("a 0.4 MB document added", None)
        big.unlink()
        written("and removed again", None)

        print(f"nightly sync memory, `edged-index-sync` as the timer runs it ({load()}):")
        small_src = built[sizes[1]][0]
        idx2 = tmp / "cli-idx"
        cfg = sync_config(tmp, "cli", small_src, idx2)
        cli = [str(Path(sys.executable).with_name("edged-index-sync")), "--config", str(cfg)]
        peak, _ = child_peak_mb(cli)
        print(f"  full build of {sizes[1] // 1000}k chunks: peak RSS {peak:.0f} MB")
        one = sorted(small_src.rglob("*.txt"))[3]
        one.write_text(one.read_text() + "\nOtra línea.\n")
        peak, _ = child_peak_mb(cli)
        print(f"  one document changed: peak RSS {peak:.0f} MB")
        one.write_text(one.read_text() + "\nY otra más.\n")
        _, out = child_peak_mb([sys.executable, "-c", STAGES_PROBE, str(cfg)])
        base, imports, model, top = (int(x) / 1024 for x in out.split())
        print(f"  resident: interpreter {base:.0f} MB, + imports (numpy, SQLite, sqlite-vec, "
              f"pydantic, PyStemmer) {imports - base:.0f} MB, + multilingual embedder "
              f"(SentencePiece, MLP; the int8 table is read from the file) "
              f"{model - imports:.0f} MB; peak {top:.0f} MB")

        print(f"one big document, indexed alone ({load()}):")
        text = (corpus / "man-es" / "man1" / "bash.1.txt").read_text()
        for mb in (2, 20):
            bigdir = tmp / f"big{mb}"
            bigdir.mkdir()
            (bigdir / "big.txt").write_text(text * max(1, mb * 1_000_000 // len(text)))
            cfg = sync_config(tmp, f"big{mb}", bigdir, tmp / f"big{mb}-idx", 100_000_000)
            peak, _ = child_peak_mb([*cli[:2], str(cfg)])
            print(f"  {(bigdir / 'big.txt').stat().st_size / 1e6:.0f} MB plain text: "
                  f"peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
