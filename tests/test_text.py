"""Untrusted text is cleaned once where it enters - tool arguments, control requests - so a lone
surrogate or U+FDFA never reaches the embedder, SQLite or the Live socket as it came."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from test_daemon import start_daemon, stop

from edged.text import clean_strings, clean_text
from edged.tools import Tool, ToolRegistry
from edged_testing.sim import LiveSimulator, Reply, Rule, Scenario


@pytest.mark.parametrize(("raw", "clean"), [
    ("\ud800", "\ufffd"),                         # lone high surrogate
    ("x\udcffy", "x\ufffdy"),                     # what surrogateescape makes of a bad byte
    ("\ud83d\ude00", "😀"),                       # a proper pair joins
    ("\ufdfa", "صلى الله عليه وسلم"),               # NFKC: letters the embedder knows
    ("ﬁesta", "fiesta"),
    ("ＭＬＯｐｓ", "MLOps"),
    ("e\u0301", "é"),                              # composed, as the index stores it
    ("a\r\nb\rc\x00d\x07e\x85f\tg", "a\nb\ncdef\tg"),
    ("\ufeff\ufdd0\ufffe\U0010ffffok", "ok"),
    ("¿Qué es la gobernanza?", "¿Qué es la gobernanza?"),
])
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean
    assert clean_text(clean) == clean              # idempotent
    clean.encode("utf-8")                          # always encodable


def test_clean_strings_walks_json() -> None:
    assert clean_strings({"q\ud800": ["\ufdfa", 1, None, {"k": "ﬁ"}]}) == {
        "q\ufffd": ["صلى الله عليه وسلم", 1, None, {"k": "fi"}]}


async def test_tool_arguments_are_cleaned_before_validation_and_handler() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        json.dumps(args).encode("utf-8")
        return {"ok": True}

    reg = ToolRegistry(timeout_s=5)
    reg.register(Tool("search", "d", {
        "type": "object", "properties": {"query": {"type": "string", "maxLength": 20}},
        "required": ["query"], "additionalProperties": False}, handler))
    out = await reg.call("search", {"query": "\ud800 \ufdfa"})
    assert out.ok and seen == [{"query": "\ufffd صلى الله عليه وسلم"}]
    # limits apply to the cleaned text (NFKC can make it longer)
    out = await reg.call("search", {"query": "\ufdfa\ufdfa"})
    assert not out.ok and "is too long" in out.response["error"]


async def test_a_question_with_a_lone_surrogate_reaches_the_model_as_valid_text(
        tmp_path: Path, index_dirs: Path) -> None:
    scenario = Scenario(language="es", speed=20.0, rules=[
        Rule(match="hola", actions=[Reply(text="Te leo bien.")])])
    async with LiveSimulator(scenario) as sim:
        d, alsa = await start_daemon(tmp_path, sim, index_dirs)
        try:
            await d.notify.wait_for(lambda m: "READY=1" in m.splitlines())
            await d.wait_status(lambda s: s["session"]["state"] == "ready")
            # JSON can carry what UTF-8 cannot: "\ud800" arrives as a lone surrogate
            reader, writer = await asyncio.open_unix_connection(str(d.socket_path))
            writer.write(b'{"v":1,"id":1,"method":"ask",'
                         b'"params":{"text":"hola \\ud800 \\ufdfa"}}\n')
            while True:
                msg = json.loads(await asyncio.wait_for(reader.readline(), 60))
                if not msg.get("partial"):
                    break
            writer.close()
            assert msg["ok"] is True, msg
            assert msg["result"]["user"] == "hola \ufffd صلى الله عليه وسلم"
            assert "Te leo bien" in msg["result"]["model"]
            sent = [json.dumps(m, ensure_ascii=False) for _, m in sim.messages("clientContent")]
            assert any("hola \ufffd صلى الله عليه وسلم" in m for m in sent)
            assert sim.errors == []
        finally:
            await stop(d, alsa)
