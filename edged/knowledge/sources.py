"""Where documents come from: a local directory, or an HTTP(S) base URL with a manifest.

Manifest (``<base>/manifest.json``, or the URL itself if it ends in ``.json``)::

    {"documents": [{"path": "gobernanza-mlops.md", "sha256": "…", "etag": "…"}, …]}

``path`` is required (relative, no ``..``); ``sha256`` and ``etag`` are optional. Why both:
a manifest hash equal to the indexed content hash, or a manifest etag equal to the stored one,
proves "unchanged" without a download; otherwise the document is fetched with
``If-None-Match`` / ``If-Modified-Since`` and a ``304`` also means unchanged. Only documents
that really changed are downloaded, parsed and embedded.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edged.knowledge.store import DocRow

MANIFEST = "manifest.json"


class SourceUnreachable(RuntimeError):
    """The source as a whole cannot be listed; the sync changes nothing."""


class FetchError(RuntimeError):
    """One document cannot be read; it is reported and skipped, the run goes on."""


@dataclass(frozen=True, slots=True)
class Listed:
    source_id: str
    size: int | None = None
    sha256: str | None = None
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A document's bytes, or ``data is None`` when the server said 304 Not Modified."""

    data: bytes | None
    etag: str | None = None
    last_modified: str | None = None


class DirectorySource:
    """Every regular, non-hidden file under a directory; ids are POSIX relative paths.

    Symlinks are followed (a document tree is often assembled from links), safely: a directory
    already on the current path (a cycle) or already listed through another link is not
    entered again, and a dangling link is reported; each such problem lands in ``problems``,
    which the sync reports as skipped, instead of the walk running away.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)
        self.problems: list[str] = []

    def list(self) -> list[Listed]:
        if not self.root.is_dir():
            raise SourceUnreachable(f"source directory {self.root} does not exist")
        self.problems = []
        out: list[Listed] = []
        seen: set[tuple[int, int]] = set()
        for rel, path in sorted(self._walk(self.root, PurePosixPath(), seen, ())):
            try:
                out.append(Listed(rel, size=path.stat().st_size))
            except OSError:
                out.append(Listed(rel))   # vanished or unreadable: fetch() reports it
        return out

    def _walk(self, d: Path, rel: PurePosixPath, seen: set[tuple[int, int]],
              ancestors: tuple[tuple[int, int], ...]) -> Iterator[tuple[str, Path]]:
        st = d.stat()
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            self.problems.append(f"{rel.as_posix()}: symlink cycle (leads back to a directory "
                                 "above it); not followed")
            return
        if key in seen:
            self.problems.append(f"{rel.as_posix()}: directory already indexed through another "
                                 "path (symlink); not indexed twice")
            return
        seen.add(key)
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            child = rel / p.name
            try:
                if p.is_dir():
                    yield from self._walk(p, child, seen, (*ancestors, key))
                elif p.is_file():
                    yield child.as_posix(), p
                elif p.is_symlink():
                    self.problems.append(f"{child.as_posix()}: dangling symlink; not indexed")
            except OSError as e:
                self.problems.append(f"{child.as_posix()}: cannot read: {e.strerror}")

    def fetch(self, item: Listed, stored: DocRow | None, max_bytes: int) -> Fetched:
        try:
            with (self.root / item.source_id).open("rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as e:
            raise FetchError(f"{item.source_id}: cannot read: {e.strerror}") from e
        return Fetched(data)


class HttpSource:
    """Documents listed by a JSON manifest under an http(s) base URL (stdlib urllib)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        if url.endswith(".json"):
            self.manifest_url = url
            self.base = url.rsplit("/", 1)[0] + "/"
        else:
            self.base = url.rstrip("/") + "/"
            self.manifest_url = self.base + MANIFEST
        self.timeout_s = timeout_s
        self.description = url

    def list(self) -> list[Listed]:
        try:
            with urllib.request.urlopen(self.manifest_url, timeout=self.timeout_s) as resp:
                manifest = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise SourceUnreachable(f"manifest {self.manifest_url}: {e}") from e
        docs = manifest.get("documents") if isinstance(manifest, dict) else None
        if not isinstance(docs, list):
            raise SourceUnreachable(f"manifest {self.manifest_url}: expected "
                                    '{"documents": [{"path": ...}, ...]}')
        out: list[Listed] = []
        for entry in docs:
            path = entry.get("path") if isinstance(entry, dict) else None
            pure = PurePosixPath(path) if isinstance(path, str) else None
            if pure is None or pure.is_absolute() or ".." in pure.parts or not pure.parts:
                raise SourceUnreachable(f"manifest {self.manifest_url}: bad entry {entry!r} "
                                        "(need a relative 'path' without '..')")
            size = entry.get("size")
            out.append(Listed(pure.as_posix(), size=size if isinstance(size, int) else None,
                              sha256=entry.get("sha256") or entry.get("hash"),
                              etag=entry.get("etag")))
        return out

    def fetch(self, item: Listed, stored: DocRow | None, max_bytes: int) -> Fetched:
        url = urllib.parse.urljoin(self.base, urllib.parse.quote(item.source_id))
        req = urllib.request.Request(url)
        if stored is not None and stored.etag:
            req.add_header("If-None-Match", stored.etag)
        if stored is not None and stored.last_modified:
            req.add_header("If-Modified-Since", stored.last_modified)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = resp.read(max_bytes + 1)
                etag = resp.headers.get("ETag")
                modified = resp.headers.get("Last-Modified")
        except urllib.error.HTTPError as e:
            if e.code == 304:
                return Fetched(None)
            raise FetchError(f"{item.source_id}: HTTP {e.code} from {url}") from e
        except (urllib.error.URLError, OSError) as e:
            raise FetchError(f"{item.source_id}: cannot fetch {url}: {e}") from e
        return Fetched(data, etag=item.etag or etag, last_modified=modified)


Source = DirectorySource | HttpSource


def open_source(spec: str, timeout_s: float = 30.0) -> Source:
    if spec.startswith(("http://", "https://")):
        return HttpSource(spec, timeout_s)
    return DirectorySource(Path(spec))
