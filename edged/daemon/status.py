"""The status document, the problem list and the sd_notify ``STATUS=`` line: pure functions.

The daemon gathers a :class:`View` (each component's own ``status()`` plus the daemon's
bookkeeping) and everything a person or a program reads is derived from it here, so the rules
("a retrying microphone makes the daemon degraded", what the one-line status says) are unit
tests on plain data, and ``edgectl status``, ``health``, metrics and ``systemctl status`` can
never disagree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edged import __version__
from edged.control.protocol import (
    STATUS_SCHEMA_VERSION,
    ComponentStatus,
    ConfigStatus,
    ControlStatus,
    Health,
    Status,
    TurnSummary,
)

STATUS_LINE_MAX = 400


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    """A supervised component's state: starting | ok | degraded | disabled | failed | stopped."""

    state: str = "starting"
    detail: str = ""
    since: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class View:
    """Everything the status is made of, as the daemon saw it a moment ago."""

    components: Mapping[str, ComponentHealth]
    session: dict[str, Any] | None          # LiveSession.status()
    audio: dict[str, Any] | None            # VoiceLoop.status()
    camera: dict[str, Any]
    index: dict[str, Any]
    config: ConfigStatus
    control: ControlStatus | None
    muted: bool
    feedback: dict[str, int]
    turns: list[TurnSummary]
    started_at: float


def problems(v: View) -> list[str]:
    """Human-readable reasons the daemon is not healthy, most important first."""
    out = [f"{name}: {h.detail or h.state}" for name, h in v.components.items()
           if h.state in ("degraded", "failed")]
    for key in ("capture", "playback"):
        dev = (v.audio or {}).get(key)
        if isinstance(dev, dict) and (dev.get("error") or dev.get("state") == "retrying"):
            out.append(f"{key}: {dev.get('error') or 'retrying'}")
    cam = v.camera
    if cam.get("enabled") and not cam.get("muted") and (cam.get("detail")
                                                        or cam.get("state") == "retrying"):
        out.append(f"camera: {cam.get('detail') or 'retrying'}")
    if v.session is not None and v.session.get("state") in ("config_error", "backoff"):
        out.append(f"session: {v.session['state']} ({v.session.get('detail', '')})")
    if not v.config["last_reload"].get("ok", True):
        out.append("config: last reload rejected (old config kept)")
    return out


def health(v: View) -> Health:
    p = problems(v)
    return {"health": "degraded" if p else "healthy", "problems": p}


def conversation_state(v: View) -> str:
    return str((v.audio or {}).get("state", "idle"))


def session_state(v: View) -> str:
    return str(v.session.get("state")) if v.session is not None else "unavailable"


def status_line(v: View) -> str:
    """One line for ``STATUS=`` (``systemctl status``): health, state, session, index, config."""
    p = problems(v)
    gen = v.index.get("generation")
    line = (f"{'degraded' if p else 'healthy'}; state={conversation_state(v)}"
            f"{' (muted)' if v.muted else ''} session={session_state(v)} "
            f"index=gen{gen if gen is not None else '-'} cfg={v.config['version']}")
    last = v.config["last_reload"]
    if not last.get("ok", True):
        err = str(last.get("error")).splitlines()
        line += f"; reload rejected: {' '.join(s.strip() for s in err[-1:])}"
    elif p:
        line += f"; {p[0]}"
    return line[:STATUS_LINE_MAX]


def document(v: View) -> Status:
    """``edgectl status --json``."""
    p = problems(v)
    components: dict[str, ComponentStatus] = {
        n: {"state": h.state, "detail": h.detail, "since": iso(h.since), "since_epoch": h.since}
        for n, h in v.components.items()}
    return {
        "schema_version": STATUS_SCHEMA_VERSION,
        "edged_version": __version__,
        "health": "degraded" if p else "healthy",
        "problems": p,
        "state": conversation_state(v),
        "muted": v.muted,
        "pid": os.getpid(),
        "started_at": iso(v.started_at),
        "started_at_epoch": v.started_at,
        "uptime_s": round(time.time() - v.started_at, 1),
        "components": components,
        "session": v.session,
        "audio": v.audio,
        "camera": v.camera,
        "index": v.index,
        "config": v.config,
        "control": v.control,
        "feedback": v.feedback,
        "turns": v.turns,
    }
