"""edged: an always-on voice companion daemon (Raspberry Pi, Gemini Live, on-device knowledge)."""

__version__ = "0.1.0"
