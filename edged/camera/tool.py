"""The ``look`` tool: the model asks for a fresh still when the question needs the camera.

The still goes to the Live session as realtime image input *before* the tool answers, so when
the model reads the answer the image is already in its context. The answer says what was sent
(size, bytes, time) or, as an error the model must relay in words, why nothing was: no camera,
camera busy, privacy (disabled or muted), rate limit. The system instruction
(``edged.config.DEFAULT_SYSTEM_INSTRUCTION``) tells the model when to call it.
"""

from __future__ import annotations

from typing import Any

from edged.camera.component import Camera, StillRefused
from edged.tools import Tool, ToolError

NAME = "look"
DESCRIPTION = (
    "Take a fresh photo with the camera on the user's glasses (what the user is facing right "
    "now) and add it to the conversation as an image. Call it whenever the answer depends on "
    "what the user is looking at: '¿qué tengo delante?', 'léeme este cartel', '¿cuánto cuesta "
    "esto?', 'what am I looking at?'. Returns what was sent, or an error saying why no photo "
    "could be taken (no camera, camera busy, privacy: muted or switched off, rate limited); "
    "tell the user that reason in one sentence.")


def make_look_tool(camera: Camera) -> Tool:
    async def look(args: dict[str, Any]) -> dict[str, Any]:
        try:
            still = await camera.send("tool")
        except StillRefused as e:
            raise ToolError(str(e)) from None
        return {"sent": True, "mime_type": "image/jpeg", **still.summary(),
                "note": "The photo is now in the conversation as the latest image; answer "
                        "from what it shows."}

    return Tool(NAME, DESCRIPTION, {"type": "object", "properties": {},
                                    "additionalProperties": False}, look)
