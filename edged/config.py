"""Settings in one place: a typed model, loaded from layered TOML files.

Layers, lowest to highest precedence:

1. packaged defaults (the field defaults below; ``config/edged.example.toml`` lists them),
2. the admin file: ``/etc/edged/edged.toml`` or ``--config PATH``,
3. the OTA override file (``/var/lib/edged/config/current.toml``), written only by signed
   OTA updates,
4. the environment: ``GEMINI_API_KEY``.

Every key is validated by pydantic with unknown keys forbidden, so a typo is an error rather
than a silently ignored setting. A :class:`ConfigError` names the file that set the bad value,
the dotted key path, the value and what is allowed - the operator reads it in the journal or
from ``edged check-config`` and can fix the file without reading code.

Validation goes beyond types to what cannot work on the device, so the daemon refuses to start
(exit 78) instead of running half-configured: a key file that is missing, unreadable or empty;
an empty key; infinite, NaN or absurdly long durations; a socket path longer than a unix
socket allows; control characters (a newline, NUL) in names and paths; a plain-http
``base_url``; a metrics endpoint reachable from the network without ``metrics.allow_remote``;
a camera still larger than any Pi camera takes.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_ADMIN_CONFIG = Path("/etc/edged/edged.toml")
DEFAULT_OVERRIDE_CONFIG = Path("/var/lib/edged/config/current.toml")
ENV_API_KEY = "GEMINI_API_KEY"
CREDENTIAL_NAME = "gemini_api_key"   # LoadCredential=gemini_api_key:/etc/edged/gemini_api_key

DEFAULT_SYSTEM_INSTRUCTION = (
    "Eres edged, un asistente de voz amable que vive en un pequeño dispositivo que el usuario "
    "lleva consigo. Responde de forma breve y natural, en el idioma en que te hablen (sobre todo "
    "español). Cuando la pregunta trate de temas de la base de conocimiento, usa la herramienta "
    "search_knowledge y cita la fuente por su título. "
    "Si tienes la herramienta look (la cámara de las gafas), llámala cada vez que para responder "
    "necesites ver lo que el usuario tiene delante, por ejemplo «¿qué tengo delante?», «léeme "
    "este cartel» o «¿cuánto cuesta esto?»: toma una foto nueva y te llega como imagen. Si look "
    "devuelve un error, di en una frase por qué no puedes ver (no hay cámara, está ocupada, el "
    "dispositivo está silenciado por privacidad) y nunca describas una imagen que no has "
    "recibido. "
    "In English: if you have the look tool (the camera on the user's glasses), call it whenever "
    "answering needs to see what is in front of the user, e.g. \"what am I looking at?\", \"read "
    "this sign\" or \"how much is this?\"; if it returns an error, say in one sentence why you "
    "cannot see, and never describe an image you did not receive."
)


MAX_SECONDS = 86_400.0      # no duration in edged is meant to be longer than a day
UNIX_PATH_MAX = 107         # sun_path is 108 bytes, including its terminating NUL
MULTILINE_FIELDS = frozenset({"system_instruction"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class ConfigError(Exception):
    """A configuration problem an operator can fix; the message says where and how."""


class _Section(BaseModel):
    """Rules every section shares: no unknown keys, finite numbers (TOML can write ``inf`` and
    ``nan``), durations (``*_s``) of at most a day, and no control characters in text - a
    newline or NUL in a device name or path only fails later, far from the file that set it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _sane(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        if isinstance(value, float) and name.endswith("_s") and value > MAX_SECONDS:
            raise ValueError(f"is longer than a day ({MAX_SECONDS:g} s); give the number of "
                             "seconds, e.g. 30")
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str | Path):
            pattern = _CONTROL_BUT_LINES if name in MULTILINE_FIELDS else _CONTROL
            if m := pattern.search(str(text)):
                raise ValueError(f"contains the control character {m.group()!r} at position "
                                 f"{m.start()}; write the value on one line, without escapes "
                                 "such as \\n or \\0")
        return value


class GeminiSettings(_Section):
    """How to reach Gemini Live, and what the assistant sounds like."""

    model: str = Field(
        default="gemini-3.8-live",
        description="Live model; gemini-3.8-live is the stable Live model recommended in late "
        "2026 (native audio only)")
    api_key: SecretStr | None = Field(
        default=None, description="Prefer GEMINI_API_KEY or api_key_file; never logged."
    )
    api_key_file: Path | None = Field(
        default=None, description="File holding the key (0600), e.g. a systemd credential."
    )
    vertex: bool = Field(default=False, description="Use Vertex AI instead of AI Studio")
    project: str | None = Field(default=None, description="Vertex AI project (with vertex)")
    location: str | None = Field(
        default=None, description="Vertex AI region, e.g. europe-west1 (with vertex)")
    base_url: str | None = Field(
        default=None, description="API gateway or the local simulator, e.g. https://127.0.0.1:8765"
    )
    ca_file: Path | None = Field(default=None, description="Extra CA to trust for base_url (PEM)")
    api_version: str | None = Field(
        default=None, description="API version path (v1beta, v1alpha); default: the SDK's")
    voice: str = Field(default="Kore", description="Prebuilt voice of the spoken replies")
    language: str = Field(default="es-ES", description="BCP-47 language of the spoken replies")
    system_instruction: str = Field(
        default=DEFAULT_SYSTEM_INSTRUCTION,
        description="Who the assistant is and how it answers (Spanish by default)")
    response_modality: Literal["AUDIO", "TEXT"] = Field(
        default="AUDIO", description="AUDIO: spoken replies (the device); TEXT: text only")

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; put the key there, or remove the line and use "
                             "GEMINI_API_KEY or gemini.api_key_file")
        return value

    @field_validator("api_key_file")
    @classmethod
    def _key_file_usable(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ValueError("does not exist; create it (0600, the key on one line) or fix "
                             "the path") from None
        except IsADirectoryError:
            raise ValueError("is a directory; give the file that holds the key") from None
        except PermissionError:
            raise ValueError("cannot be read by this user; under systemd hand it over with "
                             "LoadCredential= (as edged.service does), or let this user read "
                             "it") from None
        except (OSError, UnicodeError) as e:
            raise ValueError(f"cannot be read ({e}); it must hold the key as text") from None
        if not key:
            raise ValueError("is empty; write the API key into it (one line)")
        return path

    @field_validator("base_url")
    @classmethod
    def _https_only(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL with a host, e.g. https://127.0.0.1:8765 "
                             "(Gemini Live runs over TLS only; the key would travel in clear "
                             "over http)")
        return url

    @field_validator("ca_file")
    @classmethod
    def _ca_readable(cls, path: Path | None) -> Path | None:
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError("does not exist or cannot be read; give the PEM file of the CA "
                             "that signed base_url's certificate")
        return path

    @model_validator(mode="after")
    def _vertex_needs_project(self) -> GeminiSettings:
        if self.vertex and self.api_key is None and not (self.project and self.location):
            raise ValueError(
                "gemini.vertex = true needs gemini.project and gemini.location "
                "(or an API key for Vertex express mode)"
            )
        return self


class SessionSettings(_Section):
    """The Live session supervisor: resumption, compression, reconnects, liveness."""

    turn_detection: Literal["local", "server"] = Field(
        default="local",
        description="local: our VAD sends activityStart/End; server: stream all audio (baseline)",
    )
    resumption: bool = Field(
        default=True, description="Resume the same conversation after drops and goAways")
    compression_trigger_tokens: int = Field(
        default=25600, ge=1000,
        description="Context size at which the server's sliding-window compression starts")
    compression_target_tokens: int = Field(
        default=12800, ge=500, description="Context size the sliding window compresses to")
    backoff_base_s: float = Field(
        default=0.5, gt=0, description="First reconnect delay after a transient failure")
    backoff_cap_s: float = Field(
        default=30.0, gt=0, description="Longest reconnect delay (full jitter below it)")
    config_error_retry_s: float = Field(
        default=300.0, gt=0, description="Retry interval after 1007/1008 (configuration errors)"
    )
    connect_timeout_s: float = Field(
        default=15.0, gt=0, description="Connect + setupComplete must arrive within this")
    ping_interval_s: float = Field(
        default=20.0, gt=0, description="WebSocket ping interval on an idle link")
    ping_timeout_s: float = Field(
        default=45.0, gt=0,
        description="A ping unanswered this long = dead link (Gemini's pongs can take 8-30 s)")
    stall_timeout_s: float = Field(
        default=30.0, gt=0, description="No server message this long while a reply is due = dead"
    )
    goaway_margin_s: float = Field(
        default=5.0, ge=0,
        description="After a goAway while the user is still speaking, reconnect at the latest "
                    "this long before timeLeft ends (a reply in progress is never cut: it runs "
                    "until it completes or timeLeft is over)")
    stable_after_s: float = Field(
        default=60.0, gt=0, description="A connection this old resets the reconnect backoff")
    text_wait_s: float = Field(
        default=10.0, ge=0, description="How long a text turn waits for a reconnect before failing")
    probe_interval_s: float = Field(
        default=0.5, gt=0, le=10,
        description="While the network is down, a TCP reachability probe of the Live endpoint "
                    "starts this often; the first that connects ends the outage at once")
    probe_timeout_s: float = Field(
        default=2.0, gt=0, le=30,
        description="A reachability probe that has not connected within this has failed")

    @model_validator(mode="after")
    def _check(self) -> SessionSettings:
        if self.compression_target_tokens >= self.compression_trigger_tokens:
            raise ValueError("compression_target_tokens must be below compression_trigger_tokens")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        return self


class ToolSettings(_Section):
    """Tool calls the model makes (search_knowledge, ...)."""

    timeout_s: float = Field(
        default=8.0, gt=0, le=120,
        description="A tool call not answered within this gets an error response")


class AudioSettings(_Section):
    """ALSA devices. Capture is 16 kHz mono S16_LE, playback 24 kHz mono S16_LE (Live formats)."""

    capture_device: str = Field(
        default="default", min_length=1,
        description="ALSA capture PCM, e.g. plughw:CARD=Device,DEV=0 (16 kHz mono via plug)")
    playback_device: str = Field(
        default="default", min_length=1,
        description="ALSA playback PCM (24 kHz mono, plug if needed)")
    period_ms: Literal[10, 20, 30] = Field(
        default=20, description="Capture period: one AudioFrame per period")
    playback_buffer_ms: int = Field(
        default=80, ge=20, le=1000,
        description="ALSA playback buffer; the barge-in stop latency is at most this")
    playback_prebuffer_ms: int = Field(
        default=60, ge=0, le=1000,
        description="Reply audio held before the first write, so a slow burst doesn't underrun")
    retry_base_s: float = Field(
        default=0.5, gt=0, description="First retry delay after a device failed to open")
    retry_cap_s: float = Field(
        default=30.0, gt=0, description="Longest retry delay for a missing device")
    noise_suppression: bool = Field(
        default=True,
        description="Suppress steady noise in what is sent to Gemini (never in what the speech "
        "detector and the wake word hear)")


# The models the pymicro-wakeword wheel ships (okay_nabu was trained with Spanish too).
BUILTIN_WAKE_MODELS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")


class ListenSettings(_Section):
    """When the device listens: wake word, follow-up window, button (docs/voice.md)."""

    mode: Literal["wake", "vad", "manual"] = Field(
        default="wake",
        description="wake: only the wake word opens a conversation; vad: any speech does "
        "(headsets, tests); manual: only `edgectl listen`")
    wake_model: str = Field(
        default="okay_nabu",
        description="Built-in microWakeWord model (okay_nabu, hey_jarvis, alexa, hey_mycroft) "
        "or the path of a microWakeWord .json manifest (its .tflite beside it)")
    wake_cutoff: float | None = Field(
        default=0.9, gt=0, lt=1,
        description="Detection threshold (None: the model manifest's; okay_nabu's is 0.85, "
        "which measured 1.3 false wakes per hour of Spanish speech, 0.9 none)")
    wake_refractory_s: float = Field(
        default=2.0, ge=0.5, le=30, description="After a wake, ignore the wake word this long")
    question_timeout_s: float = Field(
        default=6.0, gt=0, le=60,
        description="After the wake word or `edgectl listen`, speech must start within this")
    follow_up_s: float = Field(
        default=6.0, ge=0, le=60,
        description="After a reply, speech within this long continues the conversation without "
        "the wake word (0: off)")
    barge_in: Literal["speech", "wake_word"] = Field(
        default="speech",
        description="What interrupts a reply: the user's speech, or only the wake word (noisy "
        "places where others talk)")
    cues: list[Literal["wake", "offline", "back", "error"]] = Field(
        default=["wake", "offline", "back", "error"],
        description="Short sounds the device plays itself: wake (the wake word or `edgectl "
        "listen` was heard), offline (a question while the cloud cannot be reached), back "
        "(the network returned after that), error (a reply never came); [] for none")

    @model_validator(mode="after")
    def _check(self) -> ListenSettings:
        model = self.wake_model
        if model not in BUILTIN_WAKE_MODELS:
            path = Path(model)
            if path.suffix != ".json":
                raise ValueError(
                    f"wake_model {model!r} is neither a built-in model "
                    f"({', '.join(BUILTIN_WAKE_MODELS)}) nor a microWakeWord .json manifest")
            if not path.is_file():
                raise ValueError(f"wake_model: {model} does not exist (a microWakeWord .json "
                                 "manifest, with its .tflite beside it)")
        return self


class VadSettings(_Section):
    """The local speech gate (docs/voice.md): a speech detector plus pre-roll and turn timing."""

    engine: Literal["silero", "webrtc"] = Field(
        default="silero",
        description="silero: robust to noise and music (32 ms frames, ~1 % of a core); "
        "webrtc: nearly free, fooled by most noise")
    threshold: float = Field(
        default=0.5, gt=0, lt=1, description="silero: speech probability that counts as voiced")
    aggressiveness: int = Field(
        default=2, ge=0, le=3, description="webrtc: 0 lets most through, 3 is strictest")
    frame_ms: Literal[10, 20, 30] = Field(default=30, description="webrtc: frame length")
    warmup_ms: int = Field(
        default=150, ge=0, le=2000,
        description="After (re)start: fill the pre-roll only; never a trigger, never silence")
    preroll_ms: int = Field(
        default=400, ge=0, le=2000,
        description="Audio before the detected onset sent with the turn (no clipped syllable)")
    start_voiced_ms: int = Field(
        default=90, ge=10, description="Voiced audio within start_window_ms that starts a turn")
    start_window_ms: int = Field(
        default=160, ge=10, description="Window for the start decision")
    end_silence_ms: int = Field(
        default=700, ge=100,
        description="Silence that ends a turn (the end-of-turn latency); one voiced frame alone "
                    "within it is taken for a click, two in a row for speech")
    min_speech_ms: int = Field(
        default=200, ge=0, description="Voiced audio needed to confirm a turn (drops clicks)")
    max_turn_s: float = Field(
        default=15.0, gt=0, description="A turn that never pauses is cut here")
    cooldown_s: float = Field(
        default=3.0, ge=0,
        description="After a turn cut at max_turn_s, no new turn until a pause or this long")
    batch_ms: int = Field(
        default=60, ge=40, le=100, description="Audio per uplink message during a turn")

    @model_validator(mode="after")
    def _check(self) -> VadSettings:
        if self.start_voiced_ms > self.start_window_ms:
            raise ValueError("start_voiced_ms must be <= start_window_ms")
        return self


class EchoSettings(_Section):
    """The device hearing itself: echo cancellation, barge-in, and the fallback policy."""

    cancellation: bool = Field(
        default=True,
        description="Cancel the speaker's sound in the microphone (AEC3), using what was played "
        "as the reference; off for a headset or a mic array that does it in hardware")
    bargein_ms: int = Field(
        default=96, ge=30,
        description="Voiced speech over the device's voice that barges in, once the echo "
        "canceller has converged (96: three Silero frames; 100 would wait for a fourth)")
    bargein_snr_db: float = Field(
        default=6.0, ge=0, le=40,
        description="...and it must be this much louder than the background (noise and what "
        "is left of the echo)")
    policy: Literal["guard", "mute", "open"] = Field(
        default="guard",
        description="Barge-in without a usable canceller (cancellation off, or it fails to "
        "converge; while it converges the mic is ignored): guard: only sustained loud speech "
        "barges in; mute: ignore the mic while playing; open: no protection")
    bargein_min_ms: int = Field(
        default=400, ge=0,
        description="guard: sustained speech needed over the device's voice to barge in")
    bargein_min_dbfs: float = Field(
        default=-30.0, le=0,
        description="guard: a frame counts as speech over the device's voice only this loud")
    tail_ms: int = Field(
        default=200, ge=0, le=2000,
        description="The policy still applies this long after the last sample (room echo)")


class CameraSettings(_Section):
    """Camera stills for the model (docs/camera.md): the look tool and automatic stills.

    Off by default. ``enabled = false`` is the privacy switch: the camera device is never
    opened, the look tool is not offered and nothing is captured."""

    enabled: bool = Field(
        default=False,
        description="Use the camera (privacy switch: false = never opened, no look tool)")
    index: int = Field(
        default=0, ge=0,
        description="picamera2 camera number: CSI cameras first, then USB (UVC) webcams")
    width: int = Field(
        default=768, ge=64, le=4608,
        description="Still width in pixels (768x768 is the Live API's native frame size; at "
        "most 4608, Camera Module 3)")
    height: int = Field(default=768, ge=64, le=3040,
                        description="Still height in pixels (at most 3040, HQ Camera)")
    jpeg_quality: int = Field(default=75, ge=10, le=95, description="JPEG quality of stills")
    media_resolution: Literal["low", "medium", "high"] = Field(
        default="medium",
        description="How many tokens the model spends per still (gemini media_resolution): "
        "low 64, medium 256, high 256 zoomed (docs/camera.md)")
    send_on: Literal["tool", "wake", "speech_start"] = Field(
        default="tool",
        description="tool: a still only when the model calls look; wake: also one when the "
        "wake word fires; speech_start: also one as each spoken turn starts")
    min_interval_s: float = Field(
        default=1.0, ge=1.0, le=3600,
        description="At most one still per this many seconds (the Live API takes 1 frame/s)")
    idle_stop_s: float = Field(
        default=30.0, ge=0,
        description="Stop streaming this long after the last still (power, privacy); "
        "0 keeps the camera streaming")
    capture_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        description="A capture not done within this counts as a camera failure (reopened)")
    retry_base_s: float = Field(
        default=1.0, gt=0, description="First retry delay after the camera failed to open")
    retry_cap_s: float = Field(
        default=60.0, gt=0, description="Longest retry delay for a missing camera")

    @model_validator(mode="after")
    def _check(self) -> CameraSettings:
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (libcamera refuses odd sizes)")
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError("retry_cap_s must be >= retry_base_s")
        return self


class KnowledgeSettings(_Section):
    """The on-device knowledge index and the search_knowledge tool (docs/knowledge.md)."""

    index_dir: Path = Field(default=Path("/var/lib/edged/index"),
                            description="Directory of the index generations (CURRENT pointer)")
    embedder: Literal["multilingual", "local", "gemini"] = Field(
        default="multilingual",
        description="multilingual: USE-m3 static model, Spanish and English in one space (make "
        "embedder); local: the English MiniLM model2vec model; gemini: the API (network)")
    multilingual_model: Path | None = Field(
        default=None, description="edged-usem3-static directory; default: the one built by make")
    local_model: Path | None = Field(
        default=None, description="model2vec directory; default: the one built by make"
    )
    gemini_model: str = Field(default="gemini-embedding-001", description="Gemini embedding model")
    gemini_dims: int = Field(default=768, ge=64, description="Gemini output dimensionality")
    top_k: int = Field(default=4, ge=1, le=20, description="Passages returned per search")
    char_budget: int = Field(default=1200, ge=200,
                             description="Characters of passage text per answer, shared")
    relevance_bias: float = Field(
        default=-6.43, description="The section model, which orders passages: sigmoid(bias + "
        "w_vector * cosine + "
        "w_lexical * matched share of the question's words + w_label * matched share in the "
        "title and heading); fitted by `make eval` on its tuning half")
    relevance_weight_vector: float = Field(
        default=3.16, description="Weight of the cosine similarity in the relevance (make eval)")
    relevance_weight_lexical: float = Field(
        default=0.98, description="Weight of the idf-weighted share of query words the passage "
        "contains (make eval)")
    relevance_weight_label: float = Field(
        default=6.58, description="Weight of the idf-weighted share of query words in the "
        "passage's title and section heading (make eval)")
    text_relevance_bias: float = Field(
        default=-6.35, description="The text model, which ignores title and heading so an "
        "answer under an unrelated heading still counts: sigmoid(bias + w_vector * cosine + "
        "w_lexical * matched share); a passage is kept if either model clears min_relevance "
        "(make eval)")
    text_relevance_weight_vector: float = Field(
        default=3.76, description="Text model: weight of the cosine similarity (make eval)")
    text_relevance_weight_lexical: float = Field(
        default=4.84, description="Text model: weight of the matched share of query words "
        "(make eval)")
    min_relevance: float = Field(
        default=0.06, ge=0, le=1,
        description="Passages below this calibrated relevance are not returned; if none is "
        "left the tool answers 'nothing relevant' (tuned by make eval)")
    max_passages_per_document: int = Field(
        default=1, ge=1, le=20,
        description="At most this many passages from one document per answer (diversity)")
    description: str = Field(
        default="", description="What the knowledge base covers, for the tool description the "
        "model reads; empty: built from the index (languages, document count, sample titles)")


class SyncSettings(_Section):
    """edged-index-sync, the nightly job that keeps the knowledge index in step with a source."""

    source: str = Field(
        default="", description="A directory, or an http(s) base URL with a manifest")
    max_doc_bytes: int = Field(
        default=2_000_000, ge=1024, description="Larger documents are skipped (and reported)")
    state_dir: Path = Field(
        default=Path("/var/lib/edged/sync"),
        description="The sync's lock-free state: last result record, HTTP validators")
    http_timeout_s: float = Field(default=30.0, gt=0, description="Per request to an http source")
    prom_textfile: Path | None = Field(
        default=None, description="node_exporter textfile for edged_index_* metrics, e.g. "
        "/var/lib/prometheus/node-exporter/edged_index.prom")


class ControlSettings(_Section):
    """The local control socket edgectl talks to."""

    socket_path: Path = Field(
        default=Path("/run/edged/control.sock"),
        description="Unix socket (mode 0660); an absolute path of at most 107 bytes")
    group: str = Field(
        default="edged", description="Group that may use the socket and change state")
    max_request_bytes: int = Field(
        default=65536, ge=1024, le=1 << 20, description="Longer request lines are refused")
    max_connections: int = Field(
        default=32, ge=8, le=1024,
        description="Open control connections; when full, the longest-idle one is closed to "
        "make room, streams (events, ask) may use all but 4, and 2 more can always ask for "
        "health or status")
    idle_timeout_s: float = Field(
        default=60.0, gt=0, le=3600,
        description="A connection that sends no request for this long is closed (streams "
        "excepted)")
    request_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="A request line must be complete this long after its first byte")
    stop_timeout_s: float = Field(
        default=10.0, gt=0, le=120,
        description="Graceful stop budget on SIGTERM; keep below the unit's TimeoutStopSec (20s)")


    @field_validator("socket_path")
    @classmethod
    def _fits_sun_path(cls, path: Path) -> Path:
        size = len(os.fsencode(path))
        if not path.is_absolute():
            raise ValueError("must be an absolute path, e.g. /run/edged/control.sock")
        if size > UNIX_PATH_MAX:
            raise ValueError(f"is {size} bytes; a unix socket path can have at most "
                             f"{UNIX_PATH_MAX}, so choose a shorter one, e.g. "
                             "/run/edged/control.sock")
        return path


class MetricsSettings(_Section):
    """Prometheus metrics: edgectl metrics always; a textfile or localhost HTTP if set."""

    textfile: Path | None = Field(
        default=None, description="node_exporter textfile collector file, e.g. .../edged.prom"
    )
    http_port: int | None = Field(default=None, ge=1, le=65535, description="off unless set")
    http_host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP endpoint binds; anything but loopback needs allow_remote")
    allow_remote: bool = Field(
        default=False,
        description="Allow http_host to be reachable from the network (e.g. 0.0.0.0): the "
        "metrics have no authentication, so only on a trusted network")
    textfile_interval_s: float = Field(default=15.0, ge=1.0, description="textfile rewrite period")

    @model_validator(mode="after")
    def _local_unless_allowed(self) -> MetricsSettings:
        if self.http_port is not None and not self.allow_remote and not _is_loopback(
                self.http_host):
            raise ValueError(
                f"metrics.http_host = {self.http_host!r} would serve the metrics, without "
                "authentication, to the network; use 127.0.0.1 (and node_exporter's textfile, "
                "or an SSH tunnel), or set metrics.allow_remote = true on a trusted network")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OtaSettings(_Section):
    """Signed over-the-air config bundles (docs/ota.md). Set only in the admin file: a bundle
    may never change this section (it is what judges the bundle)."""

    trusted_keys_dir: Path = Field(
        default=Path("/etc/edged/ota-keys"),
        description="Directory of trusted Ed25519 public keys (*.pub from `edged ota keygen`); "
        "several keys so one can be rotated")
    device_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
        description="This device's id for bundle targets (device:ID); default: the hostname")
    groups: list[str] = Field(
        default_factory=list,
        description="Groups this device belongs to for bundle targets (group:NAME)")
    health_window_s: float = Field(
        default=60.0, ge=1.0, le=3600.0,
        description="How long a new bundle must run healthily before it is committed; a "
        "failure inside it rolls back to the last good config")
    pull_url: str = Field(
        default="", description="https:// URL of the bundle edged-ota-pull.timer fetches "
        "(any static host); empty: no pulling")
    pull_ca_file: Path | None = Field(
        default=None, description="Extra CA (PEM) to trust for pull_url, e.g. a private host")
    pull_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Timeout of each pull request")

    @model_validator(mode="after")
    def _check(self) -> OtaSettings:
        if self.pull_url and not self.pull_url.startswith("https://"):
            raise ValueError(f"pull_url must start with https:// (got {self.pull_url!r}): "
                             "bundles are signed, but the fetch must not leak or be tampered "
                             "with in transit either")
        for g in self.groups:
            if not g or not all(c.isalnum() or c in "._-" for c in g):
                raise ValueError(f"group {g!r}: use letters, digits, '.', '_' or '-'")
        return self


class PathSettings(_Section):
    """Where the daemon keeps its own state."""

    state_dir: Path = Field(
        default=Path("/var/lib/edged"),
        description="Daemon state (feedback log, OTA config); systemd's StateDirectory")


class Settings(_Section):
    """Everything edged reads from its TOML files, one section per component."""

    gemini: GeminiSettings = GeminiSettings()
    session: SessionSettings = SessionSettings()
    tools: ToolSettings = ToolSettings()
    audio: AudioSettings = AudioSettings()
    listen: ListenSettings = ListenSettings()
    vad: VadSettings = VadSettings()
    echo: EchoSettings = EchoSettings()
    camera: CameraSettings = CameraSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    sync: SyncSettings = SyncSettings()
    control: ControlSettings = ControlSettings()
    metrics: MetricsSettings = MetricsSettings()
    ota: OtaSettings = OtaSettings()
    paths: PathSettings = PathSettings()

    def api_key(self) -> str | None:
        """The API key from its configured source; read here so nothing else touches secrets."""
        if self.gemini.api_key is not None:
            return self.gemini.api_key.get_secret_value()
        if self.gemini.api_key_file is not None:
            try:
                return self.gemini.api_key_file.read_text().strip() or None
            except OSError as e:
                raise ConfigError(
                    f"gemini.api_key_file: cannot read {self.gemini.api_key_file}: {e.strerror}"
                ) from e
        return None

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data with secrets replaced, for display and logs."""
        data = self.model_dump(mode="json")
        if self.gemini.api_key is not None:
            data["gemini"]["api_key"] = "**********"
        return data


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except PermissionError as e:
        raise ConfigError(f"{path}: permission denied (the service reads it as user edged)") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


def _merge(base: dict[str, Any], top: Mapping[str, Any], origin: str,
           provenance: dict[tuple[str, ...], str], prefix: tuple[str, ...] = ()) -> None:
    """Deep-merge ``top`` into ``base``, remembering which file set each leaf."""
    for key, value in top.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, provenance, path)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
            provenance[path] = origin


def _origin_of(loc: tuple[str, ...], provenance: Mapping[tuple[str, ...], str]) -> str:
    for n in range(len(loc), 0, -1):
        if loc[:n] in provenance:
            return provenance[loc[:n]]
    return "packaged defaults"


# What to write instead, for pydantic's own errors that do not say it.
_HINTS = {
    "finite_number": "; write a plain number (inf and nan are not allowed), e.g. 30",
}


def _describe(err: ValidationError, provenance: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc) or "(top level)"
        origin = _origin_of(loc, provenance)
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key '{key}' (check the spelling; "
                         "`edged check-config` prints every valid key)")
            continue
        msg = e["msg"].removeprefix("Value error, ") + _HINTS.get(e["type"], "")
        if isinstance(e.get("input"), dict):       # a rule about the whole section
            lines.append(f"{origin}: [{key}]: {msg}")
            continue
        value = "<secret>" if key.endswith("api_key") else repr(e.get("input"))
        lines.append(f"{origin}: {key} = {value}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _not_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def load_settings(
    config_path: Path | None = None,
    override_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_origin: str = "command-line overrides",
) -> Settings:
    """Load and validate the layered configuration.

    ``config_path``: the admin file; ``None`` means ``/etc/edged/edged.toml`` if it exists.
    ``override_path``: the OTA override; ``None`` means the default path if it exists.
    ``extra``: a final in-memory layer (used by tests and the demo to point at the simulator,
    and by OTA to validate a bundle before it is written); ``extra_origin`` names it in errors.
    """
    env = os.environ if env is None else env
    provenance: dict[tuple[str, ...], str] = {}
    merged: dict[str, Any] = {}
    admin = config_path if config_path is not None else (
        DEFAULT_ADMIN_CONFIG if DEFAULT_ADMIN_CONFIG.exists() else None)
    if admin is not None:
        _merge(merged, _read_toml(admin), str(admin), provenance)
    override = override_path if override_path is not None else (
        DEFAULT_OVERRIDE_CONFIG if DEFAULT_OVERRIDE_CONFIG.exists() else None)
    if override is not None and override.exists():
        _merge(merged, _read_toml(override), str(override), provenance)
    if extra:
        _merge(merged, extra, extra_origin, provenance)
    if env.get(ENV_API_KEY):
        _merge(merged, {"gemini": {"api_key": env[ENV_API_KEY]}}, f"${ENV_API_KEY}", provenance)
    elif (cred := env.get("CREDENTIALS_DIRECTORY")) and _not_empty(Path(cred) / CREDENTIAL_NAME):
        # An empty credential is the placeholder `install-on-pi --no-api-key` leaves so the
        # unit can start: no key yet (the session says so), not a broken key file.
        _merge(merged, {"gemini": {"api_key_file": str(Path(cred) / CREDENTIAL_NAME)}},
               "systemd credential", provenance)
    try:
        return Settings.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e, provenance)) from None
