"""Prometheus exposition: events and snapshot state, atomic textfile, localhost-only HTTP."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edged.config import MetricsSettings
from edged.events import TurnFinished, TurnRecord, WakeWordDetected
from edged.metrics import Metrics, Snapshot


def prom_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _filled() -> Metrics:
    m = Metrics()
    m.turn_latency.labels("voice").observe(0.6)
    m.turn_latency.labels("voice").observe(2.5)
    m.turns.labels("voice", "wake").inc(2)
    m.reconnects.labels("1011").inc()
    m.tool_calls.labels("search_knowledge", "ok").inc()
    m.tool_duration.labels("search_knowledge").observe(0.004)
    m.snapshot = Snapshot(healthy=True, bytes_up=1000, bytes_down=48000, vad_gated_ratio=0.25,
                          index_generation=3, index_bytes=4096, index_docs=2, index_chunks=9,
                          last_sync_ok=False, last_sync_timestamp=1.7e9,
                          components={"voice": "ok", "camera": "degraded"})
    return m


def test_exposition_parses_and_has_the_numbers() -> None:
    s = prom_samples(_filled().render())
    assert s[("edged_turn_latency_seconds_count", (("kind", "voice"),))] == 2
    assert s[("edged_turn_latency_seconds_bucket", (("kind", "voice"), ("le", "1.0")))] == 1
    assert s[("edged_turn_latency_seconds_sum", (("kind", "voice"),))] == 3.1
    assert s[("edged_live_reconnects_total", (("code", "1011"),))] == 1
    assert s[("edged_tool_calls_total", (("outcome", "ok"), ("tool", "search_knowledge")))] == 1
    assert s[("edged_live_bytes_total", (("direction", "down"),))] == 48000
    assert s[("edged_vad_gated_ratio", ())] == 0.25
    assert s[("edged_index_generation", ())] == 3
    assert s[("edged_index_last_sync_success", ())] == 0
    assert s[("edged_component_ok", (("component", "camera"), ("state", "degraded")))] == 0
    assert s[("edged_healthy", ())] == 1


def test_wakes_and_turns_by_trigger_are_counted_from_events() -> None:
    m = Metrics()
    for ev in (WakeWordDetected("okay_nabu", 0.97), WakeWordDetected("okay_nabu", 0.93),
               TurnFinished(TurnRecord(trigger="wake")),
               TurnFinished(TurnRecord(trigger="follow_up")),
               TurnFinished(TurnRecord(trigger="follow_up")),
               TurnFinished(TurnRecord(kind="text", mode="text", trigger="text"))):
        m.on_event(ev)
    s = prom_samples(m.render())
    assert s[("edged_wake_word_detections_total", (("model", "okay_nabu"),))] == 2
    assert s[("edged_turns_total", (("kind", "voice"), ("trigger", "wake")))] == 1
    assert s[("edged_turns_total", (("kind", "voice"), ("trigger", "follow_up")))] == 2
    assert s[("edged_turns_total", (("kind", "text"), ("trigger", "text")))] == 1


def test_unknown_state_is_omitted_not_zero() -> None:
    text = Metrics().render()
    assert "edged_index_generation" not in text and "edged_live_bytes" not in text


def test_textfile_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "edged.prom"
    m = _filled()
    m.write_textfile(path)
    assert prom_samples(path.read_text())[("edged_index_docs", ())] == 2
    inode = path.stat().st_ino
    m.snapshot = Snapshot(index_docs=5)
    m.write_textfile(path)
    assert path.stat().st_ino != inode             # replaced by rename, never rewritten in place
    assert prom_samples(path.read_text())[("edged_index_docs", ())] == 5
    assert [p.name for p in path.parent.iterdir()] == ["edged.prom"]   # no temp files left


def test_http_off_by_default_and_localhost_when_set() -> None:
    m = _filled()
    m.apply_settings(MetricsSettings())
    assert m.http_address is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m.apply_settings(MetricsSettings(http_port=port))
    assert m.http_address == ("127.0.0.1", port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert b'edged_live_bytes_total{direction="up"} 1000.0' in body
