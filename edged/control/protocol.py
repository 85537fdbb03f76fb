"""The control protocol, defined once for the daemon, ``edgectl`` and the tests.

Wire format: one JSON object per line, UTF-8, over the unix socket ``control.socket_path``::

    -> {"v": 1, "id": 7, "method": "status", "params": {}}
    <- {"v": 1, "id": 7, "ok": true, "result": {...}}
    <- {"v": 1, "id": 7, "ok": false, "error": {"code": "unknown_method", "message": "..."}}

Streaming methods (``ask``, ``events``) send any number of lines with ``"partial": true`` before
the final reply (the one without ``partial``) for the same id.

The shapes of the results programs read (``status``, ``health``, ``reload``, ``ask``'s final
reply) are the ``TypedDict``s below: the daemon builds them, :mod:`edged.control.client` returns
them, and ``status``'s ``schema_version`` changes when one changes incompatibly.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

PROTOCOL_VERSION = 1
STATUS_SCHEMA_VERSION = 1


class ErrorCode(StrEnum):
    """Stable error codes (``error.code``); the message is for people and may change."""

    PARSE_ERROR = "parse_error"              # not UTF-8 JSON
    INVALID_REQUEST = "invalid_request"      # not a request object / bad id or method
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_METHOD = "unknown_method"
    INVALID_PARAMS = "invalid_params"
    FORBIDDEN = "forbidden"                  # a state-changing method from a non-member
    UNAVAILABLE = "unavailable"              # the component it needs is not running
    TIMEOUT = "timeout"
    BUSY = "busy"                            # too many connections
    TOO_LARGE = "too_large"                  # request over control.max_request_bytes
    INTERNAL = "internal"                    # a daemon bug; the journal has the traceback


class ControlError(Exception):
    """An error reply: ``code`` is stable for programs, ``message`` is for people."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


class RequestError(ControlError):
    """A request that could not be parsed; ``req_id`` is its id when it could be read."""

    def __init__(self, req_id: Any, code: ErrorCode | str, message: str) -> None:
        super().__init__(code, message)
        self.req_id = req_id


def encode(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))
            + "\n").encode("utf-8")


def request(req_id: Any, method: str, params: dict[str, Any] | None = None) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "id": req_id, "method": method,
                   "params": params or {}})


def reply(req_id: Any, result: Any, partial: bool = False) -> bytes:
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": req_id, "ok": True}
    if partial:
        msg["partial"] = True
    msg["result"] = result
    return encode(msg)


def error(req_id: Any, code: ErrorCode | str, message: str) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "id": req_id, "ok": False,
                   "error": {"code": str(code), "message": message}})


def parse_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """Validate one request line -> (id, method, params); raises :class:`ControlError` or,
    once the id is known, :class:`RequestError`."""
    try:
        req = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ControlError(ErrorCode.PARSE_ERROR,
                           f"request is not valid UTF-8 JSON: {e}") from None
    if not isinstance(req, dict):
        raise ControlError(ErrorCode.INVALID_REQUEST, "request must be a JSON object "
                           '{"v":1,"id":...,"method":"...","params":{}}')
    req_id = req.get("id")
    if isinstance(req_id, dict | list):
        raise ControlError(ErrorCode.INVALID_REQUEST, "id must be a string, number or null")
    if req.get("v") != PROTOCOL_VERSION:
        raise RequestError(req_id, ErrorCode.UNSUPPORTED_VERSION,
                           f"protocol version {req.get('v')!r} is not supported; this daemon "
                           f'speaks "v": {PROTOCOL_VERSION} (upgrade edgectl or edged so they '
                           "match)")
    method = req.get("method")
    if not isinstance(method, str) or not method:
        raise RequestError(req_id, ErrorCode.INVALID_REQUEST, "method must be a non-empty string")
    params = req.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(req_id, ErrorCode.INVALID_PARAMS, "params must be a JSON object")
    return req_id, method, params


# --- result shapes ------------------------------------------------------------------------


class Health(TypedDict):
    health: str                   # "healthy" | "degraded"
    problems: list[str]


class ComponentStatus(TypedDict):
    state: str                    # starting | ok | degraded | disabled | failed | stopped
    detail: str
    since: str | None             # ISO 8601
    since_epoch: float


class TurnSummary(TypedDict):
    kind: str                     # "voice" | "text"
    ts: float
    user: str
    model: str
    tools: list[str]
    outcome: str
    interrupted: bool
    latency_s: float | None


class ReloadResult(TypedDict):
    ok: bool
    version: str
    previous: NotRequired[str]
    error: NotRequired[str | None]
    restart_needed: NotRequired[list[str]]


class ConfigStatus(TypedDict):
    version: str
    loaded_at: str | None
    loaded_at_epoch: float
    admin_file: str | None
    override_file: str | None
    last_reload: dict[str, Any]


class ControlStatus(TypedDict):
    socket: str
    group: str
    group_problem: str | None


class Status(TypedDict):
    """``edgectl status --json``. Sub-documents owned by components (session, audio, camera,
    index) are their ``status()`` dicts, documented with each component."""

    schema_version: int
    edged_version: str
    health: str
    problems: list[str]
    state: str
    muted: bool
    pid: int
    started_at: str | None
    started_at_epoch: float
    uptime_s: float
    components: dict[str, ComponentStatus]
    session: dict[str, Any] | None
    audio: dict[str, Any] | None
    camera: dict[str, Any]
    index: dict[str, Any]
    config: ConfigStatus
    control: ControlStatus | None
    feedback: dict[str, int]
    turns: list[TurnSummary]
