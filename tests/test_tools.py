"""Tool registry: every call ends in exactly one response payload, errors included."""

import asyncio
from typing import Any

import pytest

from edged.tools import Tool, ToolError, ToolRegistry

SCHEMA = {"type": "object", "properties": {"q": {"type": "string", "minLength": 1}},
          "required": ["q"], "additionalProperties": False}


def registry(handler: Any, timeout_s: float = 1.0) -> ToolRegistry:
    r = ToolRegistry(timeout_s)
    r.register(Tool("lookup", "look something up", SCHEMA, handler))
    return r


async def echo(args: dict[str, Any]) -> dict[str, Any]:
    return {"answer": args["q"].upper()}


async def test_ok_call_returns_result() -> None:
    out = await registry(echo).call("lookup", {"q": "hola"})
    assert out.ok and out.response == {"answer": "HOLA"}


@pytest.mark.parametrize("args, needle", [
    ({}, "'q' is a required property"),
    ({"q": 3}, "q: 3 is not of type 'string'"),
    ({"q": "x", "extra": 1}, "Additional properties are not allowed"),
    (None, "'q' is a required property"),
])
async def test_bad_arguments_become_error_response(args: Any, needle: str) -> None:
    out = await registry(echo).call("lookup", args)
    assert not out.ok and needle in out.response["error"]


async def test_unknown_tool_is_an_error_response() -> None:
    out = await registry(echo).call("nope", {})
    assert not out.ok and "unknown tool 'nope'" in out.response["error"]


async def test_exception_and_tool_error_become_error_response() -> None:
    async def boom(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    async def polite(args: dict[str, Any]) -> dict[str, Any]:
        raise ToolError("index not available")

    assert "RuntimeError: disk on fire" in (await registry(boom).call("lookup", {"q": "a"})).error
    assert (await registry(polite).call("lookup", {"q": "a"})).error == \
        "lookup: index not available"


async def test_timeout_becomes_error_response() -> None:
    async def slow(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    out = await registry(slow, timeout_s=0.05).call("lookup", {"q": "a"})
    assert not out.ok and "did not answer within 0.05 s" in out.error


def test_declarations_carry_json_schema() -> None:
    decl = registry(echo).declarations()[0].function_declarations[0]
    assert decl.name == "lookup" and decl.parameters_json_schema == SCHEMA


def test_invalid_schema_rejected_at_registration() -> None:
    with pytest.raises(Exception, match="is not valid"):
        ToolRegistry(1).register(Tool("t", "d", {"type": "nonsense"}, echo))
