"""Prometheus metrics: one private registry, exposed three ways and never on the LAN by default.

* ``edgectl metrics`` (the control socket's ``metrics`` method returns :meth:`Metrics.render`),
* a textfile for node_exporter's textfile collector (``metrics.textfile``; written atomically
  by ``prometheus_client.write_to_textfile``: temp file in the same directory, then rename),
* optionally ``/metrics`` over HTTP when ``metrics.http_port`` is set, bound to
  ``metrics.http_host`` (127.0.0.1 unless changed).

Two kinds of numbers: *events* (turn latency, turns by what opened them, wake words, reconnects
by cause, tool calls, feedback) are prometheus_client Counters/Histograms fed by
:meth:`Metrics.on_event`, an observer on the daemon's event bus; *state* that components already
keep (bytes up/down, VAD gate ratio, index generation/size, last sync) is copied into a snapshot
by the daemon's event loop and rendered by a custom collector, so scrapes from the HTTP thread
never call into components.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edged.config import MetricsSettings
from edged.events import (
    Event,
    FeedbackGiven,
    OtaChanged,
    Reconnecting,
    ToolCallFinished,
    TurnFinished,
    WakeWordDetected,
)
from edged.redact import redact

log = logging.getLogger(__name__)

# Voice turns on a Pi over Wi-Fi: sub-second is good, several seconds is what users notice.
LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_LABEL_CHARS = 64


@dataclass
class Snapshot:
    """State copied from component status on the event loop; ``None`` = unknown (omitted)."""

    healthy: bool = False
    muted: bool = False
    bytes_up: float | None = None
    bytes_down: float | None = None
    vad_gated_ratio: float | None = None
    index_generation: float | None = None
    index_bytes: float | None = None
    index_docs: float | None = None
    index_chunks: float | None = None
    last_sync_ok: bool | None = None
    last_sync_timestamp: float | None = None
    config_reload_ok: bool = True
    components: Mapping[str, str] = field(default_factory=dict)


def _label(value: str) -> str:
    """A label value that came from outside (a tool name the model chose): redacted, and
    short, because every distinct value is a time series kept until the daemon restarts."""
    return redact(value)[:MAX_LABEL_CHARS]


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], float(value))
        yield g


class _SnapshotCollector(Collector):
    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        s = self._owner.snapshot
        yield from _gauge("edged_healthy", "1 when every component is healthy", s.healthy)
        yield from _gauge("edged_microphone_muted", "1 while the microphone is muted", s.muted)
        yield from _gauge("edged_config_last_reload_ok",
                          "0 when the last SIGHUP reload was rejected (old config kept)",
                          s.config_reload_ok)
        if s.bytes_up is not None or s.bytes_down is not None:
            c = CounterMetricFamily("edged_live_bytes", "Bytes sent to / received from Gemini Live",
                                    labels=["direction"])
            if s.bytes_up is not None:
                c.add_metric(["up"], s.bytes_up)
            if s.bytes_down is not None:
                c.add_metric(["down"], s.bytes_down)
            yield c
        yield from _gauge("edged_vad_gated_ratio",
                          "Fraction of captured audio frames the VAD let through to the network",
                          s.vad_gated_ratio)
        yield from _gauge("edged_index_generation", "Knowledge index generation in use",
                          s.index_generation)
        yield from _gauge("edged_index_db_bytes", "Knowledge index size on disk", s.index_bytes)
        yield from _gauge("edged_index_docs", "Documents in the knowledge index", s.index_docs)
        yield from _gauge("edged_index_chunks", "Chunks in the knowledge index", s.index_chunks)
        yield from _gauge("edged_index_last_sync_success",
                          "1 if the last index sync succeeded, 0 if it failed",
                          None if s.last_sync_ok is None else float(s.last_sync_ok))
        yield from _gauge("edged_index_last_sync_timestamp_seconds",
                          "Unix time the last index sync finished", s.last_sync_timestamp)
        if s.components:
            g = GaugeMetricFamily("edged_component_ok", "1 when the component is ok",
                                  labels=["component", "state"])
            for name, state in sorted(s.components.items()):
                g.add_metric([name, state], 1.0 if state in ("ok", "disabled") else 0.0)
            yield g


class Metrics:
    # the events :meth:`on_event` counts (what to observe it for)
    EVENTS: tuple[type[Event], ...] = (TurnFinished, Reconnecting, ToolCallFinished,
                                       FeedbackGiven, OtaChanged, WakeWordDetected)

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.snapshot = Snapshot()
        self.turn_latency = Histogram(
            "edged_turn_latency_seconds",
            "From end of user speech (or text sent) to the first reply audio/text",
            ["kind"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.turns = Counter(
            "edged_turns", "Finished turns, by kind (voice, text) and by what opened them (wake, "
            "follow_up, listen, barge_in, vad, text)", ["kind", "trigger"],
            registry=self.registry)
        self.wakes = Counter("edged_wake_word_detections", "Wake word detections, by model",
                             ["model"], registry=self.registry)
        self.reconnects = Counter(
            "edged_live_reconnects", "Live session reconnects, by close code (or goaway, "
            "reconfigure, stall, network, config, error when there was none)",
            ["code"], registry=self.registry)
        self.tool_calls = Counter("edged_tool_calls", "Tool calls answered, by outcome",
                                  ["tool", "outcome"], registry=self.registry)
        self.tool_duration = Histogram("edged_tool_call_duration_seconds", "Tool call duration",
                                       ["tool"], buckets=TOOL_BUCKETS, registry=self.registry)
        self.feedback = Counter("edged_feedback", "Turn ratings given with edgectl feedback",
                                ["rating"], registry=self.registry)
        self.ota_bundles = Counter(
            "edged_ota_bundles", "OTA bundles by what happened to them (trial: accepted and "
            "on trial; committed; rolled_back; rejected: refused, nothing changed)",
            ["result"], registry=self.registry)
        self.ota_version = Gauge("edged_ota_version", "OTA bundle version in effect (0: none)",
                                 registry=self.registry)
        self.ota_pending = Gauge("edged_ota_trial_pending",
                                 "1 while an OTA bundle is in its health window",
                                 registry=self.registry)
        self.registry.register(_SnapshotCollector(self))
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        self._http_addr: tuple[str, int] | None = None

    def on_event(self, ev: Event) -> None:
        """Event-bus observer: count what happened."""
        if isinstance(ev, TurnFinished):
            kind, latency = ev.record.kind, ev.record.latency_s
            if latency is not None:
                self.turn_latency.labels(kind).observe(latency)
            self.turns.labels(kind, ev.record.trigger or "none").inc()
        elif isinstance(ev, Reconnecting):
            self.reconnects.labels(_label(ev.cause)).inc()
        elif isinstance(ev, ToolCallFinished):
            tool = _label(ev.name)
            self.tool_calls.labels(tool, "ok" if ev.ok else "error").inc()
            self.tool_duration.labels(tool).observe(ev.duration_s)
        elif isinstance(ev, WakeWordDetected):
            self.wakes.labels(_label(ev.model)).inc()
        elif isinstance(ev, FeedbackGiven):
            self.feedback.labels(ev.rating).inc()
        elif isinstance(ev, OtaChanged):
            if ev.action != "loaded":
                self.ota_bundles.labels(ev.action).inc()
            self.ota_version.set(ev.current or 0)
            self.ota_pending.set(int(ev.pending))

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")

    def write_textfile(self, path: Path) -> None:
        """Atomic write (temp + rename in the same directory) for node_exporter."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)

    def apply_settings(self, settings: MetricsSettings) -> list[str]:
        """Serve ``/metrics`` as ``metrics.http_port``/``http_host`` say: start, move or stop
        the HTTP server. Raises OSError (the port is busy) with the old server already gone."""
        want = None if settings.http_port is None else (settings.http_host, settings.http_port)
        if want == self._http_addr:
            return []
        self.stop_http()
        if want is not None:
            server, thread = _start_http_server(want[1], addr=want[0], registry=self.registry)
            self._http, self._http_addr = (server, thread), want
            host, port = server.server_address[:2]
            log.info("metrics: serving http://%s:%d/metrics", host, port)
        return []

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where ``/metrics`` is served (``None``: not served)."""
        if self._http is None:
            return None
        host, port = self._http[0].server_address[:2]
        return str(host), int(port)

    def stop_http(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = self._http_addr = None
