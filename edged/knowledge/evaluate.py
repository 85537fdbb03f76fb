"""Retrieval quality on the sample knowledge base: recall@5 and MRR@10, per retriever.

Why three rows: the hybrid must be judged against its parts. If FTS-only beats hybrid, the fusion
weights (knowledge.weight_fts / weight_vec / rrf_k) are wrong for this embedder; if vector-only
is weak on Spanish, that is the English-trained local model, and the numbers show it.

Document-level metrics: a query's ranking is the order in which distinct documents first
appear among the retrieved chunks; ``relevant`` lists the documents that answer the query.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.config import Settings
from edged.knowledge import SAMPLE_KB, SAMPLE_QUERIES
from edged.knowledge.embedders import Embedder, EmbedderError, make_embedder
from edged.knowledge.search import Mode, Searcher

RETRIEVE_CHUNKS = 30


@dataclass(frozen=True, slots=True)
class Scores:
    recall_at_5: float
    mrr_at_10: float
    n: int


def load_queries(path: Path) -> list[dict[str, object]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data["queries"])

BuildIndex = Callable[..., Any]    # run_sync(settings, *, source, index_dir, embedder) -> result
EXIT_EMBEDDER = 5                  # = edged-index-sync's EXIT_FAILED: no embedder


def evaluate(searcher: Searcher, embedder: Embedder, queries: list[dict[str, object]],
             mode: Mode, lang: str | None = None) -> Scores:
    """Mean recall@5 and MRR@10 over the queries (optionally one language)."""
    chosen = [q for q in queries if lang is None or q["lang"] == lang]
    recall = mrr = 0.0
    with asyncio.Runner() as runner:
        for q in chosen:
            text = str(q["query"])
            relevant = set(q["relevant"])  # type: ignore[arg-type]
            vector = runner.run(embedder.embed([text], "query"))[0]
            docs: list[str] = []
            for hit in searcher.search(text, vector, RETRIEVE_CHUNKS, mode):
                if hit.source not in docs:
                    docs.append(hit.source)
            recall += len(relevant & set(docs[:5])) / len(relevant)
            rank = next((i for i, d in enumerate(docs[:10], 1) if d in relevant), None)
            mrr += 1.0 / rank if rank else 0.0
    n = max(1, len(chosen))
    return Scores(recall / n, mrr / n, len(chosen))


def run_eval(settings: Settings, build: BuildIndex, queries_path: Path | None = None,
             embedder: Embedder | None = None) -> int:
    """Build a throwaway index of the sample KB with ``build`` (``edged-index-sync``'s
    ``run_sync``, passed in by its ``--eval`` option) and print the metrics table; exit code."""
    try:
        emb = embedder or make_embedder(settings)
    except EmbedderError as e:
        print(f"edged-index-sync --eval: {e}")
        return EXIT_EMBEDDER
    queries = load_queries(queries_path or SAMPLE_QUERIES)
    k = settings.knowledge
    with tempfile.TemporaryDirectory(prefix="edged-eval-") as tmp:
        result = build(settings, source=str(SAMPLE_KB), index_dir=Path(tmp), embedder=emb)
        searcher = Searcher(Path(tmp), weight_fts=k.weight_fts, weight_vec=k.weight_vec,
                            rrf_k=k.rrf_k, min_vector_similarity=k.min_vector_similarity)
        print(f"embedder {emb.name} ({emb.dims} dims); {result.documents} documents, "
              f"{result.chunks} chunks; {len(queries)} queries")
        print(f"{'retriever':<10} {'lang':<5} {'n':>3} {'recall@5':>9} {'MRR@10':>8}")
        for mode in ("fts", "vector", "hybrid"):
            for lang in (None, "es", "en"):
                s = evaluate(searcher, emb, queries, mode, lang)  # type: ignore[arg-type]
                print(f"{mode:<10} {lang or 'all':<5} {s.n:>3} {s.recall_at_5:>9.3f} "
                      f"{s.mrr_at_10:>8.3f}")
        searcher.close()
    return 0
