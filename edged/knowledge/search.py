"""Hybrid retrieval: FTS5 BM25 over stems + binary-vector KNN, rescored into ONE calibrated score.

Why calibrated scores instead of rank fusion: the model must be able to tell an answer from
noise. Reciprocal-rank fusion gives every query's best passage about the same score (~0.02),
relevant or not, so an off-topic question got four confident-looking passages. Here each
candidate from any retriever gets three features:

- ``cosine``: the query vector against the chunk's stored int8 vector (exact rescoring of the
  Hamming stage's candidates, and a vector score for the lexical candidates too),
- ``lexical``: the idf-weighted share of the question's words whose stem the chunk contains
  (a rare word such as «fstab» counts more than «sistema»), best over the phrasings,
- ``label``: the same share in the chunk's title and heading («Alias de órdenes» for «cómo creo
  un alias de una orden»),

and two logistic models fitted on the tuning half of the labelled questions (``make eval``; see
:class:`Relevance`) turn them into a 0-1 relevance. Passages below ``min_relevance`` are dropped:
if none is left the tool says "nothing relevant". At most ``max_passages_per_document``
passages come from one document, and the same text only once.

Speed: the lexical queries are bounded (rarest words first, up to a postings budget; exact
stems, no prefix queries), the Hamming stage is a popcount scan over 64-byte sign-bit vectors
held in memory, and the word features are numpy lookups in hashes stored per chunk, so a query
stays in milliseconds at 100k chunks (``make bench``).

The searcher follows the generation pointer: before each query it stats ``CURRENT`` (one
syscall) and, if the sync published a new generation, opens it read-only and closes the old
one, so the daemon picks up a nightly rebuild without a restart.
"""

from __future__ import annotations

import fcntl
import math
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edged.config import KnowledgeSettings
from edged.knowledge import store
from edged.knowledge.store import IndexUnavailable
from edged.knowledge.text import fts_query, query_alternatives, term_hash

Mode = Literal["hybrid", "fts", "vector"]
LEXICAL_CANDIDATES = 40
LABEL_CANDIDATES = 20     # BM25 over title and heading only
POSTINGS_BUDGET = 2000    # chunks the BM25 queries may read per question (see bounded())
VECTOR_CANDIDATES = 100   # Hamming KNN oversampling before exact rescoring


@dataclass(frozen=True, slots=True)
class Relevance:
    """The calibrated relevance models (fitted by ``make eval``; see the module docstring).

    Two logistic models: the *section* model sees whether the passage's title and heading name
    the question's words (the strongest single clue in documentation) and orders the passages;
    the *text* model sees only the vector and the passage's own words, so an answer buried in
    a section with an unrelated heading («k-anonymity» under "Anonymisation") is not dropped.
    A passage is kept when either model puts it at or above ``floor``; its relevance is the
    larger of the two."""

    bias: float
    weight_vector: float
    weight_lexical: float
    weight_label: float
    text_bias: float
    text_weight_vector: float
    text_weight_lexical: float
    floor: float

    @classmethod
    def from_settings(cls, k: KnowledgeSettings) -> Relevance:
        return cls(k.relevance_bias, k.relevance_weight_vector, k.relevance_weight_lexical,
                   k.relevance_weight_label, k.text_relevance_bias,
                   k.text_relevance_weight_vector, k.text_relevance_weight_lexical,
                   k.min_relevance)

    def section(self, cosine: float, lexical: float, label: float,
                mode: Mode = "hybrid") -> float:
        """The section model: sigmoid(bias + w·features), a single-retriever mode using its own
        features only. Orders the passages."""
        z = self.bias
        if mode != "fts":
            z += self.weight_vector * cosine
        if mode != "vector":
            z += self.weight_lexical * lexical + self.weight_label * label
        return _sigmoid(z)

    def score(self, cosine: float, lexical: float, label: float, mode: Mode = "hybrid") -> float:
        """The relevance reported and floored: the larger of the section and text models."""
        z = self.text_bias
        if mode != "fts":
            z += self.text_weight_vector * cosine
        if mode != "vector":
            z += self.text_weight_lexical * lexical
        return max(self.section(cosine, lexical, label, mode), _sigmoid(z))


def _sigmoid(z: float) -> float:
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
    label: float = 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One chunk a retriever proposed, with every feature (for ranking and for fitting)."""

    chunk_id: int
    doc_id: int
    source: str
    title: str
    heading: str
    text: str
    cosine: float
    lexical: float
    label: float


def _coverage(blobs: list[bytes], stems: list[str], phrasings: list[list[tuple[str, ...]]],
              idf: dict[tuple[str, ...], float]) -> np.ndarray:
    """Per candidate, the best over phrasings of the idf-weighted share of the phrasing's words
    whose stem (either language) is among the candidate's stored term hashes."""
    n = len(blobs)
    if not stems or not n:
        return np.zeros(n, np.float32)
    qh = np.array([term_hash(s) for s in stems], np.uint32)
    order = np.argsort(qh)
    qsorted = qh[order]
    flat = np.frombuffer(b"".join(blobs), np.uint32)
    owner = np.repeat(np.arange(n), [len(b) // 4 for b in blobs])
    pos = np.minimum(np.searchsorted(qsorted, flat), len(qsorted) - 1)
    found = qsorted[pos] == flat
    has = np.zeros((n, len(stems)), np.float32)
    has[owner[found], order[pos[found]]] = 1.0
    column = {s: i for i, s in enumerate(stems)}
    best = np.zeros(n, np.float32)
    for words in phrasings:
        if not words:
            continue
        incidence = np.zeros((len(stems), len(words)), np.float32)
        for j, alts in enumerate(words):
            incidence[[column[s] for s in alts], j] = 1.0
        weights = np.array([idf[alts] for alts in words], np.float32)
        covered = ((has @ incidence) > 0) @ weights / max(float(weights.sum()), 1e-9)
        best = np.maximum(best, covered)
    return best


def bounded(alternatives: list[tuple[str, ...]], df: dict[str, int],
            budget: int = POSTINGS_BUDGET) -> list[tuple[str, ...]]:
    """The query words the BM25 retrievers use: rarest first, while their posting lists add up
    to at most ``budget`` chunks (always the rarest word). An OR query reads every posting of
    every word, so words found in a tenth of the index («archivo», "file") made a query cost
    30 ms at 100k chunks while adding nothing to the ranking; the relevance features still
    count every word (``_coverage``)."""
    cost = {alts: sum(df.get(s, 0) for s in alts) for alts in alternatives}
    chosen: list[tuple[str, ...]] = []
    spent = 0
    for alts in sorted(alternatives, key=lambda a: cost[a]):
        if cost[alts] == 0:
            continue   # in no chunk: nothing to find
        if chosen and spent + cost[alts] > budget:
            break
        chosen.append(alts)
        spent += cost[alts]
    return chosen


class SignMatrix:
    """The sign bits of every chunk's vector, in memory, for the first (Hamming) KNN stage.

    Why not vec0's own KNN: sqlite-vec 0.1.9 selects the k nearest of each 1024-vector chunk
    by repeated minimum search, O(n * k): 18 ms per phrasing at 100k chunks for k = 100. A
    popcount scan over the same bits held as 64-bit words is O(n) (~1.5 ms per phrasing at
    100k here) and costs 64 bytes per chunk of memory (6.4 MB at 100k). The bits are read from
    ``vec_chunks`` once per generation.
    """

    def __init__(self, ids: np.ndarray, words: np.ndarray) -> None:
        self.ids = ids           # (n,) chunk ids
        self.words = words       # (n_words, n) uint64, one row per 64-bit word: a fast scan

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> SignMatrix:
        """Read the bits row by row (no list of 100k row tuples: the daemon's memory)."""
        ids: list[int] = []
        packed = bytearray()
        for chunk_id, bits in conn.execute("SELECT chunk_id, embedding FROM vec_chunks"):
            ids.append(chunk_id)
            packed += bits
        return cls(np.array(ids, np.int64), cls._words(packed, len(ids)))

    @staticmethod
    def _words(packed: bytes | bytearray, n: int) -> np.ndarray:
        raw = np.frombuffer(packed, np.uint8).reshape(n, -1) if n else np.zeros((0, 8), np.uint8)
        pad = -raw.shape[1] % 8   # whole 64-bit words; zero bits never differ
        if pad:
            raw = np.hstack([raw, np.zeros((n, pad), np.uint8)])
        return np.ascontiguousarray(raw.view(np.uint64).T)

    def nearest(self, vectors: np.ndarray, k: int) -> list[int]:
        """Chunk ids of the k nearest by Hamming distance, for each query vector."""
        n = len(self.ids)
        if n == 0:
            return []
        query = self._words(store.bits(vectors).tobytes(), len(vectors))
        out: list[int] = []
        for q in query.T:
            dist = np.bitwise_count(self.words[0] ^ q[0]).astype(np.uint16)
            for row, word in zip(self.words[1:], q[1:], strict=True):
                dist += np.bitwise_count(row ^ word)
            # the k-th smallest distance from a histogram (distances are 0..bits): cheaper
            # than a partial sort of n values; ties at the threshold are cut by position
            cut = int(np.searchsorted(np.cumsum(np.bincount(dist)), min(k, n)))
            near = np.flatnonzero(dist < cut)
            tied = np.flatnonzero(dist == cut)[:min(k, n) - len(near)]
            out.extend(self.ids[np.concatenate([near, tied])].tolist())
        return out


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
        self._signs: SignMatrix | None = None
        self._fd: int | None = None    # the generation file, for the per-query shared flock
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._fd is not None:
            os.close(self._fd)
        self._conn, self._fd, self._pointer_stat, self._signs = None, None, None, None

    def _pointer_key(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.index_dir / store.POINTER)
        except FileNotFoundError:
            raise IndexUnavailable(
                f"no knowledge index in {self.index_dir}; build it with "
                f"`edged-index-sync --source DIR_OR_URL --index-dir {self.index_dir}`") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _shared(self, fd: int, key: tuple[int, int, int]) -> bool:
        """A shared flock on a generation file for one query, if it is still the live one.

        The sync recycles the previous generation into the next one in place (store.py), after
        taking an exclusive flock: this lock makes it wait for a query in flight, and a reader
        that finds the file locked or the pointer moved reopens the live generation."""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if self._pointer_key() != key:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True

    def _unshare(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _current(self) -> sqlite3.Connection:
        """The connection for the live generation, reopened when the pointer changed, with a
        shared flock on its file held until ``_unshare`` (call with ``self._lock`` held)."""
        for _ in range(3):   # the sync may replace or recycle the file we just looked at
            key = self._pointer_key()
            if self._conn is not None and self._fd is not None and key == self._pointer_stat:
                if self._shared(self._fd, key):
                    return self._conn
                self._drop()
                continue
            gen = store.read_pointer(self.index_dir)
            if gen is None:
                raise IndexUnavailable(f"no knowledge index in {self.index_dir}")
            path = store.db_path(self.index_dir, gen)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if not self._shared(fd, key):
                os.close(fd)
                continue
            try:
                conn = store.connect_ro(path)
                meta = store.read_meta(conn)
                n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
            except (IndexUnavailable, sqlite3.Error):
                os.close(fd)   # closing the descriptor releases its lock
                raise
            if self.embedder_name is not None and meta.get("embedder") != self.embedder_name:
                conn.close()
                os.close(fd)
                raise IndexUnavailable(
                    f"index generation {gen} was built with embedder {meta.get('embedder')!r} "
                    f"but the daemon uses {self.embedder_name!r}; run edged-index-sync "
                    "(it rebuilds)")
            self._drop()
            self._conn, self._fd, self._pointer_stat, self.generation = conn, fd, key, gen
            self._n_chunks = max(1, n_chunks)
            return conn
        raise IndexUnavailable(f"the index in {self.index_dir} is being updated; try again")

    def candidates(self, query: str, vectors: np.ndarray | None, mode: Mode = "hybrid",
                   also: tuple[str, ...] = ()) -> list[Candidate]:
        """Every chunk a retriever proposes for the question (and its other phrasings
        ``also``, e.g. a translation), with every feature. Blocking.

        Three retrievers: BM25 over title, heading and text; BM25 over title and heading only
        (a section whose label names the question's subject, however long its text); Hamming
        KNN over the sign bits, once per phrasing."""
        phrasings = [query_alternatives(text) for text in (query, *also)]
        alternatives = query_alternatives(query, *also)
        with self._lock:
            conn = self._current()
            try:
                rows, df = self._retrieve(conn, alternatives, vectors, mode)
            finally:
                self._unshare()
        if not rows:
            return []
        qvecs = None if vectors is None else np.atleast_2d(np.asarray(vectors, np.float32))
        if qvecs is not None:
            mat = np.frombuffer(b"".join(r[6] for r in rows), np.int8).reshape(len(rows), -1)
            mat = mat.astype(np.float32)
            mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-9)
            cosines = (mat @ qvecs.T).max(axis=1)
        else:
            cosines = np.zeros(len(rows), np.float32)
        idf = self._idf(df, alternatives)
        stems = sorted({s for alts in alternatives for s in alts})
        lexical = _coverage([r[7] for r in rows], stems, phrasings, idf)
        label = _coverage([r[8] for r in rows], stems, phrasings, idf)
        return [Candidate(r[0], r[1], r[2], r[3], r[4], r[5], float(cos), float(lex), float(lab))
                for r, cos, lex, lab in zip(rows, cosines, lexical, label, strict=True)]

    def _retrieve(self, conn: sqlite3.Connection, alternatives: list[tuple[str, ...]],
                  vectors: np.ndarray | None, mode: Mode) -> tuple[list[Any], dict[str, int]]:
        """The candidates' rows (id, doc, source, title, heading, text, vec, terms, label) and
        the document frequency of every query stem."""
        df = self._df(conn, alternatives)
        ids: dict[int, None] = {}
        if mode in ("hybrid", "fts") and (match := fts_query(bounded(alternatives, df))):
            for expr, limit in ((match, LEXICAL_CANDIDATES),
                                (f"{{title heading}} : ({match})", LABEL_CANDIDATES)):
                rows = conn.execute(
                    "SELECT rowid FROM fts_chunks WHERE fts_chunks MATCH ?"
                    " ORDER BY bm25(fts_chunks, 2.0, 1.5, 1.0) LIMIT ?",
                    (expr, limit)).fetchall()
                ids.update((r[0], None) for r in rows)
        if mode in ("hybrid", "vector") and vectors is not None:
            if self._signs is None:
                self._signs = SignMatrix.load(conn)
            qvecs = np.atleast_2d(np.asarray(vectors, np.float32))
            ids.update((i, None) for i in self._signs.nearest(qvecs, VECTOR_CANDIDATES))
        if not ids:
            return [], df
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            "SELECT c.id, c.doc_id, d.source_id, d.title, c.heading, c.text, c.vec,"
            " c.terms, c.label FROM chunks c JOIN documents d ON d.id = c.doc_id"
            f" WHERE c.id IN ({marks})", list(ids)).fetchall()
        return rows, df

    @staticmethod
    def _df(conn: sqlite3.Connection, alternatives: list[tuple[str, ...]]) -> dict[str, int]:
        """How many chunks contain each stem of the query words."""
        stems = sorted({s for alts in alternatives for s in alts})
        if not stems:
            return {}
        marks = ",".join("?" * len(stems))
        return dict(conn.execute(f"SELECT term, doc FROM fts_vocab WHERE term IN ({marks})",
                                 stems).fetchall())

    def _idf(self, df: dict[str, int],
             alternatives: list[tuple[str, ...]]) -> dict[tuple[str, ...], float]:
        """Inverse document frequency of each query word (its most frequent stem counts)."""
        n = self._n_chunks
        return {alts: math.log(1 + n / (1 + max(df.get(s, 0) for s in alts)))
                for alts in alternatives}


    def rank(self, candidates: list[Candidate], top_k: int, mode: Mode = "hybrid",
             floor: float | None = None) -> list[Hit]:
        """Calibrated, floored, per-document-capped top-k of the candidates, each text once."""
        rel = self.relevance
        floor = rel.floor if floor is None else floor
        ordered = sorted(candidates, key=lambda c: (-rel.section(c.cosine, c.lexical, c.label,
                                                                 mode), c.chunk_id))
        per_doc: dict[int, int] = {}
        seen_texts: set[str] = set()
        hits: list[Hit] = []
        for c in ordered:
            if len(hits) == top_k:
                break
            score = rel.score(c.cosine, c.lexical, c.label, mode)
            # the same passage in two documents (bash and rbash, grep and egrep) is said once
            if (score < floor or per_doc.get(c.doc_id, 0) >= self.max_per_document
                    or c.text in seen_texts):
                continue
            per_doc[c.doc_id] = per_doc.get(c.doc_id, 0) + 1
            seen_texts.add(c.text)
            hits.append(Hit(c.chunk_id, c.source, c.title, c.heading, c.text, score, c.cosine,
                            c.lexical, c.label))
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

