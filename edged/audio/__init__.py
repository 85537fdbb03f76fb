"""Microphone to Gemini Live and back: ALSA capture, the speech gate, playback, the voice loop.

See docs/voice.md. The daemon uses :class:`edged.audio.voice.VoiceLoop`; everything else here is
its parts (each testable alone) and the virtual devices that stand in for a sound card.
"""
