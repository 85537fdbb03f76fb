"""The ``search_knowledge`` tool the Live session offers the model.

Why the shape of the answer: a voice model reads it aloud, so the payload is a handful of short
cited snippets (title, source, heading, text, relevance) within ``knowledge.char_budget``. Each
passage carries a calibrated relevance (0-1); passages below ``knowledge.min_relevance`` are not
sent, and when none is left the answer says "nothing relevant" in words and tells the model to
answer without the tool - otherwise Live models tend to repeat the same call (gemini_live.md).

Why a ``translation`` argument: the documents are Spanish and English, the words of a Spanish
question never occur in an English page, and Gemini translates for free. The model is asked to
pass the question in the other language too; both phrasings feed the lexical query and the
vector side (the best of the two cosines counts).

Failures (no index, wrong embedder) raise :class:`ToolError`, which the registry turns into an
error payload; SQLite work runs in a thread, so a slow index costs the registry's timeout,
never the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Any

from edged.config import Settings
from edged.knowledge import store
from edged.knowledge.embedders import Embedder, EmbedderError, make_embedder
from edged.knowledge.search import Relevance, Searcher, cite
from edged.knowledge.store import IndexUnavailable
from edged.tools import Tool, ToolError

NAME = "search_knowledge"
MAX_QUERY_CHARS = 500
MAX_TOP_K = 10

USAGE = (
    "Pass the user's question in their own words as `query`, and the same question in the "
    "other language (English if they spoke Spanish, Spanish otherwise) as `translation`. "
    "Each passage has a relevance from 0 to 1; answer from the passages and cite the title "
    "of the one you use. If the result says nothing relevant was found, do not search again "
    "for the same question: say the documents do not cover it."
)

NOTHING_RELEVANT = ("Nothing relevant: no passage in the knowledge base answers this question. "
                    "Do not search again for the same question: tell the user the documents do "
                    "not cover it, then answer from general knowledge if you can, saying so.")


def parameters() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS,
                      "description": "The question or keywords, in the user's language."},
            "translation": {"type": "string", "maxLength": MAX_QUERY_CHARS,
                            "description": "The same question in the other language of the "
                                           "knowledge base (English <-> Spanish)."},
            "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K,
                      "description": "How many passages to return; omit it for the default."},
        },
        "required": ["query"],
        "additionalProperties": False,
    }


def describe(settings: Settings) -> str:
    """The tool description: what the index covers, from config or the live index's summary
    (written by the sync), so the model knows when the tool is worth calling."""
    k = settings.knowledge
    covers = k.description
    if not covers:
        covers = "the user's documents"
        with contextlib.suppress(Exception):   # no index yet: the generic description
            gen = store.read_pointer(k.index_dir)
            if gen is not None:
                with contextlib.closing(store.connect_ro(store.db_path(k.index_dir, gen))) as c:
                    summary = json.loads(store.read_meta(c).get("summary", "{}"))
                langs = {"es": "Spanish", "en": "English"}
                by_lang = summary.get("chunks_by_language", {})
                names = " and ".join(langs[x] for x in ("es", "en") if by_lang.get(x))
                titles = "; ".join(summary.get("titles", [])[:8])
                covers = (f"{summary.get('documents', 0)} {names} documents, e.g. {titles}")
    return f"Search the device's knowledge base ({covers}) and return short cited passages. " \
        + USAGE


def answer(hits: list[Any], query: str, char_budget: int) -> dict[str, Any]:
    """The payload the model receives (the evaluation reports exactly this)."""
    if not hits:
        return {"results": [], "query": query, "message": NOTHING_RELEVANT}
    return {"results": cite(hits, char_budget), "query": query}


def make_search_tool(settings: Settings, *, embedder: Embedder | None = None) -> Tool:
    """Build the tool. The embedder and index open lazily on the first call (in a thread), so
    a missing model or index is an error answer the model can relay, not a daemon crash."""
    k = settings.knowledge
    state: dict[str, Any] = {"embedder": embedder, "searcher": None}
    init_lock = asyncio.Lock()

    async def ready() -> tuple[Embedder, Searcher]:
        async with init_lock:
            if state["embedder"] is None:
                try:
                    state["embedder"] = await asyncio.to_thread(make_embedder, settings)
                except EmbedderError as e:
                    raise ToolError(f"knowledge embedder unavailable: {e}",
                                    retryable=True) from None
            if state["searcher"] is None:
                state["searcher"] = Searcher(
                    k.index_dir, relevance=Relevance.from_settings(k),
                    max_per_document=k.max_passages_per_document,
                    embedder_name=state["embedder"].name)
        return state["embedder"], state["searcher"]

    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        query = " ".join(str(args.get("query", "")).split())
        if not query or not any(c.isalnum() for c in query):
            raise ToolError("query has no words; pass the user's question as text")
        translation = " ".join(str(args.get("translation", "")).split())
        also = (translation,) if any(c.isalnum() for c in translation) else ()
        top_k = args.get("top_k", k.top_k)
        if top_k != int(top_k):
            raise ToolError(f"top_k must be a whole number 1-{MAX_TOP_K}, got {top_k!r}")
        emb, searcher = await ready()
        try:
            vectors = await emb.embed([query, *also], "query")
            hits = await asyncio.to_thread(searcher.search, query, vectors, int(top_k),
                                           also=also)
        except (IndexUnavailable, EmbedderError) as e:
            raise ToolError(str(e)) from None
        except sqlite3.Error as e:
            raise ToolError(f"knowledge index error: {e}; try again later",
                            retryable=True) from None
        return answer(hits, query, k.char_budget)

    return Tool(name=NAME, description=describe(settings), parameters=parameters(),
                handler=handler)
