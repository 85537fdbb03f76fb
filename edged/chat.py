"""``edged chat``: a terminal conversation through the same Live supervisor the daemon uses.

Like Google's text-to-text Live sample (``User>`` prompt, reply streamed as it arrives, memory
across turns because it is one Live session), but reconnects, goAways and resumption are
handled by :class:`~edged.live.LiveSession`, so a dropped link mid-conversation keeps the
conversation. AUDIO modality writes each reply to ``<wav-dir>/reply-NNN.wav`` (24 kHz) and
prints the output transcription.

stdin is read by a daemon thread (``readline`` blocks, and a thread in the default executor
would keep the process alive after Ctrl-C), so piped input works and the event loop never
blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from pathlib import Path
from typing import TextIO

from edged.config import Settings
from edged.device_tools import device_tools
from edged.events import LIVE_EVENTS
from edged.formats import REPLY_RATE, seconds, write_wav
from edged.live import LiveConfigError, LiveSession, LiveUnavailable
from edged.live.reply import LinkLost, Reply, ReplyWords, stream_reply
from edged.tools import ToolRegistry

REPLY_TIMEOUT_S = 120.0   # a reply that never completes (even across reconnects) ends the turn
EXIT_WORDS = {"exit", "quit"}


def _stdin_lines(loop: asyncio.AbstractEventLoop, stream: TextIO) -> asyncio.Queue[str | None]:
    """Lines from ``stream`` as they are typed; ``None`` at EOF (Ctrl-D / end of the pipe)."""
    q: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        for line in iter(stream.readline, ""):
            loop.call_soon_threadsafe(q.put_nowait, line)
        loop.call_soon_threadsafe(q.put_nowait, None)

    threading.Thread(target=reader, name="chat-stdin", daemon=True).start()
    return q


async def _reply(events: asyncio.Queue[object], out: TextIO) -> bytes:
    """Print one streamed reply until the turn completes; returns its audio (AUDIO modality)."""
    audio = b""
    async for item in stream_reply(events, REPLY_TIMEOUT_S):
        if isinstance(item, ReplyWords):
            out.write(item.text)
        elif isinstance(item, LinkLost):
            out.write(" [link lost; reconnecting, the question will be re-sent] ")
        elif isinstance(item, Reply):
            audio = item.audio
        out.flush()
    return audio


async def run_chat(settings: Settings, lines: asyncio.Queue[str | None], out: TextIO,
                   wav_dir: Path, tools: ToolRegistry | None = None,
                   echo_input: bool = False) -> int:
    """The chat loop; ``lines`` yields user lines and ``None`` at end of input."""
    audio = settings.gemini.response_modality == "AUDIO"
    if audio:
        await asyncio.to_thread(wav_dir.mkdir, parents=True, exist_ok=True)
    live = LiveSession(settings, tools or ToolRegistry(settings.tools.timeout_s))
    events = live.bus.subscribe(*LIVE_EVENTS)
    runner = asyncio.create_task(live.run())
    turn = 0
    try:
        await live.wait_ready(settings.session.connect_timeout_s + settings.session.text_wait_s)
        while True:
            out.write("User> ")
            out.flush()
            line = await lines.get()
            if line is None:
                out.write("\n")
                return 0
            text = line.strip()
            if echo_input:
                out.write(text + "\n")
            if text.lower() in EXIT_WORDS:
                return 0
            if not text:
                continue
            while not events.empty():      # late events of the previous turn
                events.get_nowait()
            turn += 1
            try:
                await live.send_text(text)
            except LiveConfigError:
                raise
            except LiveUnavailable as e:     # a long outage: say so, keep the chat open
                out.write(f"[not sent: {e}]\n")
                continue
            out.write("Model> ")
            try:
                pcm = await _reply(events, out)
            except TimeoutError:
                out.write(f"\n[no complete reply within {REPLY_TIMEOUT_S:g}s]\n")
                continue
            if audio:
                path = wav_dir / f"reply-{turn:03d}.wav"
                await asyncio.to_thread(write_wav, path, pcm, REPLY_RATE)
                out.write(f"\n  [audio {seconds(len(pcm), REPLY_RATE):.1f}s -> {path}]")
            out.write("\n")
            out.flush()
    except LiveUnavailable as e:
        print(f"edged chat: {e}", file=sys.stderr)
        return 1
    finally:
        await live.close()
        await runner


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of ``edged chat`` (wired in :mod:`edged.cli`, which loads ``settings``)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.modality:
        settings = settings.model_copy(update={
            "gemini": settings.gemini.model_copy(update={"response_modality": args.modality})})

    async def go() -> int:
        lines = _stdin_lines(asyncio.get_running_loop(), sys.stdin)
        return await run_chat(settings, lines, sys.stdout, args.wav_dir,
                              tools=device_tools(settings), echo_input=not sys.stdin.isatty())

    return asyncio.run(go())
