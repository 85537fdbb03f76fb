"""Gemini Live simulator: a local TLS WebSocket server speaking BidiGenerateContent.

Why: edged must be tested against the *real* google-genai SDK without internet. The simulator
follows every wire rule of docs/simulator.md (TLS with its own CA, any v1/v1alpha/
v1beta(1) API-key or Vertex path, ``setupComplete`` first, snake→camel normalisation at every
depth, URL-safe or standard base64, camelCase binary frames, errors only as close frames with a
≤123-byte reason, frames < 1 MiB, pongs) and records everything the client sent.

Use::

    async with LiveSimulator(Scenario(rules=[...])) as sim:
        client = genai.Client(api_key="test", http_options=types.HttpOptions(
            base_url=sim.base_url, async_client_args={"ssl": sim.client_ssl_context()}))
        ...
        sim.connections[0].messages      # normalised client messages, blobs as bytes
        sim.messages("realtimeInput")    # [(connection index, {"realtimeInput": {...}}), ...]
        await sim.wait_for(lambda s: len(s.connections) == 2, timeout=5)
        sim.errors                       # protocol violations by the client (wrong tool id...)
        sim.images()                     # realtime images received (mime, bytes, size, and the
                                         #   function calls pending when each arrived)

Scenario format (dataclasses here, the same shape in TOML/JSON for ``edged-sim --scenario``)::

    language = "es"            # reply language and espeak-ng voice ("en" for English)
    speed = 4.0                # reply audio pacing, x real time
    chunk_ms = 80              # reply audio per message
    transcripts = ["¿Qué dice la guía de gobernanza de MLOps?"]   # n-th audio turn's text
    models = ["gemini-3.8-live"]   # accepted models; others close 1008 at setup

    [[rules]]                  # first matching rule wins; unmatched turns run `fallback`
    on = "turn"                # "setup" (before setupComplete) | "ready" (after it) | "turn"
    match = "tiempo"           # regex on the turn text (typed, or scripted transcript)
    turn = 1                   # optional: 1-based user turn on this connection
    connection = 0             # optional: 0-based connection index
    source = "text"            # optional: "text" | "audio"
    via = "activity_end"       # optional: client_content | realtime_text | activity_end |
                               #   server_vad | audio_stream_end
    once = true                # optional: fire once per simulator
    actions = [
      {do = "tool_call", name = "get_weather", args = {city = "{user_text}"}},
      {do = "reply", text = "Hace sol, dice {tool_result}"},
    ]

Actions: ``reply`` (text, parts, tone_seconds), ``tool_call`` (name, args, wait, timeout, id),
``tool_calls`` (calls: a list of tool_call tables, sent in one message), ``cancel_tool_calls``,
``go_away`` (time_left, close_code, close_reason), ``close`` (code, reason), ``drop``,
``stall`` (seconds), ``sleep`` (seconds), ``assistant`` (the default demo answer). The
default fallback is ``[Assistant()]``. A turn that produced output ends with
``generationComplete`` then ``turnComplete``; barge-in (``activityStart``, or speech detected by
the server-VAD emulation when automatic activity detection is on) cancels it with
``interrupted`` then ``turnComplete`` (and ``toolCallCancellation`` for pending calls).

The simulator does no speech recognition: audio turns take their text from
``Scenario.transcripts`` in order, then ``default_transcript``.
"""

from edged_testing.sim.scenario import (
    Action,
    Assistant,
    CancelToolCalls,
    Close,
    Drop,
    GoAway,
    Reply,
    Rule,
    Scenario,
    Sleep,
    Stall,
    ToolCall,
    ToolCalls,
)
from edged_testing.sim.server import LiveSimulator
from edged_testing.sim.state import ConnectionRecord, ImageRecord, SessionState, TurnContext

__all__ = [
    "Action", "Assistant", "CancelToolCalls", "Close", "ConnectionRecord", "Drop", "GoAway",
    "ImageRecord", "LiveSimulator", "Reply", "Rule", "Scenario", "SessionState", "Sleep", "Stall",
    "ToolCall", "ToolCalls", "TurnContext",
]
