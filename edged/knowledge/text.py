"""Words for the lexical index: language per chunk, Snowball stems, stop words, safe queries.

Why stems: people ask «¿cómo *borro* un fichero?» while the page says «borra» or «borrar»; the
Spanish Snowball stemmer maps all three to ``borr``. Each chunk is stemmed with the stemmer of
its own language. A spoken question is too short to tell its language reliably, and may mix
both («¿cómo hago un commit?»), so at query time every word is stemmed both ways and either
stem may match.

Why the language is told by function words: only Spanish and English matter, and a chunk of
prose has a dozen «de», «la», «que» or "the", "of", "and". Counting them per chunk is exact
enough (it agrees with py3langid on 95 % of the make eval chunks, and the rest are mostly
untranslated English paragraphs inside Spanish sections, which it gets right and py3langid's
per-section guess did not), costs no model (py3langid's was 79 MB resident) and ~25 µs.

The FTS5 table holds these stems, not the raw words (``store.py``). Words are folded to
lowercase without accents before stemming, so «informacion» typed without its accent still
meets «información».

Why the same function at both ends: :func:`index_terms` and :func:`query_alternatives` share
:func:`words` and the stemmers, so a word is cut the same way in a chunk and in a question.
Changing anything here that changes the stems must bump :data:`TEXT_VERSION`, which forces a
rebuild of existing indexes (the stems are stored in the index).

Why term hashes: scoring a candidate needs to know which question words it contains. Stemming
200 candidate passages again at query time cost ~100 ms at 15k chunks; each chunk instead
stores the sorted 32-bit hashes of its distinct stems (:func:`term_hashes`, ~300 bytes), and
the search compares those with numpy.

The stemmers are Snowball's C library through PyStemmer (pure-Python Snowball was a third of
the build time).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import unicodedata
import zlib
from typing import Literal

import numpy as np
import Stemmer

Lang = Literal["es", "en"]
LANGS: tuple[Lang, ...] = ("es", "en")
TEXT_VERSION = f"3:pystemmer-{importlib.metadata.version('pystemmer')}"
MAX_QUERY_WORDS = 12   # a spoken question rarely has more content words; bounds the OR query

_WORD = re.compile(r"\w+")
_COMBINING = re.compile(r"[\u0300-\u036f]+")   # the accents NFKD splits off Latin letters
# PyStemmer's own cache is off: ``stem`` below caches, once (see there why so little).
_STEMMERS = {lang: Stemmer.Stemmer(name, maxCacheSize=0)
             for lang, name in (("es", "spanish"), ("en", "english"))}

# Function words that match everything and only slow BM25 down (lowercase, accents folded).
STOPWORDS = frozenset(
    """
a al algo algun alguna algunos ante como con contra cual cuales cuando de del desde donde
durante el ella ellas ellos en entre era es esa ese eso esta estan este esto estos fue ha han
hay hace hacer hago la las le les lo los mas me mi mis muy nada ni no nos o os otra otro para
pero poco por porque puede puedo que quien se sea ser si sin sobre son su sus tambien te
tengo tiene tienen todo todos tu un una uno unos usted y ya yo quiero saber decir dime
a about after all also an and any are as at be been but by can could did do does for from get
had has have how i if in into is it its just me my no not of on or our out so some than that
the their them then there these they this to up was we were what when where which who why will
with would you your want know tell please
""".split()  # noqa: SIM905 - a word list reads better as text
)


def fold(text: str) -> str:
    """Lowercase without accents: the form stop words and the FTS5 tokenizer compare."""
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text.lower()))


def words(text: str) -> list[str]:
    """Words folded to lowercase without accents, stop words dropped."""
    return [w for w in _WORD.findall(fold(text))
            if w not in STOPWORDS and not (w.isdigit() and len(w) < 2)]


@functools.lru_cache(maxsize=4096)
def stem(word: str, lang: Lang) -> str:
    """One (folded) word's stem in one language (cached: vocabularies repeat a lot).

    A few thousand entries: the commonest words are most of the calls, and stemming a rarer
    one is a microsecond of C. A cache of every word seen (200,000 entries, and PyStemmer's own
    10,000 per language) grew by megabytes over a nightly sync and in the daemon, and was no
    faster (scripts/bench_knowledge.py, memory of the nightly sync).

    Words are stemmed without their accents: speech recognition and hurried typing drop them,
    and the Spanish stemmer then still agrees («auditorías» and «auditoria» -> ``auditori``).
    """
    return _STEMMERS[lang].stemWord(word) if word.isalpha() else word


# Function words that only one of the two languages uses (shared ones such as "a", "no",
# "me" would vote for both); accents, «ñ», «¿» and «¡» count for Spanish too.
_ES_WORDS = frozenset("""
de la que el en los del se las por un para con una su al lo como mas pero sus le ya este porque
esta entre cuando muy sin sobre tambien hasta hay donde quien desde todo nos durante todos uno
les ni contra otros ese eso ante ellos esto antes algunos unos otro otras otra tanto esa estos
mucho quienes nada muchos cual poco ella estar estas algunas algo es son fue puede ser cada
""".split())  # noqa: SIM905 - a word list reads better as text
_EN_WORDS = frozenset("""
the of and to in is that for it as with was on be by this are or from at an which not have has
but can if all will their there been more other its when these also into may should only then
than such any each would you your how what use used using
""".split())  # noqa: SIM905
_SPANISH_MARKS = re.compile(r"[ñ¿¡áéíóú]")


def detect_language(text: str, fallback: Lang = "en") -> Lang:
    """Spanish or English by function-word votes (module docstring); ``fallback`` on a tie
    (code, tables, a bare heading)."""
    es = len(_SPANISH_MARKS.findall(text.lower()))
    en = 0
    for w in _WORD.findall(fold(text)):
        if w in _ES_WORDS:
            es += 1
        elif w in _EN_WORDS:
            en += 1
    if es == en:
        return fallback
    return "es" if es > en else "en"


def index_terms(text: str, lang: Lang) -> str:
    """The text as space-separated stems in its language: what the FTS5 columns hold."""
    return " ".join(stem(w, lang) for w in words(text))


def term_hash(stem_: str) -> int:
    """A stem's 32-bit hash, as stored per chunk (collisions only blur a feature, rarely)."""
    return zlib.crc32(stem_.encode())


def term_hashes(*terms: str) -> bytes:
    """Sorted distinct hashes of space-separated stems (``index_terms`` output), uint32."""
    hashes = {term_hash(t) for text in terms for t in text.split()}
    return np.array(sorted(hashes), np.uint32).tobytes()


def query_alternatives(*texts: str) -> list[tuple[str, ...]]:
    """Per distinct query word (across the question and its translations), its stems in every
    language; at most MAX_QUERY_WORDS words per text, so the OR query stays bounded."""
    out: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    for text in texts:
        for w in words(text)[:MAX_QUERY_WORDS]:
            alts = tuple(dict.fromkeys(stem(w, lang) for lang in LANGS))
            if alts not in seen:
                seen.add(alts)
                out.append(alts)
    return out


def fts_query(alternatives: list[tuple[str, ...]]) -> str | None:
    """A safe FTS5 MATCH expression: every stem double-quoted (so no user text is ever FTS5
    syntax), a word's stems OR-ed, words OR-ed (a spoken question need not contain every
    word; BM25 ranks chunks that contain more of them higher). No prefix queries: stems make
    them unnecessary, and they made queries slow at 100k chunks."""
    terms = [" OR ".join(f'"{s}"' for s in alts) for alts in alternatives]
    return " OR ".join(f"({t})" if " OR " in t else t for t in terms) or None
