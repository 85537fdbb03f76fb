"""One simulated Live connection: handshake, read loop, turn detection, reply tasks.

The read loop never blocks on model output: a turn's reply runs in its own task, so the loop
keeps seeing barge-in (activityStart, server-VAD speech) and ``toolResponse`` while a reply
streams. Everything the client sends is recorded normalised (camelCase keys, blobs decoded).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from edged.camera.jpeg import jpeg_size
from edged.formats import CAPTURE_RATE, REPLY_RATE
from edged_testing import speech
from edged_testing.sim import wire
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
from edged_testing.sim.state import (
    ConnectionRecord,
    ImageRecord,
    SessionState,
    TurnContext,
    first_hit,
    remembered_name,
)
from edged_testing.sim.vad import EnergyVad

log = logging.getLogger("edged_testing.sim")

OUT_RATE = REPLY_RATE
OUT_MIME = f"audio/pcm;rate={OUT_RATE}"
MAX_CHUNK_BYTES = 512 * 1024   # raw audio per message: ~683 KiB as base64, under the 1 MiB cap
SETUP_TIMEOUT = 30.0
# The image types Gemini accepts, by their magic bytes (docs/simulator.md, "Images").
IMAGE_MAGIC: dict[str, tuple[int, bytes]] = {
    "image/jpeg": (0, b"\xff\xd8\xff"), "image/png": (0, b"\x89PNG\r\n\x1a\n"),
    "image/webp": (8, b"WEBP"), "image/heic": (4, b"ftyp"), "image/heif": (4, b"ftyp"),
}
# What the default assistant takes as "look at this" (Spanish and English).
LOOK_RE = re.compile(
    r"qu[eé] tengo delante|qu[eé] estoy mirando|qu[eé] ves|l[eé]eme|cartel|cu[aá]nto cuesta|"
    r"what am i looking at|what'?s in front of me|what do you see|read (?:this|that)|"
    r"how much is this", re.IGNORECASE)


class _Stop(Exception):
    """The connection ended (closed, dropped) while actions were running."""


@functools.lru_cache(maxsize=64)
def _speech(text: str, voice: str) -> bytes:
    return speech.synthesize(text, voice, rate=OUT_RATE)


def _voice(language: str) -> str:
    return "en-us" if language.lower().startswith("en") else language.split("-")[0].lower()

class SimHost(Protocol):
    """What a connection needs from the simulator that owns it (``LiveSimulator``)."""

    scenario: Scenario
    sessions: dict[str, SessionState]
    record_audio: bool
    max_frame_bytes: int

    def error(self, conn: int, text: str) -> None: ...
    def rules(self, on: str, **kw: Any) -> Rule | None: ...
    def next_transcript(self) -> str: ...
    def new_id(self, prefix: str) -> str: ...
    def issue_handle(self, session: SessionState) -> str: ...
    def resume(self, handle: str) -> SessionState | None: ...


class Connection:
    """One client socket: handshake, read loop, turn detection, reply tasks."""

    def __init__(self, sim: SimHost, ws: ServerConnection, record: ConnectionRecord,
                 version: str) -> None:
        self.sim, self.ws, self.record, self.version = sim, ws, record, version
        self.sc = sim.scenario
        self.session: SessionState | None = None
        self.turns = 0
        self.reply_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.cancelled: set[str] = set()
        self.answered: set[str] = set()
        self.running = asyncio.Event()
        self.running.set()
        self.resumable_updates = False
        self.seeding = False
        self.in_activity = False
        self.vad: EnergyVad | None = None
        self.modality = "AUDIO"
        self.interrupts = True
        self.input_transcription = self.output_transcription = False
        self.tool_names: set[str] = set()
        self.language = self.sc.language
        self.images_waiting: list[ImageRecord] = []   # arrived since the last turn ended
        self.reply_images: list[ImageRecord] = []     # the replying turn's (ctx.images)

    # --- sending ---------------------------------------------------------------------------

    async def send(self, msg: dict[str, Any]) -> None:
        await self.running.wait()   # a stalled connection sends nothing
        frame = wire.encode_frame(msg)
        self.sim.max_frame_bytes = max(self.sim.max_frame_bytes, len(frame))
        self.record.sent.append(msg if self.sim.record_audio else strip_bytes(msg))
        try:
            await self.ws.send(frame)
        except ConnectionClosed as e:
            raise _Stop from e

    async def close(self, code: int, reason: str) -> None:
        if self.record.closed_by is None:
            self.record.close_code, self.record.close_reason = code, wire.clip_reason(reason)
            self.record.closed_by = "server"
        await self.ws.close(code, wire.clip_reason(reason))

    def drop(self) -> None:
        if self.record.closed_by is None:
            self.record.close_code, self.record.close_reason = 1006, "dropped (no close frame)"
            self.record.closed_by = "drop"
        self.ws.transport.abort()

    def abort_if_stalled(self) -> None:
        if not self.running.is_set():
            self.ws.transport.abort()

    async def fail(self, text: str, code: int = 1008) -> None:
        """A client protocol error: record it loudly and close with a reason naming it."""
        self.sim.error(self.record.index, text)
        await self.close(code, text)
        raise _Stop

    # --- handshake and read loop -----------------------------------------------------------

    async def run(self) -> None:
        try:
            if not await self.handshake():
                return
            async for raw in self.ws:
                await self.on_message(raw)
        except (_Stop, ConnectionClosed):
            pass

    async def handshake(self) -> bool:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), SETUP_TIMEOUT)
        except TimeoutError:
            await self.close(1008, "No setup message received.")
            return False
        msg = await self.parse(raw)
        setup = msg.get("setup")
        if not isinstance(setup, dict):
            await self.fail(f"first message must be setup, got {sorted(msg)}", 1007)
        self.record.setup = setup
        model = wire.model_id(str(setup.get("model", "")))
        if not model or (self.sc.models and model not in self.sc.models):
            await self.close(1008, f"models/{model} is not found for API version {self.version}, "
                                   "or is not supported for bidiGenerateContent. Call ListModels "
                                   "to see the list of available models and their supported "
                                   "methods.")
            return False
        self.configure(setup)
        resumption = setup.get("sessionResumption")
        handle = resumption.get("handle") if isinstance(resumption, dict) else None
        if handle:
            self.session = self.sim.resume(handle)
            if self.session is None:
                await self.close(1008, "Session resumption handle is invalid or expired.")
                return False
            if self.session.model != model:
                await self.close(1007, f"Session resumption cannot change the model "
                                       f"({self.session.model} -> {model}).")
                return False
            self.record.resumed_handle = handle
        else:
            self.session = SessionState(self.sim.new_id("s"), model)
            self.sim.sessions[self.session.id] = self.session
        self.record.session_id = self.session.id
        rule = self.sim.rules("setup", connection=self.record.index)
        if rule is not None:
            await self.run_actions(rule.actions, self.context("", "text", "setup"))
        await self.send({"setupComplete": {}})
        if self.resumable_updates:
            await self.resumption_update()
        rule = self.sim.rules("ready", connection=self.record.index)
        if rule is not None:
            self.spawn(self.run_actions(rule.actions, self.context("", "text", "ready")))
        return True

    def configure(self, setup: dict[str, Any]) -> None:
        gen = setup.get("generationConfig") or {}
        modalities = gen.get("responseModalities") or ["AUDIO"]
        self.modality = str(modalities[0]).upper()
        lang = ((gen.get("speechConfig") or {}).get("languageCode")) or ""
        if lang:
            self.language = lang
        self.resumable_updates = "sessionResumption" in setup
        self.input_transcription = "inputAudioTranscription" in setup
        self.output_transcription = "outputAudioTranscription" in setup
        self.seeding = bool((setup.get("historyConfig") or {}).get("initialHistoryInClientContent"))
        for tool in setup.get("tools") or []:
            for decl in tool.get("functionDeclarations") or []:
                self.tool_names.add(str(decl.get("name")))
        ric = setup.get("realtimeInputConfig") or {}
        aad = ric.get("automaticActivityDetection") or {}
        self.interrupts = ric.get("activityHandling", "START_OF_ACTIVITY_INTERRUPTS") != \
            "NO_INTERRUPTION"
        if not aad.get("disabled", False):
            self.vad = EnergyVad(self.sc.vad_threshold_dbfs,
                                 int(aad.get("silenceDurationMs") or self.sc.vad_silence_ms))

    async def parse(self, raw: str | bytes) -> dict[str, Any]:
        try:
            msg = json.loads(raw)
            if not isinstance(msg, dict):
                raise ValueError("not a JSON object")
            msg = wire.decode_blobs(wire.normalise(msg))
        except ValueError as e:
            await self.fail(f"unparseable client message: {e}", 1007)
        self.sim.record(self.record, msg if self.sim.record_audio else strip_bytes(msg))
        return msg

    async def on_message(self, raw: str | bytes) -> None:
        msg = await self.parse(raw)
        if "realtimeInput" in msg:
            await self.on_realtime(msg["realtimeInput"])
        elif "clientContent" in msg:
            await self.on_client_content(msg["clientContent"])
        elif "toolResponse" in msg:
            await self.on_tool_response(msg["toolResponse"])
        elif "setup" in msg:
            await self.fail("setup sent twice on one connection", 1007)
        # contextUpdate and unknown keys are recorded and otherwise ignored.

    async def on_realtime(self, body: dict[str, Any]) -> None:
        blobs = [body[k] for k in ("audio",) if isinstance(body.get(k), dict)]
        blobs += [b for b in body.get("mediaChunks") or [] if isinstance(b, dict)]
        for blob in blobs:
            mime = str(blob.get("mimeType", ""))
            if mime.startswith("audio/") and isinstance(blob.get("data"), bytes):
                await self.on_audio(blob["data"], _rate(mime))
            elif mime.startswith("image/"):
                await self.on_image(blob)
        if isinstance(body.get("video"), dict):
            await self.on_image(body["video"])
        if "activityStart" in body:
            self.in_activity = True
            await self.barge_in()
        if "activityEnd" in body:
            if not self.in_activity:
                log.warning("connection %d: activityEnd without activityStart ignored",
                            self.record.index)
            else:
                self.in_activity = False
                await self.end_turn("audio", "activity_end", self.sim.next_transcript())
        if body.get("audioStreamEnd") and self.vad is not None and self.vad.flush():
            await self.end_turn("audio", "audio_stream_end", self.sim.next_transcript())
        text = body.get("text")
        if isinstance(text, str) and text.strip():
            await self.end_turn("text", "realtime_text", text)

    async def on_image(self, blob: dict[str, Any]) -> None:
        """A still (``realtimeInput.video``): checked as the API does, then recorded and made
        available to the turn being answered (``TurnContext.images``)."""
        mime = str(blob.get("mimeType", ""))
        data = blob.get("data")
        if mime not in IMAGE_MAGIC:
            await self.fail(f"unsupported mime type {mime!r} for realtime video input; "
                            f"images must be one of {', '.join(IMAGE_MAGIC)}", 1007)
        if not isinstance(data, bytes) or not data:
            await self.fail("realtime video input without image data", 1007)
        assert isinstance(data, bytes)
        if len(data) > self.sc.max_image_bytes:
            await self.fail(f"image of {len(data)} bytes exceeds the {self.sc.max_image_bytes} "
                            "byte limit", 1007)
        offset, magic = IMAGE_MAGIC[mime]
        if data[offset:offset + len(magic)] != magic:
            await self.fail(f"image data is not a valid {mime}", 1007)
        width, height = (jpeg_size(data) if mime == "image/jpeg" else _png_size(data)
                         if mime == "image/png" else None) or (None, None)
        image = ImageRecord(time.time(), mime, data, width, height, self.turns,
                            tuple(sorted(self.pending)))
        self.record.images.append(image)
        replying = self.reply_task is not None and not self.reply_task.done()
        (self.reply_images if replying else self.images_waiting).append(image)

    async def on_audio(self, pcm: bytes, rate: int) -> None:
        if self.vad is None:
            return
        for event in self.vad.feed(pcm, rate):
            if event == "start":
                await self.barge_in()
            else:
                await self.end_turn("audio", "server_vad", self.sim.next_transcript())

    async def on_client_content(self, body: dict[str, Any]) -> None:
        assert self.session is not None
        turns = [(str(t.get("role", "user")),
                  " ".join(str(p["text"]) for p in t.get("parts") or [] if "text" in p))
                 for t in body.get("turns") or []]
        complete = bool(body.get("turnComplete", False))
        if self.seeding or not complete:
            self.session.history += [{"role": r, "text": t} for r, t in turns]
            self.seeding = self.seeding and not complete
            return
        last = ""
        if turns and turns[-1][0] == "user":
            last = turns.pop()[1]
        self.session.history += [{"role": r, "text": t} for r, t in turns]
        await self.end_turn("text", "client_content", last)

    async def on_tool_response(self, body: dict[str, Any]) -> None:
        for fr in body.get("functionResponses") or []:
            fid = fr.get("id")
            fut = self.pending.pop(fid, None) if isinstance(fid, str) else None
            if fut is not None:
                self.answered.add(fid)
                if not fut.done():
                    fut.set_result(fr.get("response"))
            elif fid in self.answered:
                await self.fail(f"toolResponse id {fid!r} ({fr.get('name')}) was already answered")
            elif fid not in self.cancelled:
                await self.fail(f"toolResponse id {fid!r} ({fr.get('name')}) matches no pending "
                                f"functionCall (pending: {sorted(self.pending)})")

    # --- turns -----------------------------------------------------------------------------

    def context(self, text: str, source: str, via: str) -> TurnContext:
        assert self.session is not None
        return TurnContext(user_text=text, turn=self.turns, source=source, via=via,
                           history_turns=self.session.user_turns, connection=self.record.index,
                           session=self.session)

    async def barge_in(self) -> None:
        """The user started speaking: stop a streaming reply (START_OF_ACTIVITY_INTERRUPTS)."""
        task = self.reply_task
        if task is None or task.done() or not self.interrupts:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, _Stop):
            await task
        if self.pending:
            ids = sorted(self.pending)
            self.cancelled.update(ids)
            self.pending.clear()
            await self.send({"toolCallCancellation": {"ids": ids}})
        await self.send({"serverContent": {"interrupted": True}})
        await self.send({"serverContent": {"turnComplete": True}})
        if self.resumable_updates:
            await self.resumption_update()

    async def end_turn(self, source: str, via: str, text: str) -> None:
        assert self.session is not None
        await self.barge_in()   # a new turn while one streams replaces it (3.8 semantics)
        self.turns += 1
        ctx = self.context(text, source, via)
        ctx.images, self.images_waiting = self.images_waiting, []
        self.reply_images = ctx.images
        if source == "audio" and self.input_transcription:
            pieces = _split(text, 2)
            for i, piece in enumerate(pieces):
                last = {"finished": True} if i == len(pieces) - 1 else {}
                await self.send({"serverContent": {"inputTranscription": {"text": piece, **last}}})
        self.session.history.append({"role": "user", "text": text})
        rule = self.sim.rules("turn", connection=self.record.index, turn=self.turns, text=text,
                              source=source, via=via)
        log.info("connection %d turn %d (%s via %s): %r -> %s", self.record.index, self.turns,
                 source, via, text, "rule" if rule else "fallback")
        actions = rule.actions if rule is not None else self.sc.fallback
        previous = self.reply_task    # still running only under NO_INTERRUPTION: queue behind it
        self.reply_task = asyncio.create_task(self.reply(actions, ctx, previous))

    async def reply(self, actions: list[Action], ctx: TurnContext,
                    previous: asyncio.Task[None] | None = None) -> None:
        assert self.session is not None
        if previous is not None and not previous.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(previous)
        try:
            if self.resumable_updates:
                await self.send({"sessionResumptionUpdate": {"resumable": False}})
            said = await self.run_actions(actions, ctx)
            if said is not None:   # a turn with no model output (e.g. only sleeps) has no end
                await self.send({"serverContent": {"generationComplete": True}})
                self.session.history.append({"role": "model", "text": said})
                await asyncio.sleep(self.sc.turn_complete_delay)
                done: dict[str, Any] = {"serverContent": {"turnComplete": True}}
                if self.sc.usage:
                    prompt = sum(len(h["text"]) // 4 + 1 for h in self.session.history[:-1])
                    out = len(said) // 4 + 1
                    done["usageMetadata"] = {"promptTokenCount": prompt,
                                             "responseTokenCount": out,
                                             "totalTokenCount": prompt + out}
                await self.send(done)
            if self.resumable_updates:
                await self.resumption_update()
        except _Stop:
            pass

    async def resumption_update(self) -> None:
        assert self.session is not None
        await self.send({"sessionResumptionUpdate": {
            "newHandle": self.sim.issue_handle(self.session), "resumable": True}})

    def spawn(self, coro: Any) -> None:
        async def guarded() -> None:
            with contextlib.suppress(_Stop, ConnectionClosed):
                await coro
        task = asyncio.create_task(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- actions ---------------------------------------------------------------------------

    async def run_actions(self, actions: list[Action], ctx: TurnContext) -> str | None:
        """Run actions in order; return the model's text if any output was produced."""
        said: list[str] = []
        produced = False
        for action in actions:
            out = await self.run_action(action, ctx)
            if out is not None:
                produced = True
                if out:
                    said.append(out)
        return " ".join(said) if produced else None

    async def run_action(self, action: Action, ctx: TurnContext) -> str | None:
        match action:
            case Reply():
                text = action.text
                if action.on_tool_error is not None and ctx.tool_error is not None:
                    text = action.on_tool_error
                return await self.say(ctx.render(text), action.parts, action.tone_seconds)
            case ToolCall():
                await self.tool_call([action], ctx)
                return ""
            case ToolCalls():
                await self.tool_call(action.calls, ctx)
                return ""
            case CancelToolCalls():
                if self.pending:
                    ids = sorted(self.pending)
                    self.cancelled.update(ids)
                    for fid in ids:
                        self.pending.pop(fid).cancel()
                    await self.send({"toolCallCancellation": {"ids": ids}})
            case GoAway():
                await self.send({"goAway": {"timeLeft": wire.duration(action.time_left)}})
                self.spawn(self._expire(action))
            case Close():
                await self.close(action.code, action.reason)
                raise _Stop
            case Drop():
                self.drop()
                raise _Stop
            case Stall():
                await self.stall(action.seconds)
            case Sleep():
                await asyncio.sleep(action.seconds)
            case Assistant():
                return await self.assistant(ctx)
        return None

    async def _expire(self, action: GoAway) -> None:
        await asyncio.sleep(action.time_left)
        await self.close(action.close_code, action.close_reason)

    async def stall(self, seconds: float | None) -> None:
        self.running.clear()
        self.ws.transport.pause_reading()
        log.info("connection %d stalled", self.record.index)
        await (asyncio.Event().wait() if seconds is None else asyncio.sleep(seconds))
        self.running.set()
        self.ws.transport.resume_reading()

    async def tool_call(self, calls: list[ToolCall], ctx: TurnContext) -> None:
        """One ``toolCall`` message with every call; wait for the responses of those that
        wait (all in the same time budget). ``{tool_result}`` is the last call's response."""
        futs: list[tuple[str, ToolCall, asyncio.Future[Any]]] = []
        wire_calls = []
        for call in calls:
            fid = call.id or self.sim.new_id("function-call")
            args = {k: ctx.render(v) if isinstance(v, str) else v for k, v in call.args.items()}
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.pending[fid] = fut   # also without wait: CancelToolCalls or a late response
            futs.append((fid, call, fut))
            wire_calls.append({"id": fid, "name": call.name, "args": args})
        await self.send({"toolCall": {"functionCalls": wire_calls}})
        for fid, call, fut in futs:
            if not call.wait:
                continue
            timeout = call.timeout if call.timeout is not None else self.sc.tool_timeout
            try:
                ctx.tool_result = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                self.pending.pop(fid, None)
                await self.fail(f"no toolResponse for functionCall {fid} ({call.name}) "
                                f"within {timeout:g}s")

    async def say(self, text: str, parts: int, tone_seconds: float | None) -> str:
        if self.modality == "TEXT":
            pieces = _split(text, max(1, parts))
            for piece in pieces:
                await self.send({"serverContent": {"modelTurn": {
                    "role": "model", "parts": [{"text": piece}]}}})
                await asyncio.sleep(self.sc.chunk_ms / 1000 / self.sc.speed)
            return text
        pcm = await self._audio(text, tone_seconds)
        chunk = min(MAX_CHUNK_BYTES, max(2, OUT_RATE * 2 * self.sc.chunk_ms // 1000) // 2 * 2)
        n = max(1, -(-len(pcm) // chunk))
        words = _split(text, n) if self.output_transcription else []
        for i in range(n):
            if i < len(words) and words[i]:
                await self.send({"serverContent": {"outputTranscription": {"text": words[i]}}})
            data = pcm[i * chunk:(i + 1) * chunk]
            await self.send({"serverContent": {"modelTurn": {"role": "model", "parts": [
                {"inlineData": {"mimeType": OUT_MIME, "data": data}}]}}})
            await asyncio.sleep(len(data) / (2 * OUT_RATE) / self.sc.speed)
        return text

    async def _audio(self, text: str, tone_seconds: float | None) -> bytes:
        if tone_seconds is None and speech.available() and text.strip():
            return await asyncio.to_thread(_speech, text, _voice(self.language))
        seconds = tone_seconds if tone_seconds is not None else max(0.3, 0.06 * len(text))
        return speech.tone(seconds, OUT_RATE)

    async def assistant(self, ctx: TurnContext) -> str:
        en = self.language.lower().startswith("en")
        question = ctx.user_text.strip() or ("(nothing)" if en else "(nada)")
        short = question if len(question) <= 80 else question[:77] + "..."
        if re.search(r"gobernanza|governance|mlops", question, re.IGNORECASE) \
                and "search_knowledge" in self.tool_names:
            await self.tool_call([ToolCall("search_knowledge", {"query": question})], ctx)
            hit = first_hit(ctx.tool_result)
            if hit is None:
                text = ("I found nothing about that in the knowledge base." if en else
                        "No he encontrado nada sobre eso en la base de conocimiento.")
            else:
                title = hit.get("title") or hit.get("source")
                src = hit.get("source") or title
                snippet = str(hit.get("text", ""))[:160]
                text = (f"According to «{title}» ({src}): {snippet}" if en else
                        f"Según el documento «{title}» ({src}): {snippet}")
            return await self.say(text, 3, None)
        if LOOK_RE.search(question) and "look" in self.tool_names:
            return await self.say(await self.look(ctx, en), 3, None)
        n = ctx.history_turns
        text = (f"You said: «{short}». Earlier turns I remember: {n}." if en else
                f"Has dicho: «{short}». Turnos anteriores que recuerdo: {n}.")
        name = remembered_name(ctx.session.history[:-1])
        if name:
            text += f" You are {name}." if en else f" Te llamas {name}."
        return await self.say(text, 3, None)

    async def look(self, ctx: TurnContext, en: bool) -> str:
        """Call ``look`` and answer from what arrived: the image's size, or the tool's error."""
        await self.tool_call([ToolCall("look", {})], ctx)
        if ctx.tool_error is not None:
            return (f"I cannot see it: {ctx.tool_error}" if en else
                    f"No puedo verlo: {ctx.tool_error}")
        if not ctx.images:
            self.sim.error(self.record.index, "look answered without an image on the wire")
            return ("The look tool says it sent a photo, but no image reached me." if en else
                    "La herramienta look dice que envió una foto, pero no me ha llegado ninguna.")
        im = ctx.images[-1]
        kb = round(len(im.data) / 1024)
        return (f"I see the photo you just sent: {im.size} pixels, {kb} KB of {im.mime_type}. "
                "I am the simulator, so I cannot tell what it shows." if en else
                f"Veo la foto que acabas de enviar: {im.size} píxeles, {kb} KB en "
                f"{im.mime_type}. Soy el simulador, así que no sé decirte qué muestra.")

    # --- teardown --------------------------------------------------------------------------

    async def finish(self) -> None:
        for task in [self.reply_task, *self.tasks]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, _Stop, ConnectionClosed):
                    await task
        for fut in self.pending.values():
            fut.cancel()
        r = self.record
        r.closed_at = time.time()
        if r.closed_by is None:
            r.close_code, r.close_reason = self.ws.close_code, self.ws.close_reason
            r.closed_by = "client" if self.ws.close_code not in (None, 1006) else "drop"


def _split(text: str, n: int) -> list[str]:
    """Split text into ``n`` consecutive pieces at word boundaries (concatenation == text)."""
    words = re.findall(r"\S+\s*", text) or [text]
    n = min(n, len(words))
    size = -(-len(words) // n)
    return ["".join(words[i:i + size]) for i in range(0, len(words), size)]


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _rate(mime: str) -> int:
    m = re.search(r"rate=(\d+)", mime)
    return int(m.group(1)) if m else CAPTURE_RATE


def strip_bytes(msg: Any) -> Any:
    """Replace bytes by their length (long-running CLI: do not keep every audio byte)."""
    if isinstance(msg, dict):
        return {k: strip_bytes(v) for k, v in msg.items()}
    if isinstance(msg, list):
        return [strip_bytes(v) for v in msg]
    if isinstance(msg, bytes):
        return len(msg)
    return msg
