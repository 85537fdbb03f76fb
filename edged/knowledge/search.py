"""Hybrid retrieval: vector KNN (vec0, cosine) + FTS5 BM25, fused by reciprocal rank.

Why both: the local static embedder is small and English-trained, so exact words (product
names, Spanish terms) are best found by BM25, while paraphrases ("who signs off a model?" vs
"approvals") need vectors. Reciprocal-rank fusion needs no score calibration between the two:
score = w_fts / (rrf_k + rank_fts) + w_vec / (rrf_k + rank_vec).

The searcher follows the generation pointer: before each query it stats ``CURRENT`` (one
syscall) and, if the sync published a new generation, opens it read-only and closes the old
one, so the daemon picks up a nightly rebuild without a restart.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edged.knowledge import store
from edged.knowledge.store import IndexUnavailable

Mode = Literal["hybrid", "fts", "vector"]
MAX_QUERY_TERMS = 16
CANDIDATES = 30    # per retriever; fused then cut to top_k

# Function words that match everything and only slow BM25 down (accents folded, lowercase).
STOPWORDS = frozenset(
    """
a al algo como con cual cuales cuando de del donde el ella ellos en entre es esta este esto
eso hay la las le les lo los mas me mi muy no o para pero por que quien se ser si sin sobre
son su sus te tiene un una uno unos y ya yo
about an and are as at be by can do does for from how i in is it me my of on or so that the
their them there this to was what when where which who why will with you your
""".split()  # noqa: SIM905 - a word list reads better as text
)


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    source: str
    title: str
    heading: str
    text: str
    score: float


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def fts_query(text: str) -> str | None:
    """Turn any user text into a safe FTS5 MATCH expression, or None if nothing is left.

    Only word characters survive, each term is double-quoted (so quotes, ``AND``/``NEAR``,
    ``*``, ``:`` or parentheses in the input are plain words, never syntax), and terms are
    OR-ed so a spoken question need not contain every word. Terms of 4+ letters become prefix
    queries after dropping a plural ``-s``/``-es``: "modelos" finds "modelo", "auditorías"
    finds "auditoría" - a cheap stand-in for a Spanish stemmer.
    """
    terms: list[str] = []
    for word in re.findall(r"\w+", _fold(text)):
        if word in STOPWORDS or (word.isdigit() and len(word) < 2):
            continue
        if len(word) >= 5 and word.endswith("es") and word[-3] not in "aeiou":
            stem = word[:-2]
        elif len(word) >= 4 and word.endswith("s") and not word.endswith("ss"):
            stem = word[:-1]
        else:
            stem = word
        term = f'"{stem}"*' if len(stem) >= 4 else f'"{stem}"'
        if term not in terms:
            terms.append(term)
    return " OR ".join(terms[:MAX_QUERY_TERMS]) or None


class Searcher:
    """Read-only, thread-safe access to the current generation of one index directory."""

    def __init__(self, index_dir: Path, *, weight_fts: float = 1.0, weight_vec: float = 1.0,
                 rrf_k: int = 60, min_vector_similarity: float = 0.0,
                 embedder_name: str | None = None) -> None:
        self.index_dir = index_dir
        self.min_vector_similarity = min_vector_similarity
        self.weight_fts = weight_fts
        self.weight_vec = weight_vec
        self.rrf_k = rrf_k
        self.embedder_name = embedder_name
        self.generation: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._pointer_stat: tuple[int, int, int] | None = None
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
        return conn

    def search(self, query: str, vector: np.ndarray | None, top_k: int,
               mode: Mode = "hybrid") -> list[Hit]:
        """Top-k chunks for a query (blocking: call via asyncio.to_thread from async code)."""
        with self._lock:
            conn = self._current()
            ranked: list[list[int]] = []
            weights: list[float] = []
            if mode in ("hybrid", "fts") and (match := fts_query(query)):
                rows = conn.execute(
                    "SELECT rowid FROM fts_chunks WHERE fts_chunks MATCH ?"
                    " ORDER BY bm25(fts_chunks, 2.0, 1.5, 1.0) LIMIT ?",
                    (match, CANDIDATES)).fetchall()
                ranked.append([r[0] for r in rows])
                weights.append(self.weight_fts)
            if mode in ("hybrid", "vector") and vector is not None:
                rows = conn.execute(
                    "SELECT chunk_id, distance FROM vec_chunks WHERE embedding MATCH ? AND k = ?"
                    " ORDER BY distance",
                    (np.asarray(vector, np.float32).tobytes(), CANDIDATES)).fetchall()
                if mode == "hybrid" and not (ranked and ranked[0]):
                    # No keyword in common with any chunk: only a confident vector match counts,
                    # so an off-topic question gets "nothing found" instead of the nearest noise.
                    rows = [r for r in rows if 1.0 - r[1] >= self.min_vector_similarity]
                ranked.append([r[0] for r in rows])
                weights.append(self.weight_vec)
            scores: dict[int, float] = {}
            for ids, w in zip(ranked, weights, strict=True):
                for rank, cid in enumerate(ids, start=1):
                    scores[cid] = scores.get(cid, 0.0) + w / (self.rrf_k + rank)
            best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
            if not best:
                return []
            marks = ",".join("?" * len(best))
            rows = conn.execute(
                "SELECT c.id, d.source_id, d.title, c.heading, c.text FROM chunks c"
                f" JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
                [cid for cid, _ in best]).fetchall()
        by_id = {r[0]: r for r in rows}
        return [Hit(cid, by_id[cid][1], by_id[cid][2], by_id[cid][3], by_id[cid][4], score)
                for cid, score in best if cid in by_id]


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > limit // 2 else limit - 1].rstrip(" ,;:") + "…"


def cite(hits: list[Hit], char_budget: int) -> list[dict[str, object]]:
    """Snippets for the model: title, source, heading, text, score; texts fit the budget.

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
                    "score": round(h.score, 4)})
    return out
