"""Tool registry: function declarations for the Live setup, and safe dispatch of tool calls.

The one rule that matters: every ``functionCall`` id gets exactly one ``functionResponse``. A
missing response silences the model with no error (docs/live-session.md), so
:meth:`ToolRegistry.call` never raises for a tool's failure: bad arguments, an exception or a
timeout all become an error payload the model can read and recover from. Only cancellation
(``toolCallCancellation``) propagates, because then the server no longer wants an answer.

An error payload is ``{"error": text, "retryable": bool, "advice": text}``:

* ``error`` is at most ``ERROR_MAX_CHARS`` characters and never echoes an argument back whole
  (a 100 KB invalid argument must not become a 100 KB response);
* ``retryable`` and ``advice`` tell the model whether calling again can help - a model that is
  not told tends to repeat a failed call several times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
from google.genai import types

from edged.redact import describe_error, redact
from edged.text import clean_strings

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

ERROR_MAX_CHARS = 300
ECHO_MAX_CHARS = 40          # longest piece of an argument quoted back in an error

RETRY_ADVICE = "Calling again with the same arguments may work."
NO_RETRY_ADVICE = "Calling again with the same arguments will fail the same way."


class ToolError(Exception):
    """A failure the model should be told about in words (e.g. "index not available");
    ``retryable``: whether the same call may succeed later."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def clip(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text)} characters)"
    return text[:max(0, limit - len(note))] + note


def error_payload(message: str, retryable: bool, advice: str | None = None) -> dict[str, Any]:
    """The response the model gets for a failed call (see the module doc)."""
    return {"error": clip(message), "retryable": retryable,
            "advice": advice or (RETRY_ADVICE if retryable else NO_RETRY_ADVICE)}


def _schema_problem(e: jsonschema.ValidationError) -> str:
    """A validation error in words, quoting at most ``ECHO_MAX_CHARS`` of the bad value."""
    where = "/".join(str(p) for p in e.absolute_path) or "arguments"
    full = repr(e.instance)
    short = clip(full, ECHO_MAX_CHARS)
    return clip(f"{where}: {e.message.replace(full, short)}")


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]   # JSON schema of the arguments object
    handler: Handler

    def declaration(self) -> types.FunctionDeclaration:
        return types.FunctionDeclaration(
            name=self.name, description=self.description, parameters_json_schema=self.parameters)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What one call produced: the response payload for the model plus facts for metrics."""

    response: dict[str, Any]
    ok: bool
    duration_s: float
    error: str | None = None


class ToolRegistry:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        self._tools[tool.name] = tool

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def declarations(self) -> list[types.Tool]:
        """The ``tools`` entry of the Live setup (empty when nothing is registered)."""
        if not self._tools:
            return []
        return [types.Tool(function_declarations=[t.declaration() for t in self._tools.values()])]

    async def call(self, name: str, args: dict[str, Any] | None) -> ToolOutcome:
        """Run one tool call to completion; never raises except ``CancelledError``."""
        start = time.monotonic()

        def fail(msg: str, retryable: bool, advice: str | None = None) -> ToolOutcome:
            payload = error_payload(redact(msg), retryable, advice)   # may carry the key
            return ToolOutcome(payload, False, time.monotonic() - start, payload["error"])

        tool = self._tools.get(name)
        if tool is None:
            return fail(f"unknown tool {clip(repr(name), ECHO_MAX_CHARS)}", False,
                        f"Available tools: {', '.join(self.names) or 'none'}.")
        args = {} if args is None else args
        if not isinstance(args, dict):
            return fail(f"arguments for {name} must be a JSON object, got "
                        f"{type(args).__name__}", False, "Call again with an object of "
                        "arguments as the declaration describes.")
        args = clean_strings(args)     # the boundary for the model's text (edged.text)
        try:
            jsonschema.validate(args, tool.parameters)
        except jsonschema.ValidationError as e:
            return fail(f"invalid arguments for {name}: {_schema_problem(e)}", False,
                        "Call again only with corrected arguments.")
        try:
            result = await asyncio.wait_for(tool.handler(args), self.timeout_s)
        except TimeoutError:
            log.warning("tool %s timed out after %.1fs", name, self.timeout_s)
            return fail(f"{name} did not answer within {self.timeout_s:g} s", True)
        except ToolError as e:
            return fail(f"{name}: {e}", e.retryable)
        except Exception as e:
            log.exception("tool %s failed", name)
            return fail(f"{name} failed: {describe_error(e)}", False)
        return ToolOutcome(result, True, time.monotonic() - start)
