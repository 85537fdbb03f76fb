"""The tools the device offers the model: one place for the daemon, ``edged chat`` and the demo.

Tools open their resources lazily, so a missing index is an error *answer* the model can relay,
not a failure to start. A new tool is registered here (and its module must not import this one).
``look`` is offered only when a camera component is given and ``camera.enabled`` is set: with
the camera disabled the model is not even told there is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edged.config import Settings
from edged.tools import ToolRegistry

if TYPE_CHECKING:
    from edged.camera.component import Camera


def device_tools(settings: Settings, camera: Camera | None = None,
                 knowledge: bool = True) -> ToolRegistry:
    """``knowledge=False``: without ``search_knowledge`` (the daemon's fallback when the
    knowledge code cannot load, so the camera still works)."""
    registry = ToolRegistry(settings.tools.timeout_s)
    if knowledge:
        from edged.knowledge.tool import make_search_tool  # heavy (numpy, sqlite-vec): lazily
        registry.register(make_search_tool(settings))
    if camera is not None and settings.camera.enabled:
        from edged.camera.tool import make_look_tool
        registry.register(make_look_tool(camera))
    return registry
