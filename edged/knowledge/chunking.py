"""Turn Markdown, plain text and HTML documents into small chunks that keep their headings.

Why headings are kept: a voice answer must cite where a fact came from ("según *Gobernanza
en MLOps*, sección Auditorías"), and the heading words are often the best search terms, so each
chunk carries its heading path and the heading is indexed next to the text.

Why ids are stable: the chunk key is a hash of source id + heading path + ordinal + text, so a
re-run over unchanged input yields identical keys (tests and incremental sync rely on that).
Changing anything here that changes the output must bump :data:`CHUNKER_VERSION`, which forces
a full rebuild of existing indexes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

CHUNKER_VERSION = "1"
MAX_CHARS = 700       # ~120-170 words: one answerable fact, small enough for a voice snippet
MIN_CHARS = 120       # merge tiny paragraphs into their neighbour within a section

KINDS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html",
         ".htm": "html"}


class DocumentError(ValueError):
    """A document that cannot be indexed (binary, bad encoding, unsupported type)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    key: str          # stable id: sha256(source id, heading path, ordinal, text)[:24]
    ordinal: int
    heading: str      # "Title > Section > Subsection" ("" before the first heading)
    text: str


@dataclass(frozen=True, slots=True)
class ParsedDoc:
    title: str
    chunks: list[Chunk]


def kind_of(source_id: str) -> str | None:
    """The parser for a source path by extension, or None if it is not a supported type."""
    return KINDS.get(PurePosixPath(source_id).suffix.lower())


def decode(data: bytes, source_id: str) -> str:
    """Bytes to text: UTF-8 (with or without BOM) only; binary junk is refused with a reason."""
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{source_id}: looks binary (NUL bytes); not indexed")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentError(
            f"{source_id}: not valid UTF-8 at byte {e.start}; re-save it as UTF-8") from None
    controls = sum(1 for c in text[:8192] if ord(c) < 32 and c not in "\n\r\t\f")
    if controls > 8:
        raise DocumentError(f"{source_id}: {controls} control characters; looks binary")
    return text


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown_sections(text: str) -> list[tuple[list[str], str]]:
    """(heading path, body) pairs; ATX headings only, fenced code kept verbatim."""
    sections: list[tuple[list[str], str]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        if "".join(body).strip():
            sections.append(([h for _, h in path], "\n".join(body)))
        body.clear()

    for line in text.splitlines():
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _MD_HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, m.group(2).strip()))
        else:
            body.append(line)
    flush()
    return sections


class _HtmlSections(HTMLParser):
    """Collects (heading path, body) pairs from HTML with the stdlib parser."""

    SKIP = frozenset({"script", "style", "nav", "footer", "template", "noscript"})
    BLOCK = frozenset({"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote",
                       "dd", "dt"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[tuple[list[str], str]] = []
        self._path: list[tuple[int, str]] = []
        self._body: list[str] = []
        self._heading: tuple[int, list[str]] | None = None
        self._skip = 0
        self._in_title = False

    def _flush(self) -> None:
        text = "".join(self._body)
        if text.strip():
            self.sections.append(([h for _, h in self._path], text))
        self._body = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._heading = (int(tag[1]), [])
        elif tag in self.BLOCK:
            self._body.append("\n\n" if tag == "p" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif self._heading and tag == f"h{self._heading[0]}":
            level, words = self._heading
            self._path = [(lvl, h) for lvl, h in self._path if lvl < level]
            self._path.append((level, " ".join("".join(words).split())))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
        elif self._heading is not None:
            self._heading[1].append(data)
        else:
            self._body.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def _paragraphs(body: str) -> list[str]:
    """Blank-line separated paragraphs with whitespace collapsed; long ones split by sentence."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", body):
        para = " ".join(para.split())
        if not para:
            continue
        while len(para) > MAX_CHARS:
            cut = max(para.rfind(". ", 0, MAX_CHARS), para.rfind("? ", 0, MAX_CHARS))
            if cut < MAX_CHARS // 3:
                cut = para.rfind(" ", 0, MAX_CHARS)
            if cut <= 0:
                cut = MAX_CHARS - 1
            out.append(para[: cut + 1].strip())
            para = para[cut + 1:].strip()
        if para:
            out.append(para)
    return out


def _pack(paragraphs: list[str]) -> list[str]:
    """Greedy packing of paragraphs into chunks of at most MAX_CHARS, merging small ones."""
    chunks: list[str] = []
    cur = ""
    for p in paragraphs:
        if cur and (len(cur) + 1 + len(p) > MAX_CHARS and len(cur) >= MIN_CHARS):
            chunks.append(cur)
            cur = p
        else:
            cur = f"{cur}\n{p}" if cur else p
    if cur:
        chunks.append(cur)
    return chunks


def _chunk_key(source_id: str, heading: str, ordinal: int, text: str) -> str:
    h = hashlib.sha256("\x1f".join((source_id, heading, str(ordinal), text)).encode())
    return h.hexdigest()[:24]


def parse(source_id: str, data: bytes) -> ParsedDoc:
    """Parse one document into its title and chunks; raises DocumentError for bad input."""
    kind = kind_of(source_id)
    if kind is None:
        raise DocumentError(f"{source_id}: unsupported type (use {', '.join(sorted(KINDS))})")
    text = decode(data, source_id)
    title = ""
    if kind == "html":
        parser = _HtmlSections()
        parser.feed(text)
        parser.close()
        title = " ".join(parser.title.split())
        sections = parser.sections
    elif kind == "markdown":
        sections = _markdown_sections(text)
    else:
        sections = [([], text)]
    if not title:
        first = next((path[0] for path, _ in sections if path), "")
        title = first or PurePosixPath(source_id).stem.replace("-", " ").replace("_", " ")
    chunks: list[Chunk] = []
    for path, body in sections:
        # The document title is the top heading; repeating it in every heading path adds noise.
        trail = path[1:] if path and path[0] == title else path
        heading = " > ".join(trail)
        for piece in _pack(_paragraphs(body)):
            n = len(chunks)
            chunks.append(Chunk(_chunk_key(source_id, heading, n, piece), n, heading, piece))
    if not chunks:
        raise DocumentError(f"{source_id}: no text to index")
    return ParsedDoc(title=title, chunks=chunks)
