"""Local turn ratings: ``edgectl feedback good|bad [note]`` appends one JSON line per rating.

Stored as JSON-lines in the state directory (``<paths.state_dir>/feedback.jsonl``) so it
survives restarts, can be copied off the device with ``scp``, and is trivially appendable
without a database. Each line carries the rated turn (its transcripts and latency), because
"bad" alone is useless later.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from edged.redact import redact

log = logging.getLogger(__name__)

Rating = Literal["good", "bad"]
RATINGS: tuple[Rating, ...] = ("good", "bad")
MAX_NOTE_CHARS = 500


class FeedbackError(ValueError):
    """Bad feedback input; the message says what is accepted."""


class FeedbackStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "feedback.jsonl"
        self._counts: Counter[str] = Counter()
        self._load_counts()

    def _load_counts(self) -> None:
        try:
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        rating = json.loads(line).get("rating")
                    except (ValueError, AttributeError):
                        continue  # a torn last line after a power cut: skip it, keep the rest
                    if rating in RATINGS:
                        self._counts[rating] += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot read feedback file %s: %s", self.path, e.strerror)

    def counts(self) -> dict[str, int]:
        return {r: self._counts[r] for r in RATINGS}

    def record(self, rating: str, note: str = "", turn: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        """Append one rating (of ``turn``, the last turn) durably and return the stored entry."""
        if rating not in RATINGS:
            raise FeedbackError(f"rating must be 'good' or 'bad', got {rating!r}")
        if len(note) > MAX_NOTE_CHARS:
            raise FeedbackError(f"note is {len(note)} characters; the limit is {MAX_NOTE_CHARS}")
        entry = {"ts": time.time(), "rating": rating, "note": note, "turn": turn}
        line = redact(json.dumps(entry, ensure_ascii=False)) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._counts[rating] += 1
        return entry
