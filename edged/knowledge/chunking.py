"""Markdown, plain text (man pages rendered to text too) and HTML into small chunks with headings.

Why headings are kept: a voice answer must cite where a fact came from ("según *Gobernanza
en MLOps*, sección Auditorías"), and the heading words are often the best search terms, so each
chunk carries its heading path and the heading is indexed next to the text.

Why titles from structure: a passage is cited by its document's title, so HTML pages use their
first ``<h1>`` (else ``<title>``), man pages rendered to text use their NAME line («ls - lista
el contenido de un directorio»), other plain text its underlined or first short line; only a
document with none of these falls back to its file name.

Why ids are stable: the chunk key is a hash of source id + heading path + ordinal + text, so a
re-run over unchanged input yields identical keys (tests and incremental sync rely on that).
Changing anything here that changes the output must bump :data:`CHUNKER_VERSION`, which forces
a full rebuild of existing indexes.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from edged.knowledge.text import Lang, detect_language

CHUNKER_VERSION = "3"
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
    lang: Lang        # the chunk's language: picks its stemmer (text.py)


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


# Page furniture, by tag, ARIA role or class (Sphinx, DocBook and common site themes): menus,
# sidebars, "Report a Bug / Show Source", tables of contents, the "¶" permalinks on headings.
_SKIP_TAGS = frozenset({"head", "script", "style", "nav", "header", "footer", "aside", "template",
                        "noscript", "form", "button", "select", "svg"})
_SKIP_ROLES = frozenset({"navigation", "search", "banner", "contentinfo", "complementary"})
_SKIP_CLASSES = frozenset({"headerlink", "sphinxsidebar", "related", "footer", "navheader",
                           "navfooter", "toc", "breadcrumb", "breadcrumbs", "sidebar", "menu",
                           "navbar", "skip-link", "copybutton", "this_page"})
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_BLOCK = frozenset({"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote",
                    "dd", "dt", "table", "ul", "ol", "dl", "main", "body"})
_PARAGRAPH = frozenset({"p", "pre", "table", "ul", "ol", "dl", "blockquote", "section"})


def _clean_heading(text: str) -> str:
    """A heading as plain words: no permalink marks ("¶", "#"), whitespace collapsed."""
    return " ".join(text.replace("\u00b6", " ").split()).strip(" #")


class _Collector:
    """(heading path, body) pairs from one stretch of an HTML page, as its events arrive."""

    def __init__(self) -> None:
        self.sections: list[tuple[list[str], str]] = []
        self.h1 = ""
        self.path: list[tuple[int, str]] = []
        self.body: list[str] = []

    def flush(self) -> None:
        text = "".join(self.body)
        if text.strip():
            self.sections.append(([h for _, h in self.path], text))
        self.body = []

    def heading(self, level: int, raw: str) -> None:
        text = _clean_heading(raw)
        self.path = [(lvl, h) for lvl, h in self.path if lvl < level]
        if text:
            self.path.append((level, text))
            if level == 1 and not self.h1:
                self.h1 = text


class _HtmlSections:
    """(heading path, body) pairs from the main content of an HTML page.

    Why main content only: navigation repeated on every page of a site ranks every page for
    the site's menu words and fills passages with "Report a Bug". Page furniture (``_SKIP_*``)
    is dropped everywhere; if the page marks its main content (``<main>``, ``<article>``,
    ``role="main"``) only the first such element is read.

    Why events, not a tree: lxml's parser (libxml2, C speed) calls ``start``/``data``/``end``
    as it reads and builds no tree, so a page costs memory for its text only (the tree of a
    2 MB page was ~60 MB). Text is collected twice, for the whole page and for its first main
    element, and the main one wins if the page has one.
    """

    def __init__(self, data: bytes) -> None:
        self.page, self.main = _Collector(), _Collector()
        self._stack: list[str] = []   # open elements
        self._skip = 0                # depth inside page furniture
        self._main_depth = 0          # stack depth of the first main element, while inside it
        self._main_seen = False
        self._heading: tuple[int, list[str]] | None = None
        self._title: list[str] | None = None   # the first <title>'s text, while inside it
        self._title_text = ""
        import lxml.etree  # only the sync parses HTML: the daemon's search path never pays 4 MB

        parser = lxml.etree.HTMLParser(target=self, encoding="utf-8", remove_comments=True,
                                       remove_pis=True)
        for start in range(0, len(data), 1 << 16):
            parser.feed(data[start:start + (1 << 16)])
        parser.close()
        self.page.flush()
        self.main.flush()
        chosen = self.main if self._main_seen else self.page
        self.sections = chosen.sections
        self.title = chosen.h1 or " ".join(self._title_text.split())

    def _collectors(self) -> list[_Collector]:
        return [self.page, self.main] if self._main_depth else [self.page]

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self._stack.append(tag)
        if tag == "title" and self._title is None and not self._title_text:
            self._title = []
        role, cls = attrib.get("role"), attrib.get("class")
        if self._skip or (tag in _SKIP_TAGS or role in _SKIP_ROLES
                          or bool(cls and not _SKIP_CLASSES.isdisjoint(cls.split()))):
            self._skip += 1
            return
        if not self._main_seen and (tag in ("main", "article") or role == "main"):
            self._main_seen, self._main_depth = True, len(self._stack)
        if self._heading is not None:
            return   # markup inside a heading adds only its text
        level = _HEADINGS.get(tag)
        if level is not None:
            for c in self._collectors():
                c.flush()
            self._heading = (level, [])
        elif tag in _BLOCK:
            for c in self._collectors():
                c.body.append("\n\n" if tag in _PARAGRAPH else "\n")

    def end(self, tag: str) -> None:
        if not self._stack:
            return
        open_tag = self._stack.pop()
        if open_tag == "title" and self._title is not None:
            self._title_text, self._title = "".join(self._title) or " ", None
        if self._skip:
            self._skip -= 1
            return
        if self._heading is not None:
            if _HEADINGS.get(open_tag) == self._heading[0]:
                level, parts = self._heading
                self._heading = None
                for c in self._collectors():
                    c.heading(level, "".join(parts))
        elif open_tag in _BLOCK:
            for c in self._collectors():
                c.body.append("\n\n" if open_tag in _PARAGRAPH else "\n")
        if len(self._stack) + 1 == self._main_depth:
            self._main_depth = 0   # the first main element is over: the rest is page text

    def data(self, text: str) -> None:
        if self._title is not None:
            self._title.append(text)
        if self._skip:
            return
        if self._heading is not None:
            self._heading[1].append(text)
            return
        for c in self._collectors():
            c.body.append(text)

    def close(self) -> None:
        return None


def _html_sections(data: bytes) -> tuple[str, list[tuple[list[str], str]]]:
    """(title, sections) of an HTML page: its first h1 (else <title>) and its main content."""
    page = _HtmlSections(data.removeprefix(b"\xef\xbb\xbf"))
    return page.title, page.sections


# A man page rendered to text (``man -l page.1.gz | col -b``): "LS(1)   Órdenes de usuario
# LS(1)" first, section names in capitals at the left margin, the body indented.
_MAN_HEADER = re.compile(r"^\s*([\w.:+-]+)\((\d\w*)\)\s.*\s\1\(\2\)\s*$")
_MAN_SECTION = re.compile(r"^[^\s\W_a-z][^a-z]{1,60}$")
_NAME_SECTIONS = frozenset({"NAME", "NOMBRE"})
_UNDERLINE = re.compile(r"^\s*(=+|-+|~+|\*+)\s*$")


# str.splitlines()'s line boundaries, so _lines() cuts exactly where it does
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _lines(text: str) -> Iterator[str]:
    """``text.splitlines()`` one line at a time: a list of every line of a 20 MB document was
    the biggest thing in memory while indexing it."""
    start = 0
    for m in _LINE_BREAK.finditer(text):
        yield text[start:m.start()]
        start = m.end()
    if start < len(text):
        yield text[start:]


def _man_sections(header: str, lines: Iterator[str]) -> tuple[str, list[tuple[list[str], str]]]:
    name = _MAN_HEADER.match(header)
    assert name is not None
    sections: list[tuple[list[str], str]] = []
    heading, body = "", []
    for line in lines:
        if _MAN_SECTION.match(line) and not _MAN_HEADER.match(line):
            if "".join(body).strip():
                sections.append(([heading] if heading else [], "\n".join(body)))
            heading, body = " ".join(line.split()).title(), []
        elif not _MAN_HEADER.match(line):
            body.append(line)
    if "".join(body).strip():
        sections.append(([heading] if heading else [], "\n".join(body)))
    title = f"{name.group(1).lower()}({name.group(2)})"
    for path, text in sections:
        if path and path[0].upper() in _NAME_SECTIONS:
            title = " ".join(text.split())   # "ls - lista el contenido de un directorio"
            break
    return title, sections


def _text_sections(text: str) -> tuple[str, list[tuple[list[str], str]]]:
    """(title, sections) of plain text: a rendered man page, or setext-style headings
    (a line underlined with ===, ---, ~~~) with the first short line as the title."""
    lines = _lines(text)
    first = next((ln for ln in lines if ln.strip()), None)   # leading blank lines dropped
    if first is None:
        return "", []
    if _MAN_HEADER.match(first):
        return _man_sections(first, lines)
    sections: list[tuple[list[str], str]] = []
    heading: list[str] = []
    body: list[str] = []
    current, ahead = itertools.tee(itertools.chain([first], lines))
    next(ahead)
    for line, nxt in itertools.zip_longest(current, ahead, fillvalue=""):
        if line.strip() and _UNDERLINE.match(nxt) and len(line.strip()) <= 100:
            if "".join(body).strip():
                sections.append((heading, "\n".join(body)))
            heading, body = [" ".join(line.split())], []
        elif not (_UNDERLINE.match(line) and body == [] and heading):
            body.append(line)
    if "".join(body).strip():
        sections.append((heading, "\n".join(body)))
    title = ""
    first = first.strip()
    if sections and sections[0][0]:
        title = sections[0][0][0]
    elif len(first) <= 80 and not first.endswith((".", ",", ";", ":")):
        title = " ".join(first.split())
    return title, sections


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
    text = decode(data, source_id)   # also the check that it is UTF-8 text at all
    title = ""
    if kind == "html":
        title, sections = _html_sections(data)
    elif kind == "markdown":
        sections = _markdown_sections(text)
    else:
        title, sections = _text_sections(text)
    del text   # from here on the text lives in the sections, each freed once chunked
    if not title:
        first = next((path[0] for path, _ in sections if path), "")
        title = first or PurePosixPath(source_id).stem.replace("-", " ").replace("_", " ")
    chunks: list[Chunk] = []
    sections.reverse()
    while sections:
        path, body = sections.pop()
        # The document title is the top heading; repeating it in every heading path adds noise.
        trail = path[1:] if path and path[0] == title else path
        heading = " > ".join(trail)
        pieces = _pack(_paragraphs(body))
        section_lang = detect_language(f"{heading}\n{body[:2000]}") if pieces else "en"
        for piece in pieces:   # per chunk: a Spanish section may keep English paragraphs
            n = len(chunks)
            chunks.append(Chunk(_chunk_key(source_id, heading, n, piece), n, heading, piece,
                                detect_language(piece, section_lang)))
    if not chunks:
        raise DocumentError(f"{source_id}: no text to index")
    return ParsedDoc(title=title, chunks=chunks)
