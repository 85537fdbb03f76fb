"""The front-end benchmark's scoring (scripts/bench_frontend.py): what counts as a clean turn
and a false turn decides the figures docs quote, so the rules are pinned here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from edged.events import SpeechEnded, SpeechStarted


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_frontend.py"
    spec = importlib.util.spec_from_file_location("bench_frontend", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_frontend"] = module      # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_clean_and_false_turns(bench: ModuleType) -> None:
    spans = [(10.0, 12.0), (20.0, 22.0), (30.0, 32.0), (40.0, 42.0), (50.0, 52.0)]
    events = [
        (5.4, SpeechStarted(t=5.0)), (6.5, SpeechEnded(t=5.8, reason="silence")),   # on noise
        (10.3, SpeechStarted(t=10.1)), (12.8, SpeechEnded(t=12.1, reason="silence")),  # clean
        (17.4, SpeechStarted(t=17.0)), (22.8, SpeechEnded(t=22.1, reason="silence")),  # early
        (30.6, SpeechStarted(t=30.4)), (32.8, SpeechEnded(t=32.1, reason="silence")),  # late
        (40.3, SpeechStarted(t=40.1)), (43.2, SpeechEnded(t=42.5, reason="silence")),  # long
        (50.3, SpeechStarted(t=50.1)), (51.5, SpeechEnded(t=51.5, reason="max_length")),
    ]
    turns = bench.collect_turns(events)
    clean, false, alone = bench.score_turns(turns, spans, 0.0, 60.0)
    assert clean == [True, False, False, False, False]
    assert false == 2            # the one at 5 s and the one that opened at 17 s on the noise
    assert alone == pytest.approx(60.0 - 5 * 3.5)


def test_two_turns_for_one_utterance_is_not_clean(bench: ModuleType) -> None:
    events = [(10.3, SpeechStarted(t=10.1)), (11.2, SpeechEnded(t=10.5, reason="silence")),
              (11.4, SpeechStarted(t=11.2)), (12.8, SpeechEnded(t=12.1, reason="silence"))]
    clean, false, _ = bench.score_turns(bench.collect_turns(events), [(10.0, 12.0)], 0.0, 20.0)
    assert clean == [False] and false == 0


def test_time_to_stay(bench: ModuleType) -> None:
    trace = [(0.0, 5.0), (0.25, 12.0), (0.5, 8.0), (0.75, 15.0), (1.0, float("nan")),
             (1.25, 30.0)]
    assert bench.time_to_stay(trace, 10) == 0.75
    assert bench.time_to_stay(trace, 40) is None
