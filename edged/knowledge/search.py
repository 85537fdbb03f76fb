"""Hybrid retrieval: FTS5 BM25 over stems + binary-vector KNN, rescored into ONE calibrated score.

Why a calibrated score instead of rank fusion: the model must be able to tell an answer from
noise. Reciprocal-rank fusion gives every query's best passage about the same score (~0.02),
relevant or not, so an off-topic question got four confident-looking passages. Here each
candidate from either retriever gets two features:

- ``cosine``: the query vector against the chunk's stored int8 vector (exact rescoring of the
  binary KNN's candidates, and a vector score for the lexical candidates too),
- ``lexical``: the idf-weighted share of the question's words whose stem the chunk contains
  (a rare word such as «fstab» counts more than «sistema»),

and ``relevance = sigmoid(bias + w_vector * cosine + w_lexical * lexical)``, a probability-like
number fitted by logistic regression on the tuning half of the labelled questions (``make
eval``). Passages below ``min_relevance`` are dropped: if none is left the tool says "nothing
relevant". At most ``max_passages_per_document`` passages come from one document.

Speed: the lexical query is bounded (at most 12 words per phrasing, exact stems, no prefix
queries) and the vector KNN scans 64-byte sign-bit vectors (Hamming) for 100 candidates before
the exact int8 rescoring, so a query stays in milliseconds at 100k chunks (``make bench``).

The searcher follows the generation pointer: before each query it stats ``CURRENT`` (one
syscall) and, if the sync published a new generation, opens it read-only and closes the old
one, so the daemon picks up a nightly rebuild without a restart.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edged.config import KnowledgeSettings
from edged.knowledge import store
from edged.knowledge.store import IndexUnavailable
from edged.knowledge.text import fts_query, index_terms, query_alternatives

Mode = Literal["hybrid", "fts", "vector"]
LEXICAL_CANDIDATES = 40
VECTOR_CANDIDATES = 100   # Hamming KNN oversampling before exact rescoring


@dataclass(frozen=True, slots=True)
class Relevance:
    """The calibrated relevance model (fitted by ``make eval``; see the module docstring)."""

    bias: float
    weight_vector: float
    weight_lexical: float
    floor: float

    @classmethod
    def from_settings(cls, k: KnowledgeSettings) -> Relevance:
        return cls(k.relevance_bias, k.relevance_weight_vector, k.relevance_weight_lexical,
                   k.min_relevance)

    def score(self, cosine: float, lexical: float, mode: Mode = "hybrid") -> float:
        """sigmoid(bias + w·features); a single-retriever mode uses its own feature only."""
        z = self.bias
        if mode != "fts":
            z += self.weight_vector * cosine
        if mode != "vector":
            z += self.weight_lexical * lexical
        return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    source: str
    title: str
    heading: str
    text: str
    score: float            # calibrated relevance, 0..1
    cosine: float = 0.0
    lexical: float = 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One chunk either retriever proposed, with both features (for ranking and for fitting)."""

    chunk_id: int
    doc_id: int
    source: str
    title: str
    heading: str
    text: str
    cosine: float
    lexical: float


class Searcher:
    """Read-only, thread-safe access to the current generation of one index directory."""

    def __init__(self, index_dir: Path, *, relevance: Relevance | None = None,
                 max_per_document: int = 2, embedder_name: str | None = None) -> None:
        self.index_dir = index_dir
        self.relevance = relevance or Relevance.from_settings(KnowledgeSettings())
        self.max_per_document = max_per_document
        self.embedder_name = embedder_name
        self.generation: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._pointer_stat: tuple[int, int, int] | None = None
        self._n_chunks = 1
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._pointer_stat = None

    def _current(self) -> sqlite3.Connection:
        """The connection for the live generation, reopened when the pointer changed."""
        pointer = self.index_dir / store.POINTER
        try:
            st = os.stat(pointer)
        except FileNotFoundError:
            raise IndexUnavailable(
                f"no knowledge index in {self.index_dir}; build it with "
                f"`edged-index-sync --source DIR_OR_URL --index-dir {self.index_dir}`") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._conn is not None and key == self._pointer_stat:
            return self._conn
        for attempt in range(3):   # the sync may delete the generation we just read: re-read
            gen = store.read_pointer(self.index_dir)
            if gen is None:
                raise IndexUnavailable(f"no knowledge index in {self.index_dir}")
            try:
                conn = store.connect_ro(store.db_path(self.index_dir, gen))
                meta = store.read_meta(conn)
                n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
                break
            except (IndexUnavailable, sqlite3.OperationalError):
                if attempt == 2:
                    raise
        if self.embedder_name is not None and meta.get("embedder") != self.embedder_name:
            conn.close()
            raise IndexUnavailable(
                f"index generation {gen} was built with embedder {meta.get('embedder')!r} but "
                f"the daemon uses {self.embedder_name!r}; run edged-index-sync (it rebuilds)")
        if self._conn is not None:
            self._conn.close()
        self._conn, self._pointer_stat, self.generation = conn, key, gen
        self._n_chunks = max(1, n_chunks)
        return conn

    def candidates(self, query: str, vectors: np.ndarray | None, mode: Mode = "hybrid",
                   also: tuple[str, ...] = ()) -> list[Candidate]:
        """Every chunk either retriever proposes for the question (and its other phrasings
        ``also``, e.g. a translation), with both features. Blocking."""
        with self._lock:
            conn = self._current()
            alternatives = query_alternatives(query, *also)
            ids: dict[int, None] = {}
            if mode in ("hybrid", "fts") and (match := fts_query(alternatives)):
                rows = conn.execute(
                    "SELECT rowid FROM fts_chunks WHERE fts_chunks MATCH ?"
                    " ORDER BY bm25(fts_chunks, 2.0, 1.5, 1.0) LIMIT ?",
                    (match, LEXICAL_CANDIDATES)).fetchall()
                ids.update((r[0], None) for r in rows)
            qvecs = None if vectors is None else np.atleast_2d(np.asarray(vectors, np.float32))
            if mode in ("hybrid", "vector") and qvecs is not None:
                for packed in store.bits(qvecs):
                    rows = conn.execute(
                        "SELECT chunk_id FROM vec_chunks WHERE embedding MATCH vec_bit(?)"
                        " AND k = ?", (packed.tobytes(), VECTOR_CANDIDATES)).fetchall()
                    ids.update((r[0], None) for r in rows)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                "SELECT c.id, c.doc_id, d.source_id, d.title, c.heading, c.text, c.lang, c.vec"
                f" FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
                list(ids)).fetchall()
            idf = self._idf(conn, alternatives)
        if qvecs is not None and rows:
            mat = np.frombuffer(b"".join(r[7] for r in rows), np.int8).reshape(len(rows), -1)
            mat = mat.astype(np.float32)
            mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-9)
            cosines = (mat @ qvecs.T).max(axis=1)
        else:
            cosines = np.zeros(len(rows), np.float32)
        total = sum(idf.values()) or 1.0
        out = []
        for r, cos in zip(rows, cosines, strict=True):
            stems = set(index_terms(f"{r[3]} {r[4]} {r[5]}", r[6]).split())  # r[6]: "es"/"en"
            covered = sum(idf[alts] for alts in alternatives if not stems.isdisjoint(alts))
            out.append(Candidate(r[0], r[1], r[2], r[3], r[4], r[5], float(cos),
                                 covered / total))
        return out

    def _idf(self, conn: sqlite3.Connection,
             alternatives: list[tuple[str, ...]]) -> dict[tuple[str, ...], float]:
        """Inverse document frequency of each query word (its most frequent stem counts)."""
        stems = sorted({s for alts in alternatives for s in alts})
        df: dict[str, int] = {}
        if stems:
            marks = ",".join("?" * len(stems))
            df = dict(conn.execute(f"SELECT term, doc FROM fts_vocab WHERE term IN ({marks})",
                                   stems).fetchall())
        n = self._n_chunks
        return {alts: math.log(1 + n / (1 + max(df.get(s, 0) for s in alts)))
                for alts in alternatives}

    def rank(self, candidates: list[Candidate], top_k: int, mode: Mode = "hybrid",
             floor: float | None = None) -> list[Hit]:
        """Calibrated, floored, per-document-capped top-k of the candidates."""
        rel = self.relevance
        floor = rel.floor if floor is None else floor
        scored = sorted(((rel.score(c.cosine, c.lexical, mode), c) for c in candidates),
                        key=lambda sc: (-sc[0], sc[1].chunk_id))
        per_doc: dict[int, int] = {}
        hits: list[Hit] = []
        for score, c in scored:
            if score < floor or len(hits) == top_k:
                break
            if per_doc.get(c.doc_id, 0) >= self.max_per_document:
                continue
            per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1
            hits.append(Hit(c.chunk_id, c.source, c.title, c.heading, c.text, score, c.cosine,
                            c.lexical))
        return hits

    def search(self, query: str, vector: np.ndarray | None, top_k: int,
               mode: Mode = "hybrid", *, also: tuple[str, ...] = ()) -> list[Hit]:
        """Top-k relevant chunks (blocking: call via asyncio.to_thread from async code).

        ``vector`` is the query's embedding, or one row per phrasing (question, translation)."""
        return self.rank(self.candidates(query, vector, mode, also), top_k, mode)


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > limit // 2 else limit - 1].rstrip(" ,;:") + "…"


def cite(hits: list[Hit], char_budget: int) -> list[dict[str, object]]:
    """Snippets for the model: title, source, heading, text, relevance; texts fit the budget.

    Each snippet gets an equal share of the budget (at least 160 chars), and results stop once
    the budget is spent, so a voice model gets a few short, citable passages, not pages.
    """
    out: list[dict[str, object]] = []
    if not hits:
        return out
    share = max(160, char_budget // len(hits))
    left = char_budget
    for h in hits:
        if left < 80:
            break
        text = _trim(h.text, min(share, left))
        left -= len(text)
        out.append({"title": h.title, "source": h.source, "heading": h.heading, "text": text,
                    "relevance": round(h.score, 2)})
    return out

