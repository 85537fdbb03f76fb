"""Embedders: turn text into unit vectors. ``multilingual`` (default), ``local`` or ``gemini``.

``multilingual``: a static version of Google's Universal Sentence Encoder multilingual v3
(built by ``scripts/build-multilingual-embedder`` from the weights a PyPI package ships; see
that script for why it is faithful). Spanish and English land in one space, so a Spanish
question finds an English page and the other way round. Under 1 ms per query, numpy +
``sentencepiece`` only. ``local``: the English model2vec model distilled from all-MiniLM-L6-v2.

Why one async protocol: the Gemini embedder is a network call through google-genai's
``client.aio.models.embed_content``; the local one is numpy work that runs in a thread. The
search tool awaits either without blocking the event loop, and the sync CLI drives both from
one ``asyncio.Runner``.

``name`` is recorded in the index meta table; an index built with a different name (other
model, other weights, other dimensionality) is rebuilt rather than mixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import os
import ssl
import struct
import weakref
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
from threadpoolctl import ThreadpoolController

if TYPE_CHECKING:
    from model2vec import StaticModel

    from edged.config import Settings

Task = Literal["document", "query"]
MODEL_DIR_NAME = "edged-minilm-m2v"
MULTILINGUAL_DIR_NAME = "edged-usem3-static"
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


def _digest(path: Path) -> str:
    """The weights' identity for the index meta table, read in blocks (the nightly sync's
    peak memory must not hold a second copy of the weights)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:12]


Layout = tuple[int, tuple[int, ...], np.dtype]   # offset in the file, shape, dtype


def _npz_layout(path: Path) -> dict[str, Layout]:
    """Where each array of an uncompressed ``.npz`` starts in the file, its shape and dtype.

    ``np.savez`` stores each ``.npy`` member uncompressed, so each array sits at a fixed offset
    of the file and can be read without loading the others (``np.load`` reads a member whole).
    """
    out: dict[str, Layout] = {}
    with zipfile.ZipFile(path) as z, path.open("rb") as f:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{info.filename} is compressed (write it with np.savez)")
            f.seek(info.header_offset)
            local = f.read(30)   # the member's local header: its name and extra field follow
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{info.filename}: .npy format {version} is not supported")
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            if fortran and len(shape) > 1:
                raise ValueError(f"{info.filename} is in Fortran order")
            out[info.filename.removesuffix(".npy")] = (f.tell(), shape, dtype)
    return out


def _read_array(path: Path, layout: Layout) -> np.ndarray:
    offset, shape, dtype = layout
    count = int(np.prod(shape))
    array = np.fromfile(path, dtype, count, offset=offset)
    if array.size != count:
        raise ValueError(f"{path} is truncated")
    return array.reshape(shape)


class _FileRows:
    """A 2-D array's rows read from the file on demand instead of held in memory.

    The int8 table is 22 MB and a query needs a few dozen of its rows. Mapping the file was
    tried first: on the development VM's kernel (6.18) each touched row mapped its whole
    page-cache folio, so a single question made megabytes of the table resident. ``pread`` of
    the rows asked for costs a few microseconds each (nearby rows in one call) and leaves the
    file to the page cache, which the kernel can drop. The descriptor stays open, so a model
    rebuilt underneath keeps serving this process the file it was loaded from.
    """

    GAP = 32   # rows this close are read in one call with the rows between them (8 KB)

    def __init__(self, path: Path, layout: Layout) -> None:
        self._path = path
        self._offset, shape, self._dtype = layout
        self._width = shape[1]
        self._row_bytes = self._width * self._dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        weakref.finalize(self, os.close, self._fd)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at the given sorted, distinct indices."""
        if not len(rows):
            return np.empty((0, self._width), self._dtype)
        breaks = np.flatnonzero(np.diff(rows) > self.GAP) + 1
        first = rows[np.r_[0, breaks]]
        last = rows[np.r_[breaks - 1, len(rows) - 1]]
        buf = bytearray()
        for a, b in zip(first.tolist(), last.tolist(), strict=True):
            size = (b - a + 1) * self._row_bytes
            data = os.pread(self._fd, size, self._offset + a * self._row_bytes)
            if len(data) != size:
                raise EmbedderError(f"multilingual embedder table {self._path} is truncated; "
                                    "rebuild it with `make embedder`")
            buf += data
        block = np.frombuffer(buf, self._dtype).reshape(-1, self._width)
        # each row's place in the block: its span's start in the block + its offset in the span
        counts = np.diff(np.r_[0, breaks, len(rows)])
        span_at = np.cumsum(np.r_[0, (last - first + 1)[:-1]])
        return block[rows - np.repeat(first, counts) + np.repeat(span_at, counts)]


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1.0, norms)


def resolve_model_dir(local_model: Path | None, env: dict[str, str] | None = None,
                      name: str = MODEL_DIR_NAME,
                      build: str = "make embedder (scripts/build-embedder --out DIR)") -> Path:
    """Where the local model lives: setting, $EDGED_MODELS_DIR, the repo's models/, system dir.

    The first configured candidate wins even if missing (an explicit setting that points
    nowhere is an error, not a reason to silently use another model).
    """
    env = dict(os.environ) if env is None else env
    if local_model is not None:
        candidates = [local_model]
    elif env.get("EDGED_MODELS_DIR"):
        candidates = [Path(env["EDGED_MODELS_DIR"]) / name]
    else:
        candidates = [REPO_MODELS / name, SYSTEM_MODELS / name]
    for c in candidates:
        if (c / "config.json").exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise EmbedderError(
        f"local embedder model not found (looked in {tried}); build it with `{build}` "
        "or set knowledge.local_model / knowledge.multilingual_model / EDGED_MODELS_DIR")


class LocalEmbedder:
    """model2vec static embeddings: a token lookup + mean, numpy only, ~15 MB, no network."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        try:
            config = json.loads((model_dir / "config.json").read_text())
            weights = model_dir / "model.safetensors"
            digest = _digest(weights)
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


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()   # scans the loaded libraries once, not on every call


def _blas_limit(**kw: object) -> contextlib.AbstractContextManager[object]:
    return _controller().limit(**kw)


class MultilingualEmbedder:
    """USE-m3 as a static model: tokenizer, a sum of per-piece table rows, a small MLP.

    The table holds each piece's contribution to USE's pre-MLP sum as int8 PCA coefficients
    with a per-row scale; summing coefficients and projecting once per text is exact because
    the projection is linear. The table stays int8 and in the file (22 MB, of which a query
    reads a few dozen rows; a float16 copy was 44 MB more and 10x slower to sum): per batch,
    the pieces' counts times their scales form a small dense matrix that one BLAS product
    multiplies with the batch's distinct rows. Texts are embedded in small batches, so memory
    stays flat however many chunks come in.
    """

    BATCH = 64

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        try:
            config = json.loads((model_dir / "config.json").read_text())
            weights = model_dir / "model.npz"
            digest = _digest(weights)
            layout = _npz_layout(weights)
            self._w = {k: _read_array(weights, v) for k, v in layout.items() if k != "coef"}
            self._coef = _FileRows(weights, layout["coef"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise EmbedderError(f"multilingual embedder model at {model_dir} is unreadable "
                                f"({e}); rebuild it with `make embedder`") from e
        import sentencepiece  # USE-m3's own tokenizer, C++: 15 MB resident (Latin pieces only)

        try:
            self._tok = sentencepiece.SentencePieceProcessor(
                model_file=str(model_dir / "sp.model"))
        except (OSError, RuntimeError) as e:
            raise EmbedderError(f"multilingual embedder tokenizer {model_dir / 'sp.model'} is "
                                f"unreadable ({e}); rebuild it with `make embedder`") from e
        self.dims = int(config["dims"])
        self.name = f"usem3-static:{model_dir.name}:{digest}"
        w = self._w
        self._scale, self._rows = w["coef_scale"], w["rows"]
        self._ends = w["bos"] + w["eos"]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking encode (call from a thread, or from the sync CLI).

        One BLAS thread: these matrices are small, and a multi-threaded OpenBLAS spends more
        time waking its threads than multiplying (98 ms vs 8 ms per document here, on a busy
        machine)."""
        out = np.empty((len(texts), self.dims), np.float32)
        with _blas_limit(limits=1, user_api="blas"):
            for start in range(0, len(texts), self.BATCH):
                out[start:start + self.BATCH] = self._encode(
                    list(texts[start:start + self.BATCH]))
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        w, n = self._w, len(texts)
        pieces = self._tok.encode(texts, num_threads=1)   # its default spawns threads per call
        lens = np.array([len(p) for p in pieces], np.int64)
        ids = np.fromiter(itertools.chain.from_iterable(pieces), np.int64, int(lens.sum()))
        rows = self._rows[ids]
        owner = np.repeat(np.arange(n), lens)
        known = rows >= 0   # unknown (non-Latin) pieces add nothing
        rows, owner = rows[known], owner[known]
        n_known = np.bincount(owner, minlength=n).astype(np.float32)
        distinct, col = np.unique(rows, return_inverse=True)
        # counts[text, piece] * scale[piece] @ int8 rows: the per-text sum of coefficients
        weights = np.bincount(owner * len(distinct) + col, minlength=n * len(distinct))
        weights = weights.reshape(n, len(distinct)).astype(np.float32)
        weights *= self._scale[distinct]
        coef = weights @ self._coef.take(distinct).astype(np.float32)
        pre = coef @ w["basis"] + n_known[:, None] * w["mean"] + self._ends
        pre /= np.sqrt(lens + 2.0)[:, None]   # + <s> and </s>, as USE counts them
        y0 = np.maximum(pre @ w["d0"], 0)
        y1 = np.maximum(pre @ w["p1"] + y0 @ w["d1"], 0)
        y2 = np.maximum(y1 @ w["d2"], 0)
        return _unit(np.tanh(y1 @ w["p3"] + y2 @ w["d3"]))

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
    if k.embedder == "local":
        return LocalEmbedder(resolve_model_dir(k.local_model))
    return MultilingualEmbedder(resolve_model_dir(
        k.multilingual_model, name=MULTILINGUAL_DIR_NAME,
        build="make embedder (scripts/build-multilingual-embedder --out DIR)"))
