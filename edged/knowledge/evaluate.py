"""`make eval`: retrieval quality on real documents, judged on what the tool returns.

The corpus is real text nobody here wrote, from Debian packages the bootstrap installs
(``scripts/bootstrap --eval-corpora``): the Spanish Debian Reference (``debian-reference-es``),
the Spanish man pages of sections 1, 5 and 8 (``manpages-es``, rendered to text with ``man``)
and the English Python library reference (``python3-doc``). The questions
(``edged/data/eval/questions.json``) are phrased the way people speak, Spanish first, with
cross-language ones and questions nothing in the corpus answers; each carries the translation
the model is asked to pass.

Honest protocol: the relevance model (bias, weights, floor, per-document cap) is fitted on the
``tune`` half only, by logistic regression on the candidates' features, and every figure is
reported on the held-out ``test`` half. A question counts as found ("tool-hit@4") when one of
the passages in the tool's actual answer (:func:`edged.knowledge.tool.answer`, after the floor
and the cap) comes from a labelled document (and section); a no-answer question counts as
correct when the answer is "nothing relevant". Each retriever alone (FTS, vector) gets its own
fitted model and floor, so hybrid is compared with the best each single method can do.

Run: ``.venv/bin/python -m edged.knowledge.evaluate [--out DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged.config import load_settings
from edged.knowledge.embedders import Embedder, EmbedderError, make_embedder
from edged.knowledge.search import Candidate, Mode, Relevance, Searcher
from edged.knowledge.sync import run_sync
from edged.knowledge.tool import answer

QUESTIONS = Path(__file__).resolve().parent.parent / "data" / "eval" / "questions.json"
CORPUS_PACKAGES = ("debian-reference-es", "manpages-es", "python3.11-doc")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference")
MAN_ES = Path("/usr/share/man/es")
PYTHON_LIBRARY = Path("/usr/share/doc/python3.11/html/library")
MODES: tuple[Mode, ...] = ("fts", "vector", "hybrid")
TOP_K = 4


class CorpusMissing(RuntimeError):
    """A Debian package the evaluation reads is not installed; the message says the fix."""


def _versions() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n",
                          *CORPUS_PACKAGES], capture_output=True, text=True)
    if out.returncode != 0 or not DEBIAN_REFERENCE.is_dir() or not PYTHON_LIBRARY.is_dir():
        raise CorpusMissing(f"evaluation corpus packages missing ({' '.join(CORPUS_PACKAGES)});"
                            " install them with `scripts/bootstrap --eval-corpora`")
    return out.stdout


def _render_man(page: Path) -> bytes:
    """A man page as plain text, the way a user would save it (``man -l | col -bx``)."""
    man = subprocess.run(["man", "-l", "-E", "UTF-8", str(page)], capture_output=True,
                         env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if man.returncode != 0 or not man.stdout.strip():
        return b""
    return subprocess.run(["col", "-bx"], input=man.stdout, capture_output=True).stdout


def prepare_corpus(dest: Path) -> Path:
    """Lay the corpus out under ``dest`` (cached: rebuilt only when a package version
    changes) and return it. Ids: ``debian-reference/chNN.es.html``,
    ``man-es/manS/NAME.S.txt``, ``python-library/MODULE.html``."""
    versions = _versions()
    stamp = dest / ".packages"
    if stamp.exists() and stamp.read_text() == versions:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "debian-reference").mkdir(parents=True)
    for page in sorted(DEBIAN_REFERENCE.glob("ch*.es.html")):
        shutil.copyfile(page, dest / "debian-reference" / page.name)
    for section in ("1", "5", "8"):
        out = dest / "man-es" / f"man{section}"
        out.mkdir(parents=True)
        for page in sorted((MAN_ES / f"man{section}").glob("*.gz")):
            text = _render_man(page)
            if text:
                (out / (page.name.removesuffix(".gz") + ".txt")).write_bytes(text)
    shutil.copytree(PYTHON_LIBRARY, dest / "python-library",
                    ignore=lambda d, names: [n for n in names if not n.endswith(".html")])
    stamp.write_text(versions)
    return dest


@dataclass
class Question:
    id: str
    category: str
    query: str
    translation: str
    split: str
    relevant: list[dict[str, str]]

    def matches(self, source: object, heading: object) -> bool:
        return any(source == r["source"] and r.get("heading", "") in str(heading)
                   for r in self.relevant)


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    return [Question(**q) for q in json.loads(path.read_text(encoding="utf-8"))["queries"]]


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 200) -> np.ndarray:
    """Weights (bias first) of a logistic regression by Newton's method, lightly regularised."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) + 1e-3 * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + 1e-3 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


# Features of the two relevance models per method (search.Relevance): the section model also
# sees the title/heading match; the text model does not.
SECTION_FEATURES = {"fts": ("lexical", "label"), "vector": ("cosine",),
                    "hybrid": ("cosine", "lexical", "label")}
TEXT_FEATURES = {"fts": ("lexical",), "vector": ("cosine",), "hybrid": ("cosine", "lexical")}


def _features(cands: list[Candidate], names: tuple[str, ...]) -> np.ndarray:
    return np.array([[getattr(c, n) for n in names] for c in cands],
                    np.float64).reshape(len(cands), -1)


def _relevance(section: np.ndarray, text: np.ndarray, mode: Mode, floor: float) -> Relevance:
    """The fitted weights (bias first) as a Relevance; a feature a method lacks weighs 0."""
    sw = dict(zip(SECTION_FEATURES[mode], section[1:], strict=True))
    tw = dict(zip(TEXT_FEATURES[mode], text[1:], strict=True))
    return Relevance(float(section[0]), float(sw.get("cosine", 0.0)),
                     float(sw.get("lexical", 0.0)), float(sw.get("label", 0.0)),
                     float(text[0]), float(tw.get("cosine", 0.0)), float(tw.get("lexical", 0.0)),
                     floor)


@dataclass
class Outcome:
    answers: dict[str, dict[str, object]]   # question id -> the tool's payload

    def hit(self, q: Question) -> bool:
        results = self.answers[q.id]["results"]
        assert isinstance(results, list)
        if not q.relevant:
            return not results
        return any(q.matches(r["source"], r["heading"]) for r in results)


def run_tool(searcher: Searcher, questions: list[Question],
             cands: dict[str, list[Candidate]], mode: Mode, rel: Relevance, cap: int,
             char_budget: int) -> Outcome:
    searcher.relevance, searcher.max_per_document = rel, cap
    out = {}
    for q in questions:
        hits = searcher.rank(cands[q.id], TOP_K, mode)
        out[q.id] = answer(hits, q.query, char_budget)
    return Outcome(out)


def _score(questions: list[Question], outcome: Outcome) -> float:
    """Tuning objective: mean of answerable hit rate and no-answer correctness."""
    ans = [outcome.hit(q) for q in questions if q.relevant]
    none = [outcome.hit(q) for q in questions if not q.relevant]
    return float(np.mean(ans)) + (float(np.mean(none)) if none else 0.0)


def tune(searcher: Searcher, tune_qs: list[Question], cands: dict[str, list[Candidate]],
         mode: Mode, char_budget: int) -> tuple[Relevance, int]:
    rows, labels = [], []
    for q in tune_qs:
        for c in cands[q.id]:
            rows.append(c)
            labels.append(1.0 if q.matches(c.source, c.heading) else 0.0)
    y = np.array(labels)
    section = fit_logistic(_features(rows, SECTION_FEATURES[mode]), y)
    text = fit_logistic(_features(rows, TEXT_FEATURES[mode]), y)
    best: tuple[float, float, int] | None = None
    for cap in (1, 2):
        for floor in np.arange(0.02, 0.9, 0.02):
            rel = _relevance(section, text, mode, float(floor))
            s = _score(tune_qs, run_tool(searcher, tune_qs, cands, mode, rel, cap, char_budget))
            if best is None or s > best[0] + 1e-9:
                best = (s, float(floor), cap)
    assert best is not None
    return _relevance(section, text, mode, round(best[1], 2)), best[2]


def report(questions: list[Question], outcomes: dict[str, Outcome]) -> list[str]:
    cats = ["es-es", "en-es", "es-en", "en-en"]
    lines = [f"{'method':<8} " + " ".join(f"{c + ' hit@4':>12}" for c in cats)
             + f" {'all hit@4':>10} {'none ok':>8} {'n':>4}"]
    for mode, oc in outcomes.items():
        cells = []
        for c in cats:
            qs = [q for q in questions if q.category == c]
            cells.append(f"{np.mean([oc.hit(q) for q in qs]):>12.3f}" if qs else f"{'-':>12}")
        ans = [oc.hit(q) for q in questions if q.relevant]
        none = [oc.hit(q) for q in questions if not q.relevant]
        lines.append(f"{mode:<8} " + " ".join(cells) + f" {np.mean(ans):>10.3f} "
                     f"{np.mean(none):>8.3f} {len(questions):>4}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("eval-out"),
                    help="where the tool's answers to every held-out question are written")
    ap.add_argument("--cache", type=Path, default=Path(".cache/eval-corpus"),
                    help="where the corpus is laid out (kept between runs)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edged-eval-") as tmp:
        admin = Path(tmp) / "edged.toml"
        admin.touch()   # defaults only, not this machine's /etc/edged
        settings = load_settings(config_path=admin, override_path=Path(tmp) / "none", env={})
        try:
            corpus = prepare_corpus(args.cache)
            emb: Embedder = make_embedder(settings)
        except (CorpusMissing, EmbedderError) as e:
            print(f"make eval: {e}", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        res = run_sync(settings, source=str(corpus), index_dir=Path(tmp) / "idx", embedder=emb)
        build = time.perf_counter() - t0
        questions = load_questions()
        missing = {r["source"] for q in questions for r in q.relevant} - set(
            p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file())
        if missing:
            print(f"make eval: labelled documents missing from the corpus: {sorted(missing)}",
                  file=sys.stderr)
            return 2
        print(f"corpus: {res.documents} documents, {res.chunks} chunks "
              f"({', '.join(CORPUS_PACKAGES)}); built in {build:.1f} s; embedder {emb.name}")
        print(f"questions: {len(questions)} ({sum(q.split == 'tune' for q in questions)} tune, "
              f"{sum(q.split == 'test' for q in questions)} held-out test); top_k {TOP_K}")
        searcher = Searcher(Path(tmp) / "idx")
        budget = settings.knowledge.char_budget
        for with_translation in (False, True):
            cands: dict[Mode, dict[str, list[Candidate]]] = defaultdict(dict)
            with asyncio.Runner() as runner:
                for q in questions:
                    also = (q.translation,) if with_translation else ()
                    vecs = runner.run(emb.embed([q.query, *also], "query"))
                    for mode in MODES:
                        cands[mode][q.id] = searcher.candidates(q.query, vecs, mode, also)
            tune_qs = [q for q in questions if q.split == "tune"]
            test_qs = [q for q in questions if q.split == "test"]
            outcomes, fitted = {}, {}
            for mode in MODES:
                rel, cap = tune(searcher, tune_qs, cands[mode], mode, budget)
                fitted[mode] = (rel, cap)
                outcomes[mode] = run_tool(searcher, test_qs, cands[mode], mode, rel, cap,
                                          budget)
            how = "question + its translation (as the tool asks)" if with_translation \
                else "question only"
            print(f"\nheld-out test half, tool given the {how}:")
            print("\n".join(report(test_qs, outcomes)))
            for mode, (rel, cap) in fitted.items():
                print(f"  {mode:<7} fitted on tune: section bias {rel.bias:.2f}, w_vector "
                      f"{rel.weight_vector:.2f}, w_lexical {rel.weight_lexical:.2f}, "
                      f"w_label {rel.weight_label:.2f}; text bias {rel.text_bias:.2f}, "
                      f"w_vector {rel.text_weight_vector:.2f}, w_lexical "
                      f"{rel.text_weight_lexical:.2f}; floor {rel.floor:.2f}, "
                      f"max {cap}/document")
            if with_translation:
                args.out.mkdir(parents=True, exist_ok=True)
                with (args.out / "tool-answers.jsonl").open("w", encoding="utf-8") as f:
                    for q in test_qs:
                        f.write(json.dumps({"id": q.id, "hit": outcomes["hybrid"].hit(q),
                                            "answer": outcomes["hybrid"].answers[q.id]},
                                           ensure_ascii=False) + "\n")
                print(f"\nwhat the model receives (hybrid, every held-out question): "
                      f"{args.out / 'tool-answers.jsonl'}; two examples:")
                for qid in (test_qs[0].id, next(q.id for q in test_qs if not q.relevant)):
                    payload = outcomes["hybrid"].answers[qid]
                    print(json.dumps(payload, ensure_ascii=False)[:600])
        searcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
