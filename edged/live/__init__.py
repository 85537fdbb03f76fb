"""The Gemini Live connection: client/setup construction and the session supervisor."""

from edged.live.session import LiveConfigError, LiveSession, LiveUnavailable

__all__ = ["LiveConfigError", "LiveSession", "LiveUnavailable"]
