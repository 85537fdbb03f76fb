#!/usr/bin/env python3
"""Demo section "chat": `edged chat` against the local Gemini Live simulator.

Runs the real command (`python -m edged chat`, stdin piped, exactly what a user would type) twice
against an in-process `edged_testing.sim.LiveSimulator` speaking the real wire protocol:

1. TEXT modality, three questions. The simulator drops the TCP connection (no close frame) when
   the third question arrives; the supervisor resumes the session with its handle and re-sends
   the question, and the answer still remembers the name given in the first turn.
2. AUDIO modality, two questions: each spoken reply is written to demo-out/chat/reply-NNN.wav
   (24 kHz) and its output transcription is printed.

Exit 0 when both conversations behaved; otherwise non-zero with the reason.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import wave
from pathlib import Path

from edged.formats import REPLY_RATE, SAMPLE_BYTES
from edged_testing.sim import Drop, LiveSimulator, Rule, Scenario

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out" / "chat"

TEXT_QUESTIONS = ["Hola, me llamo Ana.", "¿Qué tiempo hace hoy en Madrid?",
                  "¿Recuerdas cómo me llamo?"]
AUDIO_QUESTIONS = ["Hola, soy Luis.", "¿Quién soy?"]


class DemoFailed(Exception):
    pass


async def chat(sim: LiveSimulator, modality: str, questions: list[str], cfg_dir: Path) -> str:
    """Run `edged chat` with the questions piped in; echo and return its stdout."""
    cfg = cfg_dir / "edged.toml"
    cfg.write_text(f'[gemini]\nbase_url = "{sim.base_url}"\nca_file = "{sim.ca_file}"\n'
                   'api_key = "demo-key-for-the-simulator"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}   # never send a real key
    env["NO_PROXY"] = "127.0.0.1,localhost"      # the child only: reach the loopback simulator
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edged", "chat", "--config", str(cfg),
        "--override", str(cfg_dir / "no-override.toml"), "--modality", modality,
        "--wav-dir", str(OUT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env=env, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(q + "\n" for q in questions).encode())
    proc.stdin.close()
    chunks: list[str] = []
    while chunk := await proc.stdout.read(256):
        text = chunk.decode(errors="replace")
        chunks.append(text)
        print(text, end="", flush=True)
    rc = await proc.wait()
    if rc != 0:
        raise DemoFailed(f"edged chat --modality {modality} exited with {rc}")
    return "".join(chunks)


def check_wav(path: Path) -> float:
    if not path.exists():
        raise DemoFailed(f"{path} was not written")
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (REPLY_RATE, 1, SAMPLE_BYTES):
            raise DemoFailed(f"{path}: expected 24 kHz mono 16-bit")
        if w.getnframes() == 0:
            raise DemoFailed(f"{path}: no audio")
        return w.getnframes() / REPLY_RATE


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("reply-*.wav"):
        old.unlink()
    scenario = Scenario(rules=[Rule(on="turn", connection=0, turn=3, actions=[Drop()])])
    with tempfile.TemporaryDirectory(prefix="edged-demo-chat-") as tmp:
        async with LiveSimulator(scenario) as sim:
            print(f"# simulator on {sim.base_url}\n\n## TEXT conversation "
                  "(the link drops when the 3rd question arrives)\n", flush=True)
            text = await chat(sim, "TEXT", TEXT_QUESTIONS, Path(tmp))
            if "Te llamas Ana" not in text:
                raise DemoFailed("the 3rd answer does not remember the name from turn 1")
            resumed = [c for c in sim.connections if c.resumed_handle]
            if sim.connections[0].closed_by != "drop" or not resumed:
                raise DemoFailed("expected a dropped connection followed by a resumed one")
            print(f"\n-> connection 0 dropped; connection {resumed[0].index} resumed the session "
                  "and the answer kept the conversation.\n\n## AUDIO conversation\n", flush=True)
            await chat(sim, "AUDIO", AUDIO_QUESTIONS, Path(tmp))
            if sim.errors:
                raise DemoFailed(f"the simulator saw protocol errors: {sim.errors}")
    for n in range(1, len(AUDIO_QUESTIONS) + 1):
        path = OUT / f"reply-{n:03d}.wav"
        print(f"-> {path.relative_to(ROOT)}: {check_wav(path):.1f} s of reply audio")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except DemoFailed as e:
        print(f"demo_chat: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    print("demo_chat: OK")
