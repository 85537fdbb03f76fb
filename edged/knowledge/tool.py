"""The ``search_knowledge`` tool the Live session offers the model.

Why the shape of the answer: a voice model reads it aloud, so the payload is a handful of short
cited snippets (title, source, heading, text, score) within ``knowledge.char_budget``. An empty
result says so in words and tells the model to answer without the tool - otherwise Live models
tend to repeat the same call (gemini_live.md). Failures (no index, wrong embedder) raise
:class:`ToolError`, which the registry turns into an error payload; SQLite work runs in a thread,
so a slow index costs the registry's timeout, never the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from edged.config import Settings
from edged.knowledge.embedders import Embedder, EmbedderError, make_embedder
from edged.knowledge.search import Searcher, cite
from edged.knowledge.store import IndexUnavailable
from edged.tools import Tool, ToolError

NAME = "search_knowledge"
MAX_QUERY_CHARS = 500
MAX_TOP_K = 10

DESCRIPTION = (
    "Search the device's knowledge base (Spanish and English documents) and return short cited "
    "passages. Use it for questions about topics the user's documents cover, e.g. MLOps, "
    "governance, the device itself. Pass the user's question in their own words. Cite the "
    "title of the passage you use."
)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS,
                  "description": "The question or keywords, in the user's language."},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K,
                  "description": "How many passages to return; omit it for the default."},
    },
    "required": ["query"],
    "additionalProperties": False,
}

NOTHING_FOUND = ("No passage in the knowledge base matches this query. Do not search again for "
                 "the same question: answer from general knowledge and say that the knowledge "
                 "base does not cover it, or ask the user to rephrase.")


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
                    k.index_dir, weight_fts=k.weight_fts, weight_vec=k.weight_vec,
                    rrf_k=k.rrf_k, min_vector_similarity=k.min_vector_similarity,
                    embedder_name=state["embedder"].name)
        return state["embedder"], state["searcher"]

    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        query = " ".join(str(args.get("query", "")).split())
        if not query or not any(c.isalnum() for c in query):
            raise ToolError("query has no words; pass the user's question as text")
        top_k = args.get("top_k", k.top_k)
        if top_k != int(top_k):
            raise ToolError(f"top_k must be a whole number 1-{MAX_TOP_K}, got {top_k!r}")
        emb, searcher = await ready()
        try:
            vector = (await emb.embed([query], "query"))[0]
            hits = await asyncio.to_thread(searcher.search, query, vector, int(top_k))
        except (IndexUnavailable, EmbedderError) as e:
            raise ToolError(str(e)) from None
        except sqlite3.Error as e:
            raise ToolError(f"knowledge index error: {e}; try again later",
                            retryable=True) from None
        if not hits:
            return {"results": [], "query": query, "message": NOTHING_FOUND}
        return {"results": cite(hits, k.char_budget), "query": query}

    return Tool(name=NAME, description=DESCRIPTION, parameters=PARAMETERS, handler=handler)
