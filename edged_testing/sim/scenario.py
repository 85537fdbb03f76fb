"""Declarative scenarios for the Live simulator: rules triggered by client events run actions.

A scenario is data (dataclasses, or the same shape in TOML/JSON), so a test states *what the
server does* in a few lines and the simulator owns *how it looks on the wire*. The format is
documented in ``edged_testing/sim/__init__.py`` and docs/simulator.md.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edged_testing.sim.state import TurnContext

# Models the simulator accepts by default (the Live models listed for late 2026).
KNOWN_MODELS: tuple[str, ...] = (
    "gemini-3.8-live",
    "gemini-3.8-live-extended-thinking",
    "gemini-3.1-flash-live-preview",
    "gemini-2.5-flash-native-audio-preview-12-2025",
    "gemini-2.5-flash-native-audio-preview-09-2025",
    "gemini-live-2.5-flash-native-audio",
    "gemini-live-2.5-flash-preview-native-audio-09-2025",
)

Text = str | Callable[[TurnContext], str]


# --- actions ------------------------------------------------------------------------------


@dataclass
class Reply:
    """Model output in the session's modality, streamed in pieces.

    AUDIO sessions get 24 kHz s16le PCM (espeak-ng speech, or a tone without espeak-ng, or a
    tone when ``tone_seconds`` is set) paced at ``Scenario.speed`` × real time, plus
    ``outputTranscription`` fragments when the setup asked for them. TEXT sessions get the text
    in ``parts`` ``modelTurn`` messages. ``text`` is a ``str.format`` template over the
    TurnContext fields ({user_text}, {turn}, {history_turns}, {tool_result}, {tool_title},
    {tool_source}, {tool_heading}, {tool_text}, {tool_error}, and what images arrived during the
    turn: {image_count}, {image_bytes}, {image_size}, {image_mime} of the last one) or a callable
    taking the TurnContext. ``on_tool_error``: said instead when the last tool response was an
    error (a "no camera" answer rather than a description of an image that never came).
    """

    text: Text = ""
    parts: int = 3
    tone_seconds: float | None = None
    on_tool_error: Text | None = None   # said instead of ``text`` when the last tool failed


@dataclass
class ToolCall:
    """Send ``toolCall`` with one functionCall (generated id unless ``id``), then by default
    wait for the matching ``toolResponse``; its ``response`` becomes {tool_result} & co.
    A response with an unknown or missing id, or none within ``timeout`` seconds (default
    ``Scenario.tool_timeout``), is recorded in ``sim.errors`` and closes the connection 1008.
    """

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    wait: bool = True
    timeout: float | None = None
    id: str | None = None


@dataclass
class ToolCalls:
    """Several function calls in one ``toolCall`` message (parallel calls); each one waits
    (or not) as its ``ToolCall`` says, so the client must answer every id."""

    calls: list[ToolCall]


@dataclass
class CancelToolCalls:
    """Send ``toolCallCancellation`` for every call still waiting for a response."""


@dataclass
class GoAway:
    """Send ``goAway`` (timeLeft as a protobuf duration), then close after ``time_left``
    seconds with ``close_code``/``close_reason`` if the client has not left by then."""

    time_left: float = 5.0
    close_code: int = 1011
    close_reason: str = "Deadline expired before operation could complete."


@dataclass
class Close:
    """Close with a code and reason (the SDK raises APIError(code, reason))."""

    code: int = 1000
    reason: str = ""


@dataclass
class Drop:
    """Abort the TCP connection without a close frame (client sees 1006)."""


@dataclass
class Stall:
    """Stop sending and stop reading (so pings go unanswered); forever unless ``seconds``."""

    seconds: float | None = None


@dataclass
class Sleep:
    """Wait in wall-clock seconds (not scaled by ``Scenario.speed``)."""

    seconds: float


@dataclass
class Assistant:
    """The default demo assistant for this turn (see ``Scenario.default``).

    Echoes the question and says how many earlier user turns it remembers (history survives
    resumption); if the turn mentions gobernanza/governance/MLOps and the setup declared
    ``search_knowledge``, it first calls that tool and then cites the first result's title; if
    it asks what is in front of the user (``LOOK_RE``) and the setup declared ``look``, it calls
    that and answers from the image that arrived (or says why none could be taken).
    """


Action = (Reply | ToolCall | ToolCalls | CancelToolCalls | GoAway | Close | Drop | Stall | Sleep
          | Assistant)

ACTIONS: dict[str, type] = {
    "reply": Reply, "tool_call": ToolCall, "tool_calls": ToolCalls,
    "cancel_tool_calls": CancelToolCalls, "go_away": GoAway, "close": Close, "drop": Drop,
    "stall": Stall, "sleep": Sleep, "assistant": Assistant,
}

# --- rules --------------------------------------------------------------------------------

Trigger = Literal["setup", "ready", "turn"]
TurnVia = Literal["client_content", "realtime_text", "activity_end", "server_vad",
                  "audio_stream_end"]


@dataclass
class Rule:
    """When ``on`` happens (and every given condition holds), run ``actions`` in order.

    on: "setup" (setup received, before setupComplete: reject/stall the handshake),
        "ready" (right after setupComplete, in the background: goAway/drop after a sleep),
        "turn" (a user turn ended; a matching rule replaces the fallback reply).
    connection: 0-based index in ``sim.connections``.
    turn: 1-based user turn number on this connection.
    match: regex searched (case-insensitive) in the turn text (typed text, or the scripted
        transcript for audio turns).
    source: "text" or "audio". via: how the turn ended (see TurnVia).
    once: fire at most once per simulator.
    """

    on: Trigger = "turn"
    actions: list[Action] = field(default_factory=list)
    connection: int | None = None
    turn: int | None = None
    match: str | None = None
    source: Literal["text", "audio"] | None = None
    via: TurnVia | None = None
    once: bool = False

    def matches(self, on: str, connection: int, turn: int | None = None, text: str = "",
                source: str | None = None, via: str | None = None) -> bool:
        return (
            self.on == on
            and (self.connection is None or self.connection == connection)
            and (self.turn is None or self.turn == turn)
            and (self.match is None or re.search(self.match, text, re.IGNORECASE) is not None)
            and (self.source is None or self.source == source)
            and (self.via is None or self.via == via)
        )


@dataclass
class Scenario:
    """A simulator script: rules first, ``fallback`` for turns no rule matched.

    The simulator does no speech recognition: the text of the n-th audio turn (across all
    connections) is ``transcripts[n]``, or ``default_transcript`` once they run out. It is
    what rules match against and what ``inputTranscription`` carries.
    """

    rules: list[Rule] = field(default_factory=list)
    fallback: list[Action] = field(default_factory=lambda: [Assistant()])
    transcripts: list[str] = field(default_factory=list)
    default_transcript: str = "Hola, ¿me oyes bien?"
    language: str = "es"               # replies and espeak-ng voice; "en" for English
    speed: float = 4.0                 # reply audio pacing, × real time
    chunk_ms: int = 80                 # reply audio per message
    turn_complete_delay: float = 0.05  # between generationComplete and turnComplete
    tool_timeout: float = 10.0
    models: tuple[str, ...] = KNOWN_MODELS   # empty: accept any non-empty model
    vad_threshold_dbfs: float = -45.0  # server-VAD emulation: speech if a 10 ms window is louder
    vad_silence_ms: int = 500          # end of speech when the setup does not say
    usage: bool = True                 # usageMetadata with each turnComplete
    max_image_bytes: int = 7 * 2**20   # larger realtime images: close 1007 (docs/simulator.md)

    @classmethod
    def default(cls, transcripts: list[str] | None = None, language: str = "es") -> Scenario:
        """The demo assistant: every turn answered by ``Assistant``."""
        return cls(transcripts=list(transcripts or []), language=language)

    @classmethod
    def load(cls, path: Path) -> Scenario:
        """Read a scenario from a .toml or .json file (same shape as the dataclasses)."""
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"scenario {path}: cannot read: {e.strerror}") from e
        try:
            data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"scenario {path}: not valid {path.suffix[1:] or 'TOML'}: {e}") from e
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"scenario {path}: {e}") from e

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        kw = _check_keys(cls, data, "scenario", skip={"rules", "fallback"})
        if "models" in kw:
            kw["models"] = tuple(kw["models"])
        rules = []
        for i, r in enumerate(data.get("rules", [])):
            rk = _check_keys(Rule, r, f"rules[{i}]", skip={"actions"})
            acts = [_action(a, f"rules[{i}].actions[{j}]") for j, a in enumerate(r["actions"])]
            rules.append(Rule(actions=acts, **rk))
        if "fallback" in data:
            kw["fallback"] = [_action(a, f"fallback[{j}]") for j, a in enumerate(data["fallback"])]
        return cls(rules=rules, **kw)


def _check_keys(kind: type, data: Mapping[str, Any], where: str,
                skip: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table/object, got {type(data).__name__}")
    names = {f.name for f in fields(kind)}
    unknown = set(data) - names - {"do"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    required = {f.name for f in fields(kind)
                if f.default is MISSING and f.default_factory is MISSING}
    missing = required - set(data) - skip
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}")
    return {k: v for k, v in data.items() if k not in skip and k != "do"}


def _action(data: Mapping[str, Any], where: str) -> Action:
    kind = data.get("do") if isinstance(data, Mapping) else None
    if kind not in ACTIONS:
        raise ValueError(f"{where}: 'do' must be one of {sorted(ACTIONS)}, got {kind!r}")
    if kind == "tool_calls":
        _check_keys(ToolCalls, data, where)
        return ToolCalls([ToolCall(**_check_keys(ToolCall, c, f"{where}.calls[{i}]"))
                          for i, c in enumerate(data["calls"])])
    return ACTIONS[kind](**_check_keys(ACTIONS[kind], data, where))
