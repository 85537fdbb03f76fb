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
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

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


class ConfigError(Exception):
    """A configuration problem an operator can fix; the message says where and how."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        description="After a goAway, reconnect at the latest this long before timeLeft ends")
    stable_after_s: float = Field(
        default=60.0, gt=0, description="A connection this old resets the reconnect backoff")
    text_wait_s: float = Field(
        default=10.0, ge=0, description="How long a text turn waits for a reconnect before failing")

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
        default="default",
        description="ALSA capture PCM, e.g. plughw:CARD=Device,DEV=0 (16 kHz mono via plug)")
    playback_device: str = Field(
        default="default", description="ALSA playback PCM (24 kHz mono, plug if needed)")
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


class VadSettings(_Section):
    """The local speech gate (docs/voice.md): webrtcvad plus pre-roll and turn timing."""

    aggressiveness: int = Field(
        default=2, ge=0, le=3, description="webrtcvad mode: 0 lets most through, 3 is strictest")
    frame_ms: Literal[10, 20, 30] = Field(default=30, description="webrtcvad frame length")
    warmup_ms: int = Field(
        default=150, ge=0, le=2000,
        description="After (re)start: fill the pre-roll only; never a trigger, never silence")
    preroll_ms: int = Field(
        default=400, ge=0, le=2000,
        description="Audio before the detected onset sent with the turn (no clipped syllable)")
    start_voiced_frames: int = Field(
        default=6, ge=1, description="Voiced frames among start_window_frames that start a turn")
    start_window_frames: int = Field(
        default=10, ge=1, description="Window (frames) for the start decision")
    end_silence_ms: int = Field(
        default=700, ge=100, description="Silence that ends a turn (the end-of-turn latency)")
    min_speech_ms: int = Field(
        default=250, ge=0, description="Voiced audio needed to confirm a turn (drops clicks)")
    max_turn_s: float = Field(
        default=15.0, gt=0, description="A turn that never pauses is cut here (usually noise)")
    batch_ms: int = Field(
        default=60, ge=40, le=100, description="Audio per uplink message during a turn")

    @model_validator(mode="after")
    def _check(self) -> VadSettings:
        if self.start_voiced_frames > self.start_window_frames:
            raise ValueError("start_voiced_frames must be <= start_window_frames")
        return self


class EchoSettings(_Section):
    """What to do with the mic while the device itself is speaking (no real AEC yet)."""

    policy: Literal["guard", "mute", "open"] = Field(
        default="guard",
        description="guard: while playing, only sustained loud speech barges in; "
                    "mute: ignore the mic while playing; open: no protection")
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
        default=768, ge=64, le=4096,
        description="Still width in pixels (768x768 is the Live API's native frame size)")
    height: int = Field(default=768, ge=64, le=4096, description="Still height in pixels")
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
        default=Path("/run/edged/control.sock"), description="Unix socket (mode 0660)")
    group: str = Field(
        default="edged", description="Group that may use the socket and change state")
    max_request_bytes: int = Field(
        default=65536, ge=1024, description="Longer request lines are refused")
    stop_timeout_s: float = Field(
        default=10.0, gt=0, le=120,
        description="Graceful stop budget on SIGTERM; keep below the unit's TimeoutStopSec (20s)")


class MetricsSettings(_Section):
    """Prometheus metrics: edgectl metrics always; a textfile or localhost HTTP if set."""

    textfile: Path | None = Field(
        default=None, description="node_exporter textfile collector file, e.g. .../edged.prom"
    )
    http_port: int | None = Field(default=None, ge=1, le=65535, description="off unless set")
    http_host: str = Field(
        default="127.0.0.1", description="Address the HTTP endpoint binds (localhost only)")
    textfile_interval_s: float = Field(default=15.0, ge=1.0, description="textfile rewrite period")


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
    vad: VadSettings = VadSettings()
    echo: EchoSettings = EchoSettings()
    camera: CameraSettings = CameraSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    sync: SyncSettings = SyncSettings()
    control: ControlSettings = ControlSettings()
    metrics: MetricsSettings = MetricsSettings()
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
        value = "<secret>" if "api_key" in key else repr(e.get("input"))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {key} = {value}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    config_path: Path | None = None,
    override_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate the layered configuration.

    ``config_path``: the admin file; ``None`` means ``/etc/edged/edged.toml`` if it exists.
    ``override_path``: the OTA override; ``None`` means the default path if it exists.
    ``extra``: a final in-memory layer (used by tests and the demo to point at the simulator).
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
        _merge(merged, extra, "command-line overrides", provenance)
    if env.get(ENV_API_KEY):
        _merge(merged, {"gemini": {"api_key": env[ENV_API_KEY]}}, f"${ENV_API_KEY}", provenance)
    elif (cred := env.get("CREDENTIALS_DIRECTORY")) and (Path(cred) / CREDENTIAL_NAME).exists():
        _merge(merged, {"gemini": {"api_key_file": str(Path(cred) / CREDENTIAL_NAME)}},
               "systemd credential", provenance)
    try:
        return Settings.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e, provenance)) from None
