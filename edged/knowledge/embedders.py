"""Embedders: turn text into unit vectors. ``local`` (model2vec, default) or ``gemini``.

Why one async protocol: the Gemini embedder is a network call through google-genai's
``client.aio.models.embed_content``; the local one is numpy work that runs in a thread. The
search tool awaits either without blocking the event loop, and the sync CLI drives both from
one ``asyncio.Runner``.

``name`` is recorded in the index meta table; an index built with a different name (other
model, other weights, other dimensionality) is rebuilt rather than mixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from model2vec import StaticModel

    from edged.config import Settings

Task = Literal["document", "query"]
MODEL_DIR_NAME = "edged-minilm-m2v"
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
SYSTEM_MODELS = Path("/var/lib/edged/models")
GEMINI_BATCH = 100   # batchEmbedContents accepts at most 100 requests per call


class EmbedderError(RuntimeError):
    """The embedder cannot work (model missing, API unreachable); the message says the fix."""


@runtime_checkable
class Embedder(Protocol):
    name: str
    dims: int

    async def embed(self, texts: Sequence[str], task: Task) -> np.ndarray:
        """Embed texts as float32 unit vectors of shape (len(texts), dims)."""
        ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1.0, norms)


def resolve_model_dir(local_model: Path | None, env: dict[str, str] | None = None) -> Path:
    """Where the local model lives: setting, $EDGED_MODELS_DIR, the repo's models/, system dir.

    The first configured candidate wins even if missing (an explicit setting that points
    nowhere is an error, not a reason to silently use another model).
    """
    env = dict(os.environ) if env is None else env
    if local_model is not None:
        candidates = [local_model]
    elif env.get("EDGED_MODELS_DIR"):
        candidates = [Path(env["EDGED_MODELS_DIR"]) / MODEL_DIR_NAME]
    else:
        candidates = [REPO_MODELS / MODEL_DIR_NAME, SYSTEM_MODELS / MODEL_DIR_NAME]
    for c in candidates:
        if (c / "config.json").exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise EmbedderError(
        f"local embedder model not found (looked in {tried}); build it with `make embedder` "
        "(scripts/build-embedder --out DIR) or set knowledge.local_model / EDGED_MODELS_DIR")


class LocalEmbedder:
    """model2vec static embeddings: a token lookup + mean, numpy only, ~15 MB, no network."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        try:
            config = json.loads((model_dir / "config.json").read_text())
            weights = model_dir / "model.safetensors"
            digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        except (OSError, ValueError) as e:
            raise EmbedderError(f"local embedder model at {model_dir} is unreadable ({e}); "
                                "rebuild it with `make embedder`") from e
        self.dims = int(config["hidden_dim"])
        self.name = f"model2vec:{model_dir.name}:{digest}"
        self._model: StaticModel | None = None

    def _load(self) -> StaticModel:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from model2vec import StaticModel  # import cost only when used

            self._model = StaticModel.from_pretrained(self.model_dir)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking encode (call from a thread, or from the sync CLI)."""
        if not texts:
            return np.zeros((0, self.dims), np.float32)
        return _unit(self._load().encode(list(texts), use_multiprocessing=False))

    async def embed(self, texts: Sequence[str], task: Task) -> np.ndarray:
        # Static embeddings are symmetric: documents and queries use the same lookup.
        return await asyncio.to_thread(self.encode, texts)


class GeminiEmbedder:
    """Gemini embeddings through google-genai (multilingual; needs the network and a key).

    Uses the asymmetric task types (RETRIEVAL_DOCUMENT for chunks, RETRIEVAL_QUERY for
    questions) and asks for ``dims`` outputs; reduced-size outputs are not unit length, so they
    are normalised here before cosine search.
    """

    def __init__(self, model: str, dims: int, api_key: str | None, base_url: str | None = None,
                 ca_file: Path | None = None, timeout_s: float = 30.0) -> None:
        from google import genai  # only when this embedder is configured
        from google.genai import types

        if not api_key:
            raise EmbedderError("knowledge.embedder = 'gemini' needs an API key "
                                "(GEMINI_API_KEY or gemini.api_key_file)")
        opts: dict[str, object] = {"timeout": int(timeout_s * 1000)}
        if base_url:
            opts["base_url"] = base_url
        if ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(ca_file))
            opts["client_args"] = {"verify": ctx}
            opts["async_client_args"] = {"verify": ctx}
        self._types = types
        self._client = genai.Client(api_key=api_key, http_options=types.HttpOptions(**opts))
        self.model = model
        self.dims = dims
        self.name = f"gemini:{model}:{dims}"

    async def embed(self, texts: Sequence[str], task: Task) -> np.ndarray:
        task_type = "RETRIEVAL_QUERY" if task == "query" else "RETRIEVAL_DOCUMENT"
        config = self._types.EmbedContentConfig(task_type=task_type,
                                                output_dimensionality=self.dims)
        out: list[list[float]] = []
        for start in range(0, len(texts), GEMINI_BATCH):
            batch = list(texts[start:start + GEMINI_BATCH])
            try:
                resp = await self._client.aio.models.embed_content(
                    model=self.model, contents=batch, config=config)
            except Exception as e:
                raise EmbedderError(f"gemini embedding failed: {type(e).__name__}: {e}") from e
            got = [list(e.values or []) for e in (resp.embeddings or [])]
            if len(got) != len(batch) or any(len(v) != self.dims for v in got):
                raise EmbedderError(f"gemini returned {len(got)} embeddings for {len(batch)} "
                                    f"texts (want {self.dims} dims each)")
            out.extend(got)
        if not out:
            return np.zeros((0, self.dims), np.float32)
        return _unit(np.array(out, np.float32))


def make_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for; raises EmbedderError with the fix if unavailable."""
    k = settings.knowledge
    if k.embedder == "gemini":
        return GeminiEmbedder(k.gemini_model, k.gemini_dims, settings.api_key(),
                              settings.gemini.base_url, settings.gemini.ca_file)
    return LocalEmbedder(resolve_model_dir(k.local_model))
