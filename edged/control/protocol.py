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
import re
from enum import StrEnum
from itertools import accumulate
from typing import Any, NotRequired, TypedDict

from edged.redact import redact
from edged.text import clean_strings

PROTOCOL_VERSION = 1
STATUS_SCHEMA_VERSION = 1
MAX_NESTING = 16     # requests are flat: {"params": {...}} is depth 2

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


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
    REJECTED = "rejected"                    # an OTA bundle refused (nothing was changed)
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
    """One line of the wire format. Every reply, event and error passes here, so this is
    where the socket's output is redacted (:mod:`edged.redact`) as it leaves the daemon."""
    line = json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))
    return (redact(line) + "\n").encode("utf-8", "replace")


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


def nesting_depth(line: bytes) -> int:
    """How deeply the arrays/objects in a JSON text nest, found without parsing it.

    Linear time in C (regex, translate, accumulate), so a hostile 64 KiB line of ``[[[[``
    costs a millisecond instead of a RecursionError deep in the parser. Escapes are dropped
    first so a ``\\"`` cannot end a string early; then the strings; then each bracket left
    counts +1 or -1. Invalid JSON may be under-counted, but then the parser fails before it
    recurses that deep. A line with few brackets returns their count (an upper bound)."""
    opening = line.count(b"[") + line.count(b"{")
    if opening <= MAX_NESTING:
        return opening
    bare = _STRING.sub(b"", _ESCAPE.sub(b"", line))
    steps = _NOT_BRACKET.sub(b"", bare).translate(_DEPTH_STEP)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def parse_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """Validate one request line -> (id, method, params); raises :class:`ControlError` or,
    once the id is known, :class:`RequestError`.

    The nesting is checked before the JSON parser runs (the caller already bounded the size),
    and every string in ``params`` is cleaned (:func:`edged.text.clean_strings`): this is
    the control socket's boundary for untrusted text such as ``ask``'s question."""
    if nesting_depth(line) > MAX_NESTING:
        raise ControlError(ErrorCode.INVALID_REQUEST,
                           f"request nests arrays/objects deeper than {MAX_NESTING} levels; "
                           'send {"v":1,"id":...,"method":"...","params":{...}}')
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
    return req_id, method, clean_strings(params)


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
    trigger: str | None           # vad | wake | listen | follow_up | barge_in | text
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
    ota: dict[str, Any] | None    # edged.ota.apply.OtaManager.status(); docs/ota.md
