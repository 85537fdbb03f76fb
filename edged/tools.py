"""Tool registry: function declarations for the Live setup, and safe dispatch of tool calls.

The one rule that matters: every ``functionCall`` id gets exactly one ``functionResponse``. A
missing response silences the model with no error (docs/live-session.md), so
:meth:`ToolRegistry.call` never raises for a tool's failure: bad arguments, an exception or a
timeout all become an ``{"error": ...}`` payload the model can read and recover from. Only
cancellation (``toolCallCancellation``) propagates, because then the server no longer wants an
answer.
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

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ToolError(Exception):
    """A failure the model should be told about in words (e.g. "index not available")."""


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

        def fail(msg: str) -> ToolOutcome:
            return ToolOutcome({"error": msg}, False, time.monotonic() - start, msg)

        tool = self._tools.get(name)
        if tool is None:
            return fail(f"unknown tool {name!r}; available: {', '.join(self.names) or 'none'}")
        args = args or {}
        try:
            jsonschema.validate(args, tool.parameters)
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "arguments"
            return fail(f"invalid arguments for {name}: {where}: {e.message}")
        try:
            result = await asyncio.wait_for(tool.handler(args), self.timeout_s)
        except TimeoutError:
            log.warning("tool %s timed out after %.1fs", name, self.timeout_s)
            return fail(f"{name} did not answer within {self.timeout_s:g} s")
        except ToolError as e:
            return fail(f"{name}: {e}")
        except Exception as e:
            log.exception("tool %s failed", name)
            return fail(f"{name} failed: {type(e).__name__}: {e}")
        return ToolOutcome(result, True, time.monotonic() - start)
