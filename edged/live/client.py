"""Build the google-genai client and the Live setup (``LiveConnectConfig``) from Settings.

Kept apart from the supervisor so the exact setup that goes on the wire is a pure function of
the settings (plus the held resumption handle): tests assert on it and ``update_settings`` can
compare fingerprints to decide whether a reconnect is needed.

Keepalive (docs/live-session.md): websockets' defaults (ping every 20 s, 20 s pong timeout)
are known to kill healthy Live sessions because Gemini's pongs take 8-30 s, so the ping
interval/timeout come from ``session.ping_interval_s``/``ping_timeout_s``. They reach
``websockets.connect`` because the SDK passes through every ``async_client_args`` key that
matches a ``connect()`` parameter (``_api_client.py`` ``_ensure_websocket_ssl_ctx``); the
httpx/aiohttp clients filter those keys out again, so they do no harm there.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from typing import Any

import certifi
from google import genai
from google.genai import types

from edged.config import ConfigError, Settings
from edged.tools import ToolRegistry

# Frames above websockets' 1 MiB default make the client close with 1009, which the SDK
# reports as an opaque 1006 (docs/simulator.md, wire rule 7). 16 MiB lifts that without
# letting one frame exhaust a 512 MB Pi Zero.
MAX_FRAME_BYTES = 16 * 2**20
# camera.media_resolution -> the setup's generationConfig.mediaResolution: the tokens the model
# spends per still (docs/camera.md). Only sent with the camera enabled: no images, no setting.
MEDIA_RESOLUTION = {
    "low": types.MediaResolution.MEDIA_RESOLUTION_LOW,
    "medium": types.MediaResolution.MEDIA_RESOLUTION_MEDIUM,
    "high": types.MediaResolution.MEDIA_RESOLUTION_HIGH,
}
# Closing a dead socket waits this long for the peer's close frame; the supervisor reconnects
# without waiting for it, so this only bounds how long a half-dead socket lingers.
CLOSE_TIMEOUT_S = 2.0


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The default trust (SSL_CERT_FILE or certifi, like the SDK) plus ``gemini.ca_file``."""
    ca_file = settings.gemini.ca_file
    if ca_file is None:
        return None
    ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE", certifi.where()))
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"gemini.ca_file: cannot load {ca_file} as a PEM CA certificate: {e}") from e
    return ctx


def websocket_args(settings: Settings) -> dict[str, Any]:
    """Arguments for ``websockets.connect`` (via ``http_options.async_client_args``)."""
    s = settings.session
    args: dict[str, Any] = {
        "ping_interval": s.ping_interval_s,
        "ping_timeout": s.ping_timeout_s,
        "open_timeout": s.connect_timeout_s,
        "close_timeout": CLOSE_TIMEOUT_S,
        "max_size": MAX_FRAME_BYTES,
    }
    ctx = _ssl_context(settings)
    if ctx is not None:
        args["ssl"] = ctx
    return args


def build_client(settings: Settings) -> genai.Client:
    """A genai.Client for AI Studio (API key), Vertex (project/location) or Vertex express."""
    g = settings.gemini
    key = settings.api_key()
    http = types.HttpOptions(
        base_url=g.base_url, api_version=g.api_version, async_client_args=websocket_args(settings))
    if g.vertex:
        if key:
            return genai.Client(vertexai=True, api_key=key, http_options=http)
        return genai.Client(vertexai=True, project=g.project, location=g.location,
                            http_options=http)
    if not key:
        raise ConfigError(
            "no Gemini API key: set GEMINI_API_KEY, gemini.api_key_file (0600 file) or a "
            "systemd credential named gemini_api_key; or gemini.vertex = true with "
            "project/location")
    return genai.Client(api_key=key, http_options=http)


def client_fingerprint(settings: Settings) -> str:
    """What the client depends on; the key is hashed in so a rotated key rebuilds the client."""
    g = settings.gemini
    key = settings.api_key() or ""
    return json.dumps([g.vertex, g.project, g.location, g.base_url, str(g.ca_file),
                       g.api_version, hashlib.sha256(key.encode()).hexdigest(),
                       settings.session.ping_interval_s, settings.session.ping_timeout_s,
                       settings.session.connect_timeout_s])


def build_config(settings: Settings, tools: ToolRegistry,
                 handle: str | None = None) -> types.LiveConnectConfig:
    """The Live setup. No thinking_config / affective dialog: 3.8 Live rejects them."""
    g, s = settings.gemini, settings.session
    realtime = types.RealtimeInputConfig(
        automatic_activity_detection=types.AutomaticActivityDetection(
            disabled=s.turn_detection == "local"),
        activity_handling=types.ActivityHandling.START_OF_ACTIVITY_INTERRUPTS,
    )
    return types.LiveConnectConfig(
        response_modalities=[types.Modality(g.response_modality)],
        system_instruction=g.system_instruction,
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=g.voice)),
            language_code=g.language),
        tools=tools.declarations() or None,
        realtime_input_config=realtime,
        session_resumption=(types.SessionResumptionConfig(handle=handle)
                            if s.resumption else None),
        context_window_compression=types.ContextWindowCompressionConfig(
            trigger_tokens=s.compression_trigger_tokens,
            sliding_window=types.SlidingWindow(target_tokens=s.compression_target_tokens)),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        media_resolution=(MEDIA_RESOLUTION[settings.camera.media_resolution]
                          if settings.camera.enabled else None),
    )


def setup_fingerprint(settings: Settings, tools: ToolRegistry) -> str:
    """The setup minus the handle; a change means the next connection must carry a new setup."""
    cfg = build_config(settings, tools)
    return json.dumps([settings.gemini.model, cfg.model_dump(mode="json", exclude_none=True)],
                      sort_keys=True)
