"""Untrusted text made safe once, where it enters edged: :func:`clean_text` and
:func:`clean_strings`.

Questions (``edgectl ask``, ``edged chat``) and tool-call arguments come from people and from the
model, and JSON can carry what Python strings allow but UTF-8 does not: a lone surrogate
(``"\\ud800"``) cannot be encoded, so it breaks the WebSocket frame it is sent in, the tokenizer
of the local embedder, SQLite. Other characters are valid but useless or harmful downstream:
control characters, noncharacters, and compatibility forms such as U+FDFA (one character that
the embedder maps to nothing, while its NFKC form is eighteen ordinary letters it knows).

So every boundary passes the text through the same function, once, before anything validates,
measures or stores it; everything behind the boundary can then assume clean text:

* lone surrogates (and surrogate halves that do not pair) become U+FFFD;
* NFKC normalisation (``ﬁ`` -> ``fi``, full-width -> ASCII, U+FDFA -> its letters), so what is
  searched matches what was indexed;
* C0/C1 control characters are removed, except tab and newline (CR and CRLF become newline);
* noncharacters (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF) and the byte-order mark are removed.

Length limits are checked by the callers *after* cleaning, because NFKC can lengthen a string.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_SURROGATES = re.compile("[\ud800-\udfff]")
_REMOVED = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ufdd0-\ufdef"
    + "".join(f"{chr(p)}{chr(p + 1)}" for p in range(0xFFFE, 0x110000, 0x10000))
    + "]")


def clean_text(text: str) -> str:
    """``text`` as edged passes it on: valid UTF-8, NFKC, no control or noncharacters."""
    if _SURROGATES.search(text):
        # UTF-16 round trip: a proper high+low pair becomes its character, a lone half U+FFFD
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _REMOVED.sub("", unicodedata.normalize("NFKC", text))


def clean_strings(value: Any) -> Any:
    """:func:`clean_text` applied to every string (keys included) inside JSON-like data."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_strings(k): clean_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_strings(v) for v in value]
    return value
