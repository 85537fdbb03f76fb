"""Knowledge index: chunking, FTS query safety, hybrid search, the search_knowledge tool, the
gemini embedder's wire request, the real local model on the sample KB, and index_status."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import runpy
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.config import Settings, load_settings
from edged.knowledge import SAMPLE_KB, store
from edged.knowledge import chunking as ch
from edged.knowledge.embedders import (
    MULTILINGUAL_DIR_NAME,
    Embedder,
    EmbedderError,
    GeminiEmbedder,
    MultilingualEmbedder,
    make_embedder,
    resolve_model_dir,
)
from edged.knowledge.evaluate import load_questions
from edged.knowledge.search import Candidate, Relevance, Searcher, SignMatrix, bounded, cite
from edged.knowledge.status import index_status
from edged.knowledge.store import FTS_TOKENIZER
from edged.knowledge.sync import run_sync, sync_and_record
from edged.knowledge.text import detect_language, fts_query, index_terms, query_alternatives
from edged.knowledge.tool import make_search_tool
from edged.tools import ToolRegistry
from edged_testing.sim import LiveSimulator

DEMO_QUESTION = "¿Qué es la gobernanza en el contexto de MLOps?"


class HashEmbedder:
    """Tiny deterministic bag-of-words embedder (feature hashing) for tests where the model is
    irrelevant; counts what it embeds so tests can prove unchanged documents cost nothing."""

    def __init__(self, dims: int = 32, name: str = "hash-test") -> None:
        self.dims = dims
        self.name = f"{name}:{dims}"
        self.calls = 0
        self.texts: list[str] = []

    async def embed(self, texts: Sequence[str], task: str) -> np.ndarray:
        self.calls += 1
        self.texts.extend(texts)
        out = np.zeros((len(texts), self.dims), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[i, h % self.dims] += 1.0 if h & 1 << 31 else -1.0
            out[i, 0] += 0.01   # never the zero vector
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_settings(tmp: Path, **knowledge: Any) -> Settings:
    """Settings isolated from /etc/edged and the OTA override of the machine running tests."""
    admin = tmp / "edged.toml"
    admin.touch()
    return load_settings(config_path=admin, override_path=tmp / "no-override.toml", env={}, extra={
        "knowledge": {"index_dir": str(tmp / "index"), **knowledge},
        "sync": {"state_dir": str(tmp / "state")}})


def write_docs(root: Path, docs: dict[str, str | bytes]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, body in docs.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(body, bytes):
            p.write_bytes(body)
        else:
            p.write_text(body, encoding="utf-8")


# --- chunking -------------------------------------------------------------------------------

MD = """# Guía

Intro text before any section.

## Instalación

Paso uno: instala el paquete.

### Detalles

```
# not a heading inside a fence
```

Más detalles aquí.
"""


def test_markdown_chunks_keep_heading_paths_and_stable_ids() -> None:
    doc = ch.parse("docs/guia.md", MD.encode())
    assert doc.title == "Guía"
    headings = [c.heading for c in doc.chunks]
    assert headings == ["", "Instalación", "Instalación > Detalles"]
    assert "# not a heading inside a fence" in doc.chunks[2].text
    again = ch.parse("docs/guia.md", MD.encode())
    assert [c.key for c in again.chunks] == [c.key for c in doc.chunks]
    other = ch.parse("docs/otra.md", MD.encode())
    assert not {c.key for c in other.chunks} & {c.key for c in doc.chunks}


def test_html_uses_title_headings_and_skips_scripts_and_nav() -> None:
    doc = ch.parse("evaluacion.html", (SAMPLE_KB / "evaluacion-modelos.html").read_bytes())
    assert doc.title == "Evaluación de modelos de clasificación"
    text = " ".join(c.text for c in doc.chunks)
    assert "no se indexa" not in text and "Inicio | Guías" not in text
    assert "Curva ROC y AUC" in [c.heading for c in doc.chunks]
    assert "exhaustividad" in text


def test_plain_text_and_long_paragraphs_are_split_within_limit() -> None:
    long = " ".join(f"Sentence number {i} is here." for i in range(200))
    doc = ch.parse("notes.txt", f"First.\n\n{long}\n".encode())
    assert doc.title == "notes"
    assert len(doc.chunks) > 3
    assert all(len(c.text) <= ch.MAX_CHARS for c in doc.chunks)
    assert " ".join(c.text for c in doc.chunks).count("Sentence number") == 200


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("junk.md", b"\x00\x01\x02binary\x00", "binary"),
    ("latin1.md", "información".encode("latin-1"), "not valid UTF-8"),
    ("slides.pdf", b"%PDF-1.4", "unsupported type"),
    ("empty.md", b"   \n\n", "no text"),
])
def test_bad_documents_are_refused_with_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(ch.DocumentError, match=reason) as e:
        ch.parse(name, data)
    assert name in str(e.value)


# --- FTS query safety and tokenizer ---------------------------------------------------------

FTS_ROWS = [("La gobernanza de la información y las auditorías", "es"),
            ("Model registry with approvals", "en"),
            ("Los modelos en producción", "es"),
            ("Para borrar un fichero use rm; borra también directorios con -r", "es"),
            ("Copy the files and keep the notes", "en"),
            ("El lunes a las tres se apaga el servidor", "es")]


@pytest.fixture
def fts_db() -> Iterator[sqlite3.Connection]:
    """A real FTS5 table holding stems the way the index does (each row in its language)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize=\"{FTS_TOKENIZER}\")")
    conn.executemany("INSERT INTO t(text) VALUES (?)",
                     [(index_terms(text, lang),) for text, lang in FTS_ROWS])  # type: ignore[arg-type]
    yield conn
    conn.close()


@pytest.mark.parametrize("query", [
    'what "is" this', 'a AND OR NOT b', "NEAR(x y, 3)", "col:term", "*", "^start", "-x +y",
    "(((", '"unterminated', "", "   ", "¿¡?!", "text: 'quoted' \"double\"", "a" * 5000,
    "DROP TABLE t; --", "emoji 🤖 query", "tab\tnew\nline",
])
def test_any_user_query_is_safe_fts_syntax(fts_db: sqlite3.Connection, query: str) -> None:
    match = fts_query(query_alternatives(query))
    if match is not None:
        fts_db.execute("SELECT rowid FROM t WHERE t MATCH ?", (match,)).fetchall()


@pytest.mark.parametrize(("query", "expected"), [
    ("informacion", 1), ("GOBERNANZA", 1), ("auditoria", 1), ("modelo", 3),
    ("approval", 2), ("producción", 3),
    # Spanish verbs as people ask vs. as the page writes them (Snowball, per chunk language)
    ("¿cómo borro un fichero?", 4), ("borré los ficheros", 4), ("¿cómo apago el servidor?", 6),
    # the old plural trimming cut these to fil/not/tre/lun and found nothing
    ("files", 5), ("notes", 5), ("tres", 6), ("lunes", 6), ("copying a file", 5),
])
def test_morphology_accents_case_and_plurals_match(fts_db: sqlite3.Connection, query: str,
                                                   expected: int) -> None:
    match = fts_query(query_alternatives(query))
    assert match is not None
    rows = fts_db.execute("SELECT rowid FROM t WHERE t MATCH ?", (match,)).fetchall()
    assert expected in {r[0] for r in rows}


def test_query_words_are_bounded_and_stop_words_dropped() -> None:
    alts = query_alternatives("¿cómo y por qué " + " ".join(f"palabra{i}" for i in range(40)))
    assert len(alts) == 12 and ("como",) not in alts


# --- search, budget, tool -------------------------------------------------------------------

KB = {
    "gobernanza.md": "# Gobernanza\n\nRegistro de modelos, linaje y aprobaciones.\n\n"
                     "## Auditorías\n\nLas auditorías comprueban los controles.\n",
    "drift.md": "# Data drift\n\nMonitoring detects data drift and concept drift.\n",
    "device.txt": "The device mutes the microphone with edgectl mute.\n",
}


def test_language_is_told_per_chunk_by_function_words() -> None:
    assert detect_language("¿Cómo se borra un fichero en la consola?") == "es"
    assert detect_language("How do you delete a file from the console?") == "en"
    assert detect_language("ls -l /etc", fallback="es") == "es"   # no evidence: the fallback
    spanish = "Esta sección explica cómo se configura la red del sistema con los archivos de " \
              "configuración que hay en el directorio, y qué hace cada uno de ellos. " * 5
    english = "This paragraph was never translated, so it is still in English and it should " \
              "be stemmed with the English rules that are used for all of the other text. " * 5
    doc = ch.parse("red.md", f"# Red\n\n{spanish}\n\n{english}\n".encode())
    langs = [("translated" in c.text, c.lang) for c in doc.chunks]
    assert {lang for english, lang in langs if not english} == {"es"}
    assert {lang for english, lang in langs if english} == {"en"}
    # ...so the English paragraph's words are English stems: "translated" -> "translat"
    last = doc.chunks[-1]
    assert "translat" in index_terms(last.text, last.lang).split()


def test_bm25_reads_the_rarest_words_within_a_postings_budget() -> None:
    words = [("fstab",), ("archiv", "archivo"), ("sistem", "system")]
    df = {"fstab": 12, "archiv": 900, "archivo": 0, "sistem": 3000, "system": 2500}
    assert bounded(words, df, budget=2000) == [("fstab",), ("archiv", "archivo")]
    assert bounded(words, df, budget=10) == [("fstab",)]          # the rarest always goes
    assert bounded([("zzz",)], {}, budget=10) == []               # in no chunk: no query


def test_hamming_stage_finds_the_nearest_sign_patterns() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3000, 64)).astype(np.float32)
    ids = np.arange(3000) * 10
    signs = SignMatrix(ids, SignMatrix._words(store.bits(vectors).tobytes(), 3000))
    query = vectors[[5, 17]] + 0.05 * rng.normal(size=(2, 64)).astype(np.float32)
    got = signs.nearest(query, 20)
    assert len(got) == 40 and got[:20].count(50) == 1 and 170 in got[20:]
    assert sorted(signs.nearest(query[:1], 5000)) == sorted(ids.tolist())   # k > n: all


def build_index(tmp: Path, docs: dict[str, str | bytes] | None = None,
                embedder: Embedder | None = None) -> tuple[Settings, Embedder]:
    settings = make_settings(tmp)
    write_docs(tmp / "src", KB if docs is None else docs)
    emb = embedder or HashEmbedder()
    run_sync(settings, source=str(tmp / "src"), embedder=emb)
    return settings, emb


def test_hybrid_search_finds_by_keyword_and_cites(tmp_path: Path) -> None:
    settings, emb = build_index(tmp_path)
    searcher = Searcher(settings.knowledge.index_dir, embedder_name=emb.name)
    vec = asyncio.run(emb.embed(["auditorias"], "query"))[0]
    hits = searcher.search("auditorias", vec, 3)
    assert hits[0].source == "gobernanza.md"
    assert hits[0].heading == "Auditorías" and hits[0].title == "Gobernanza"
    assert searcher.generation == 1


def test_cite_fits_the_character_budget() -> None:
    from edged.knowledge.search import Hit

    hits = [Hit(i, f"s{i}.md", "T", "H", "palabra " * 200, 1.0 / (i + 1)) for i in range(6)]
    out = cite(hits, 500)
    assert sum(len(str(r["text"])) for r in out) <= 500
    assert all(set(r) == {"title", "source", "heading", "text", "relevance"} for r in out)
    assert str(out[0]["text"]).endswith("…")


async def call(registry: ToolRegistry, args: dict[str, Any] | None) -> dict[str, Any]:
    return (await registry.call("search_knowledge", args)).response


@pytest.fixture
def registry_and_index(tmp_path: Path) -> tuple[ToolRegistry, Settings]:
    settings, emb = build_index(tmp_path)
    reg = ToolRegistry(timeout_s=5)
    reg.register(make_search_tool(settings, embedder=emb))
    return reg, settings


async def test_tool_returns_small_cited_results(registry_and_index: Any) -> None:
    reg, settings = registry_and_index
    resp = await call(reg, {"query": "data drift monitoring", "top_k": 2})
    assert "error" not in resp
    assert len(resp["results"]) <= 2
    assert resp["results"][0]["source"] == "drift.md"
    assert set(resp["results"][0]) == {"title", "source", "heading", "text", "relevance"}
    assert len(json.dumps(resp)) < settings.knowledge.char_budget + 600


@pytest.mark.parametrize(("args", "needle"), [
    (None, "query"), ({}, "query"), ({"query": ""}, "query"), ({"query": 5}, "query"),
    ({"query": "x", "top_k": 0}, "top_k"), ({"query": "x", "top_k": 11}, "top_k"),
    ({"query": "x", "top_k": "3"}, "top_k"), ({"query": "x", "top_k": 2.5}, "top_k"),
    ({"query": "x", "extra": 1}, "extra"), ({"query": "¿?¡! ..."}, "no words"),
    ({"query": "q" * 501}, "query"),
])
async def test_tool_rejects_bad_arguments(registry_and_index: Any, args: Any,
                                          needle: str) -> None:
    reg, _ = registry_and_index
    resp = await call(reg, args)
    assert set(resp) == {"error", "retryable", "advice"}      # edged/tools.py error payload
    assert needle in resp["error"] and resp["retryable"] is False


async def test_tool_says_nothing_found_in_words(registry_and_index: Any) -> None:
    reg, _ = registry_and_index
    resp = await call(reg, {"query": "paella valenciana receta"})
    assert resp["results"] == []
    assert "Do not search again" in resp["message"]


async def test_tool_without_index_answers_with_the_fix(tmp_path: Path) -> None:
    reg = ToolRegistry(timeout_s=5)
    reg.register(make_search_tool(make_settings(tmp_path), embedder=HashEmbedder()))
    resp = await call(reg, {"query": "drift"})
    assert "edged-index-sync" in resp["error"]


async def test_tool_with_missing_model_answers_with_the_fix(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, multilingual_model=str(tmp_path / "no-model"))
    reg = ToolRegistry(timeout_s=5)
    reg.register(make_search_tool(settings))
    resp = await call(reg, {"query": "drift"})
    assert "make embedder" in resp["error"] and "no-model" in resp["error"]


async def test_slow_index_becomes_a_timeout_error_not_a_hang(
        registry_and_index: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reg, _ = registry_and_index
    release = threading.Event()
    original = Searcher.search

    def stuck(self: Searcher, *a: Any, **kw: Any) -> Any:
        release.wait(10)
        return original(self, *a, **kw)

    monkeypatch.setattr(Searcher, "search", stuck)
    reg.timeout_s = 0.3
    try:
        resp = await asyncio.wait_for(call(reg, {"query": "drift"}), 5)
    finally:
        release.set()
    assert "did not answer" in resp["error"]


async def test_broken_index_file_is_an_error_response(registry_and_index: Any) -> None:
    reg, settings = registry_and_index
    db = settings.knowledge.index_dir / "index-000001.db"
    db.write_bytes(b"this is not a database" * 100)
    resp = await call(reg, {"query": "drift"})
    assert set(resp) == {"error", "retryable", "advice"}


# --- embedders ------------------------------------------------------------------------------

def test_missing_local_model_error_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError) as e:
        resolve_model_dir(None, env={"EDGED_MODELS_DIR": str(tmp_path)})
    assert str(tmp_path / "edged-minilm-m2v") in str(e.value)
    assert "make embedder" in str(e.value)


async def test_gemini_embedder_sends_task_type_and_dimensionality() -> None:
    """The real SDK's embed_content request path, against the simulator's REST side."""
    async with LiveSimulator() as sim:
        emb = GeminiEmbedder("gemini-embedding-001", 64, "test-key-not-real",
                             base_url=sim.rest_base_url, ca_file=sim.ca_file)
        docs = await emb.embed(["uno", "dos", "tres"], "document")
        query = await emb.embed(["¿qué es la gobernanza?"], "query")
        again = await emb.embed(["dos"], "document")
        first, second, _ = sim.rest_requests
    assert docs.shape == (3, 64) and query.shape == (1, 64)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0)
    assert np.allclose(again[0], docs[1])          # same text, same vector
    assert first.path.endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert first.api_key_present
    reqs = first.body["requests"]
    assert [r["content"]["parts"][0]["text"] for r in reqs] == ["uno", "dos", "tres"]
    assert {r["taskType"] for r in reqs} == {"RETRIEVAL_DOCUMENT"}
    assert {r["outputDimensionality"] for r in reqs} == {64}
    assert second.body["requests"][0]["taskType"] == "RETRIEVAL_QUERY"
    assert emb.name == "gemini:gemini-embedding-001:64"


async def test_gemini_embedder_failure_is_an_embedder_error() -> None:
    async with LiveSimulator() as sim:
        emb = GeminiEmbedder("gemini-embedding-001", 64, "k", base_url=sim.rest_base_url + "/x",
                             ca_file=sim.ca_file)
        with pytest.raises(EmbedderError, match="gemini embedding failed"):
            await emb.embed(["uno"], "document")


REPO = Path(__file__).resolve().parents[1]


def _multilingual_model() -> Path:
    return resolve_model_dir(None, name=MULTILINGUAL_DIR_NAME)


def test_multilingual_table_rows_come_from_the_file_unchanged() -> None:
    """The int8 table is read row by row from model.npz (not loaded): the rows it returns are
    the stored ones, for single rows, runs, rows close enough to share a read and far ones."""
    model = _multilingual_model()
    emb = MultilingualEmbedder(model)
    with np.load(model / "model.npz") as z:
        coef = z["coef"]
    last = len(coef) - 1
    rows = np.array([0, 1, 2, 5, 5 + emb._coef.GAP, 6 + 3 * emb._coef.GAP, 40_000, last])
    assert np.array_equal(emb._coef.take(rows), coef[rows])
    assert emb._coef.take(np.array([], np.int64)).shape == (0, coef.shape[1])


def test_multilingual_model_truncated_under_a_running_embedder_is_an_error(
        tmp_path: Path) -> None:
    model = tmp_path / MULTILINGUAL_DIR_NAME
    model.mkdir()
    for f in _multilingual_model().iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    emb = MultilingualEmbedder(model)
    os.truncate(model / "model.npz", 600_000)   # a rebuild writing in place, a full disk
    with pytest.raises(EmbedderError, match=r"truncated.*make embedder"):
        emb.encode(["¿Qué es la gobernanza en MLOps?"])
    with pytest.raises(EmbedderError, match=r"unreadable.*make embedder"):
        MultilingualEmbedder(model)


def test_trimming_the_tokenizer_keeps_how_the_remaining_pieces_split_text(
        tmp_path: Path) -> None:
    """scripts/build-multilingual-embedder drops pieces from sp.model by rewriting its
    protobuf wire format; the real library loads the result and, on text that never needed the
    dropped pieces, splits it into the same pieces."""
    import sentencepiece

    trim = runpy.run_path(str(REPO / "scripts" / "build-multilingual-embedder"))["_trim_sp_model"]
    full_model = _multilingual_model() / "sp.model"
    full = sentencepiece.SentencePieceProcessor(model_file=str(full_model))
    text = "¿Cómo se monitoriza un modelo en producción? How is drift detected?"
    used = set(full.encode(text))
    keep = np.ones(full.get_piece_size(), bool)
    assert trim(full_model.read_bytes(), keep) == full_model.read_bytes()
    dropped = [i for i in range(3, full.get_piece_size()) if i not in used][-1000:]
    keep[dropped] = False
    (tmp_path / "sp.model").write_bytes(trim(full_model.read_bytes(), keep))
    trimmed = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    assert trimmed.get_piece_size() == full.get_piece_size() - 1000
    old_id = np.flatnonzero(keep)
    assert [int(old_id[i]) for i in trimmed.encode(text)] == full.encode(text)


# --- the real local model on the sample knowledge base --------------------------------------

@pytest.fixture(scope="module")
def sample_index(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("sample")
    settings = make_settings(tmp)
    result = run_sync(settings, source=str(SAMPLE_KB))
    assert result.documents == len(list(SAMPLE_KB.iterdir()))
    return settings


async def test_demo_question_finds_governance_doc_first_with_real_model(
        sample_index: Settings) -> None:
    assert isinstance(make_embedder(sample_index), MultilingualEmbedder)   # the default
    reg = ToolRegistry(timeout_s=10)
    reg.register(make_search_tool(sample_index))
    resp = await call(reg, {"query": DEMO_QUESTION})
    assert resp["results"][0]["source"] == "gobernanza-mlops.md"
    assert resp["results"][0]["title"] == "Gobernanza en MLOps"
    en = await call(reg, {"query": "how do I do a rollback of a bad model?",
                          "translation": "¿cómo vuelvo a la versión anterior de un modelo?"})
    assert {"model-registry.md", "incident-response.md"} & {r["source"] for r in en["results"]}


def test_labelled_questions_are_spanish_first_with_halves_and_no_answer_ones() -> None:
    qs = load_questions()
    assert len(qs) >= 150 and len({q.id for q in qs}) == len(qs)
    cats = [q.category for q in qs]
    assert cats.count("es-es") > len(qs) / 2
    assert {"en-es", "es-en", "en-en", "none"} <= set(cats)
    for cat in set(cats):   # every kind of question on both sides of the split
        assert {q.split for q in qs if q.category == cat} == {"tune", "test"}
    assert all(bool(q.relevant) == (q.category != "none") and q.translation for q in qs)


# --- status ---------------------------------------------------------------------------------

def test_index_status_reports_missing_then_live_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    before = index_status(settings)
    assert before["available"] is False and "edged-index-sync" in before["error"]
    write_docs(tmp_path / "src", KB)
    result = sync_and_record(settings, source=str(tmp_path / "src"), embedder=HashEmbedder())
    assert result.exit_code == 0
    st = index_status(settings)
    assert st["available"] is True
    assert (st["generation"], st["documents"], st["chunks"]) == (1, 3, result.chunks)
    assert st["db_bytes"] > 0 and st["embedder"] == "hash-test:32"
    assert st["last_sync"]["added"] == 3 and st["last_sync"]["generation"] == 1
    json.dumps(st)


# --- relevance floor, diversity, description (calibrated "nothing relevant") ---------------

async def test_off_topic_question_gets_nothing_relevant_with_real_model(
        sample_index: Settings) -> None:
    reg = ToolRegistry(timeout_s=10)
    reg.register(make_search_tool(sample_index))
    for q in ("¿qué tiempo hará mañana en Madrid?", "receta de paella valenciana"):
        resp = await call(reg, {"query": q})
        assert resp["results"] == [] and resp["message"].startswith("Nothing relevant"), q
    good = await call(reg, {"query": DEMO_QUESTION})
    assert all(0 < r["relevance"] <= 1 for r in good["results"])


def test_passages_per_document_are_capped(tmp_path: Path) -> None:
    big = "# Drift\n\n" + "\n\n".join(
        f"## Part {i}\n\nData drift section {i} about drift monitoring." for i in range(8))
    settings, emb = build_index(tmp_path, {**KB, "big.md": big})
    vec = asyncio.run(emb.embed(["data drift monitoring"], "query"))[0]
    for cap in (1, 2):
        searcher = Searcher(settings.knowledge.index_dir, max_per_document=cap)
        hits = searcher.search("data drift monitoring", vec, 4)
        sources = [h.source for h in hits]
        assert "drift.md" in sources and max(sources.count(s) for s in sources) <= cap
        searcher.close()


def test_tool_description_comes_from_config_or_index(tmp_path: Path) -> None:
    settings, emb = build_index(tmp_path)
    tool = make_search_tool(settings, embedder=emb)
    assert "3 Spanish and English documents" in tool.description
    assert "Gobernanza" in tool.description and "MLOps" not in tool.description
    assert "translation" in tool.description and "translation" in tool.parameters["properties"]
    settings.knowledge.description = "recetas de cocina de la abuela"
    assert "recetas de cocina de la abuela" in make_search_tool(settings).description


def test_an_answer_under_an_unrelated_heading_is_kept() -> None:
    """The section model alone would drop a passage whose text has every question word but
    whose heading has none; the text model keeps it, and ordering stays the section model's."""
    rel = Relevance(-6.4, 3.2, 1.0, 6.6, -6.4, 3.8, 4.8, floor=0.06)
    body_only = Candidate(1, 1, "privacy.md", "Privacy", "Anonymisation", "k-anonymity ...",
                          cosine=0.13, lexical=1.0, label=0.0)
    named = Candidate(2, 2, "k.md", "K-anonymity", "", "...", cosine=0.4, lexical=1.0,
                      label=1.0)
    off_topic = Candidate(3, 3, "x.md", "X", "", "...", cosine=0.1, lexical=0.3, label=0.0)
    assert rel.section(0.13, 1.0, 0.0) < rel.floor <= rel.score(0.13, 1.0, 0.0)
    searcher = Searcher(Path("/nonexistent"), relevance=rel, max_per_document=1)
    hits = searcher.rank([off_topic, body_only, named], 4)
    assert [h.source for h in hits] == ["k.md", "privacy.md"]
    assert hits[1].score == pytest.approx(rel.score(0.13, 1.0, 0.0))


async def test_answer_in_the_text_only_is_found_with_real_model(sample_index: Settings) -> None:
    reg = ToolRegistry(timeout_s=10)
    reg.register(make_search_tool(sample_index))
    resp = await call(reg, {"query": "what is k-anonymity", "translation": "qué es el k-anonimato"})
    assert resp["results"] and resp["results"][0]["source"] == "data-privacy.md"


def test_section_named_by_the_question_ranks_first(tmp_path: Path) -> None:
    shell = ("# Intérprete\n\n## Variables\n\nUna orden puede usar variables; un alias también "
             "aparece aquí de pasada entre otras órdenes.\n\n## Alias de órdenes\n\nDefine "
             "ll con: ll='ls -l'.\n")
    settings, emb = build_index(tmp_path, {**KB, "shell.md": shell})
    searcher = Searcher(settings.knowledge.index_dir, max_per_document=2)
    q = "cómo creo un alias de una orden"
    hits = searcher.search(q, asyncio.run(emb.embed([q], "query")), 4)
    assert hits[0].heading == "Alias de órdenes"
    searcher.close()


def test_the_same_passage_in_two_documents_is_returned_once(tmp_path: Path) -> None:
    page = "# grep\n\nBusca líneas que coinciden con un patrón en los archivos.\n"
    settings, emb = build_index(tmp_path, {**KB, "grep.md": page, "egrep.md": page})
    searcher = Searcher(settings.knowledge.index_dir)
    q = "buscar un patrón en los archivos"
    hits = searcher.search(q, asyncio.run(emb.embed([q], "query")), 4)
    texts = [h.text for h in hits]
    assert {"grep.md", "egrep.md"} & {h.source for h in hits}
    assert len(texts) == len(set(texts))
    searcher.close()


# --- clean documents ------------------------------------------------------------------------

SPHINX = b"""<!DOCTYPE html><html><head><title>os \xe2\x80\x94 Python docs</title></head><body>
<div class="related" role="navigation"><ul><li>previous | next | modules</li></ul></div>
<div class="document"><div class="sphinxsidebar" role="navigation"><h3>Navigation</h3>
<ul><li>Report a Bug</li><li>Show Source</li></ul></div>
<div class="body" role="main"><section>
<h1>os \xe2\x80\x94 Miscellaneous interfaces<a class="headerlink"
href="#os">\xc2\xb6</a></h1>
<p>This module provides a portable way.</p>
<section><h2>Files and Directories<a class="headerlink" href="#f">\xc2\xb6</a></h2>
<p>Use <code>os.remove()</code> to delete a file.</p></section></section></div></div>
<footer>Copyright notice</footer></body></html>"""

MAN = """LS(1)                         Ordenes de usuario                         LS(1)

NOMBRE
       ls - lista el contenido de un directorio

DESCRIPCI\u00d3N
       Por defecto, muestra informaci\u00f3n de los ARCHIVO del directorio actual.

GNU coreutils 9.1               Septiembre de 2022                         LS(1)
"""


def test_html_keeps_main_content_only_and_clean_headings() -> None:
    doc = ch.parse("library/os.html", SPHINX)
    text = " ".join(c.heading + " " + c.text for c in doc.chunks)
    assert doc.title == "os \u2014 Miscellaneous interfaces"
    assert "Files and Directories" in [c.heading for c in doc.chunks]
    for junk in ("Report a Bug", "Show Source", "Navigation", "previous", "Copyright", "\u00b6"):
        assert junk not in text and junk not in doc.title, junk
    assert "os.remove()" in text


def test_html_events_drop_furniture_inside_out_and_keep_what_follows_it() -> None:
    page = ("<html><head><title>Page  title</title><style>p {}</style></head><body>"
            "<div class='sphinxsidebar'><main><h1>Not this</h1><p>sidebar main</p></main></div>"
            "<p>Before <span class='headerlink'>¶</span>after the dropped link.</p>"
            "<h2>Uso <a class='headerlink' href='#x'>¶</a></h2><p>Texto <b>en</b> negrita."
            "<nav>menu</nav> y más.</p></body></html>")
    doc = ch.parse("p.html", page.encode())
    assert doc.title == "Page title"                       # no h1 outside the furniture
    text = " ".join(c.heading + " | " + c.text for c in doc.chunks)
    assert "sidebar main" not in text and "Not this" not in text and "menu" not in text
    assert "Before after the dropped link." in text and "Texto en negrita. y más." in text
    assert [c.heading for c in doc.chunks][-1] == "Uso"


def test_man_page_and_plain_text_titles_come_from_their_structure() -> None:
    doc = ch.parse("man1/ls.1.txt", MAN.encode())
    assert doc.title == "ls - lista el contenido de un directorio"
    assert [c.heading for c in doc.chunks][:2] == ["Nombre", "Descripci\u00f3n"]
    assert all(c.lang == "es" for c in doc.chunks)
    txt = ch.parse("notes/backup.txt", b"Backup policy\n=============\n\nKeep three copies.\n")
    assert txt.title == "Backup policy"


def test_symlinks_are_followed_and_cycles_reported(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    src = tmp_path / "src"
    write_docs(src, {"a/doc.md": "# Doc\n\nalpha\n", "b.md": "# B\n\nbeta\n"})
    (src / "a" / "loop").symlink_to(src)                 # a cycle back to the root
    (src / "linked").symlink_to(src / "a")               # the same directory twice
    (src / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    res = sync_and_record(settings, source=str(src), embedder=HashEmbedder())
    assert res.added == 2 and res.exit_code == 1
    assert any("a/loop: symlink cycle" in e for e in res.errors), res.errors
    assert any(e.startswith("linked: directory already indexed") for e in res.errors)
    assert any(e.startswith("dangling.md: dangling symlink") for e in res.errors)
