"""The tools the device offers the model: one place for the daemon, ``edged chat`` and the demo.

Tools open their resources lazily, so a missing index is an error *answer* the model can relay,
not a failure to start. A new tool is registered here (and its module must not import this one).
"""

from __future__ import annotations

from edged.config import Settings
from edged.tools import ToolRegistry


def device_tools(settings: Settings) -> ToolRegistry:
    from edged.knowledge.tool import make_search_tool  # heavy (numpy, sqlite-vec): lazily

    registry = ToolRegistry(settings.tools.timeout_s)
    registry.register(make_search_tool(settings))
    return registry
