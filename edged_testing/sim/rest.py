"""The simulator's REST side: ``embedContent`` / ``batchEmbedContents`` for the gemini embedder.

The knowledge index can embed through Gemini (``knowledge.embedder = "gemini"``), which the SDK
does over HTTPS REST, not the Live WebSocket. The SDK uses one ``base_url`` for both, but the
websockets handshake parser refuses request bodies, so REST listens on a sibling TLS port with
the same CA: ``LiveSimulator.rest_base_url``. Embeddings are deterministic pseudo-random unit
vectors derived from the text, so the same text always gets the same vector; what matters to
tests is the request on the wire (task type, output dimensionality, key header), recorded in
``LiveSimulator.rest_requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("edged_testing.sim")

MAX_BODY = 8 * 2**20
DEFAULT_DIMS = 3072          # gemini-embedding-001's full output size
ROUTE = re.compile(r"^/v1(?:alpha|beta)?/models/([^/:]+):(embedContent|batchEmbedContents)$")
STATUS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
          413: "Payload Too Large"}
GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 413: "INVALID_ARGUMENT"}


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One REST call as the client sent it (the API key is never stored, only its presence)."""

    method: str
    path: str
    body: Any
    api_key_present: bool


class _Reject(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def embedding(text: str, dims: int) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dims)
    return (v / np.linalg.norm(v)).round(6).tolist()


def _text(request: dict[str, Any]) -> str:
    parts = (request.get("content") or {}).get("parts") or []
    return "".join(str(p.get("text", "")) for p in parts)


def answer(method: str, path: str, body: Any) -> dict[str, Any]:
    """The JSON reply for one call; raises ``_Reject`` for what the real API would refuse."""
    m = ROUTE.match(path.split("?", 1)[0])
    if method != "POST" or m is None:
        raise _Reject(404, f"{method} {path} is not served by the simulator "
                           "(only models/*:embedContent and :batchEmbedContents)")
    if not isinstance(body, dict):
        raise _Reject(400, "request body must be a JSON object")
    requests = body.get("requests") if m.group(2) == "batchEmbedContents" else [body]
    if not isinstance(requests, list) or not requests:
        raise _Reject(400, "batchEmbedContents needs a non-empty 'requests' list")
    vectors = [embedding(_text(r), int(r.get("outputDimensionality") or DEFAULT_DIMS))
               for r in requests]
    if m.group(2) == "embedContent":
        return {"embedding": {"values": vectors[0]}}
    return {"embeddings": [{"values": v} for v in vectors]}


class RestEndpoint:
    """A minimal HTTP/1.1 server (one request per connection) on its own TLS port."""

    def __init__(self, host: str, ssl_context: ssl.SSLContext) -> None:
        self.host = host
        self.port = 0
        self.requests: list[RestRequest] = []
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            code, reply = await self._handle(reader)
            data = json.dumps(reply).encode()
            writer.write(f"HTTP/1.1 {code} {STATUS[code]}\r\nContent-Type: application/json; "
                         f"charset=UTF-8\r\nContent-Length: {len(data)}\r\nConnection: close"
                         "\r\n\r\n".encode() + data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass   # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        method, path, _ = (await reader.readline()).decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode("latin-1").strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0"))
            if length > MAX_BODY:
                raise _Reject(413, f"request body over {MAX_BODY} bytes")
            raw = await reader.readexactly(length)
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError as e:
                raise _Reject(400, f"invalid JSON payload: {e}") from None
            self.requests.append(RestRequest(method, path, body,
                                             bool(headers.get("x-goog-api-key"))))
            if not headers.get("x-goog-api-key") and "authorization" not in headers:
                raise _Reject(403, "Method doesn't allow unregistered callers. Please use an API "
                                   "key or other form of API consumer identity.")
            return 200, answer(method, path, body)
        except _Reject as e:
            log.info("REST %s %s -> %d %s", method, path, e.code, e)
            return e.code, {"error": {"code": e.code, "message": str(e),
                                      "status": GOOGLE_STATUS[e.code]}}
