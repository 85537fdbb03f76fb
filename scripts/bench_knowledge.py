#!/usr/bin/env python3
"""Knowledge index benchmark: query latency, sync throughput, re-sync cost, size, memory.

Prints figures and ratios, never pass/fail (CONTRIBUTING.md). Synthetic corpora built from the
sample knowledge base's vocabulary (Spanish and English words) at 1k, 10k and 100k chunks,
indexed by the real edged-index-sync code path with the real local embedder:

- sync throughput: chunks/s for a from-scratch build (parse + embed + insert + verify + publish),
- query latency p50/p95: embed the query + hybrid search (FTS5 BM25 + vec0 KNN + RRF),
- no-change re-sync of 10k documents (hash every file, diff, write nothing),
- index size on disk, bytes per chunk,
- RSS of a fresh process with the embedder loaded and the 100k index open, after queries.

Run alone: .venv/bin/python scripts/bench_knowledge.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edged.config import load_settings
from edged.knowledge import SAMPLE_KB
from edged.knowledge.embedders import LocalEmbedder, resolve_model_dir
from edged.knowledge.search import Searcher
from edged.knowledge.sync import run_sync

SECTIONS_PER_DOC = 10
QUERIES = 60


def vocabulary() -> list[str]:
    words: set[str] = set()
    for p in SAMPLE_KB.iterdir():
        words.update(w.lower() for w in re.findall(r"[^\W\d_]{3,}", p.read_text()))
    return sorted(words)


def write_corpus(root: Path, n_docs: int, vocab: list[str], seed: int = 7) -> None:
    """n_docs Markdown files of SECTIONS_PER_DOC sections (= chunks) of ~60 words each."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for d in range(n_docs):
        parts = [f"# Documento {d}\n"]
        for s in range(SECTIONS_PER_DOC):
            heading = " ".join(rng.choices(vocab, k=3))
            body = " ".join(rng.choices(vocab, k=60))
            parts.append(f"## {s} {heading}\n\n{body}.\n")
        (root / f"doc{d:06d}.md").write_text("\n".join(parts))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


RSS_PROBE = """
import asyncio, json, sys, resource
from pathlib import Path
import psutil
from edged.knowledge.embedders import LocalEmbedder, resolve_model_dir
from edged.knowledge.search import Searcher
base = psutil.Process().memory_info().rss
emb = LocalEmbedder(resolve_model_dir(None))
s = Searcher(Path(sys.argv[1]))
for q in sys.argv[2:]:
    s.search(q, asyncio.run(emb.embed([q], "query"))[0], 4)
print(json.dumps({"imports_rss": base, "rss": psutil.Process().memory_info().rss,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 100k-chunk corpus")
    args = ap.parse_args()
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]   # documents (x10 chunks)
    vocab = vocabulary()
    emb = LocalEmbedder(resolve_model_dir(None))
    rng = random.Random(11)
    queries = ["¿Qué es la gobernanza en el contexto de MLOps?"] + [
        " ".join(rng.choices(vocab, k=rng.randint(2, 7))) for _ in range(QUERIES - 1)]
    print(f"embedder {emb.name}, {emb.dims} dims; vocabulary {len(vocab)} words; "
          f"{SECTIONS_PER_DOC} chunks per document")
    print(f"{'chunks':>8} {'build s':>8} {'chunks/s':>9} {'MB':>7} {'B/chunk':>8} "
          f"{'p50 ms':>7} {'p95 ms':>7}")
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        admin = Path(tmp) / "edged.toml"   # defaults only: not this machine's /etc/edged
        admin.touch()
        settings = load_settings(config_path=admin, override_path=Path(tmp) / "none", env={})
        results: dict[int, dict[str, float]] = {}
        last_idx = last_src = None
        with asyncio.Runner() as runner:
            for n_docs in sizes:
                src, idx = Path(tmp) / f"src{n_docs}", Path(tmp) / f"idx{n_docs}"
                write_corpus(src, n_docs, vocab)
                t0 = time.perf_counter()
                res = run_sync(settings, source=str(src), index_dir=idx, embedder=emb)
                build = time.perf_counter() - t0
                searcher = Searcher(idx, weight_fts=settings.knowledge.weight_fts,
                                    weight_vec=settings.knowledge.weight_vec,
                                    rrf_k=settings.knowledge.rrf_k,
                                    min_vector_similarity=settings.knowledge.min_vector_similarity)
                lat: list[float] = []
                for q in queries:
                    t = time.perf_counter()
                    vec = runner.run(emb.embed([q], "query"))[0]
                    searcher.search(q, vec, settings.knowledge.top_k)
                    lat.append((time.perf_counter() - t) * 1000)
                searcher.close()
                lat = lat[5:]   # first queries warm the page cache and the model
                results[res.chunks] = {"build": build, "p50": pct(lat, 50), "p95": pct(lat, 95)}
                print(f"{res.chunks:>8} {build:>8.2f} {res.chunks / build:>9.0f} "
                      f"{res.db_bytes / 1e6:>7.1f} {res.db_bytes / res.chunks:>8.0f} "
                      f"{pct(lat, 50):>7.2f} {pct(lat, 95):>7.2f}", flush=True)
                last_idx, last_src = idx, src
        assert last_idx is not None and last_src is not None
        chunks = sorted(results)
        if len(chunks) >= 2:
            lo, hi = chunks[0], chunks[-1]
            print(f"p50 latency ratio {hi}/{lo} chunks: "
                  f"{results[hi]['p50'] / results[lo]['p50']:.1f}x for "
                  f"{hi / lo:.0f}x the chunks")
        n_docs = sizes[-1]
        t0 = time.perf_counter()
        res = run_sync(settings, source=str(last_src), index_dir=last_idx, embedder=emb)
        resync = time.perf_counter() - t0
        print(f"no-change re-sync of {n_docs} documents: {resync:.2f} s "
              f"({res.unchanged} unchanged, {res.chunks_embedded} chunks embedded, "
              f"generation stays {res.generation})")
        probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(last_idx), *queries[:20]],
                               capture_output=True, text=True, check=True)
        rss = json.loads(probe.stdout)
        print(f"RSS with embedder + {res.chunks}-chunk index open after 20 queries: "
              f"{rss['rss'] / 1e6:.0f} MB (peak {rss['maxrss_kb'] / 1e3:.0f} MB; "
              f"python+imports alone {rss['imports_rss'] / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
