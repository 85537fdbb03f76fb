"""``edgectl``: talk to a running edged over its control socket (works as ``ssh pi edgectl …``).

Exit codes follow ``systemctl``/LSB so scripts and monitoring can branch on them (the list is
:data:`EXIT_CODES`, printed by ``--help`` and in README.md):

    0  healthy / the command succeeded
    1  degraded (status, health) / the daemon refused or failed the command
    2  usage error (bad arguments here, or parameters the daemon rejected)
    3  edged is not running (socket absent or connection refused)
    4  permission denied (socket not accessible, or a state-changing call from a non-member)
    130 interrupted (Ctrl-C)

Made for pipes and scripts: output that stops being read (``edgectl status | head -1``) ends
the command quietly with the exit code it would have had; ``events`` and ``ask`` also end as
soon as their reader goes away, without waiting for the next line. ``status --json`` prints the
daemon's status document (``schema_version`` inside) unchanged. Colour is used only when
stdout is a terminal and ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from edged.config import ControlSettings
from edged.control.client import (
    DEADLINE_SLACK_S,
    ControlClient,
    Denied,
    NotRunning,
    RemoteError,
)
from edged.control.protocol import ErrorCode, Health, Status

EXIT_OK, EXIT_DEGRADED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_FORBIDDEN = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "healthy / the command succeeded",
    EXIT_DEGRADED: "degraded (status, health) / the daemon refused or failed the command, "
                   "or did not answer within --timeout",
    EXIT_USAGE: "usage error: bad arguments, or parameters the daemon rejected",
    EXIT_NOT_RUNNING: "edged is not running (no socket, or connection refused)",
    EXIT_FORBIDDEN: "permission denied: cannot open the socket, or a state-changing command "
                    "from a user outside the control group",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
DEFAULT_SOCKET = ControlSettings().socket_path
DEFAULT_TIMEOUT_S = 30.0     # per reply line, unless the daemon announces its own deadline


def _stdout_fd() -> int | None:
    """stdout's descriptor, watched for hang-up while a stream waits (None: not a file)."""
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is an OSError
        return None


def _discard_stdout() -> None:
    """Point stdout at /dev/null: its reader is gone, and the interpreter's final flush must
    not fail (or print a traceback) because of it."""
    fd = _stdout_fd()
    if fd is not None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def _emit(text: str) -> bool:
    """Write and flush to stdout; False once the reader has gone (``| head -1``)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return False
    return True


class _Style:
    def __init__(self, stream: TextIO) -> None:
        self.on = (stream.isatty() and "NO_COLOR" not in os.environ
                   and os.environ.get("TERM") != "dumb")

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def good(self, t: str) -> str:
        return self._c("32", t)

    def bad(self, t: str) -> str:
        return self._c("33", t)

    def dim(self, t: str) -> str:
        return self._c("2", t)


def _hm(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S") if epoch else "-"


def _kv(d: dict[str, Any] | None, *keys: str) -> str:
    if not d:
        return "-"
    return " · ".join(f"{k} {d[k]}" for k in keys if d.get(k) not in (None, "", [], {}))


def _device_line(dev: Any) -> str:
    if not isinstance(dev, dict):
        return "-"
    line = f"{dev.get('state', '?')} · device {dev.get('device', '?')}"
    if dev.get("error"):
        line += f" · error: {dev['error']}"
    for k in ("overruns", "underruns", "xruns", "reopens"):
        if dev.get(k):
            line += f" · {k} {dev[k]}"
    return line


def _camera_line(cam: dict[str, Any]) -> str:
    line = str(cam.get("state", "-"))
    if cam.get("enabled"):
        line += (f" · {cam.get('device', '?')} · {cam.get('size', '?')} · send_on "
                 f"{cam.get('send_on', '?')}")
        stills = cam.get("stills") or {}
        line += " · stills " + " ".join(f"{k} {v}" for k, v in stills.items() if v)
    if cam.get("detail"):
        line += f" · error: {cam['detail']}"
    return line.rstrip()


def _listen_line(ls: Any) -> str:
    """Listening mode, wake word and the open window: what the device would answer now."""
    if not isinstance(ls, dict):
        return "-"
    line = str(ls.get("mode", "?"))
    if ls.get("wake_model"):
        line += f" · wake word {ls['wake_model']} · wakes {ls.get('wakes', 0)}"
        line += f" (last {_hm(ls.get('last_wake'))})" if ls.get("last_wake") else ""
    if ls.get("awaiting_question_s") is not None:
        line += f" · listening for the question ({ls['awaiting_question_s']} s left)"
    if ls.get("follow_up_s") is not None:
        line += f" · follow-up open ({ls['follow_up_s']} s left)"
    return line + f" · barge-in by {ls.get('barge_in', '?')}"


def _echo_line(echo: Any) -> str:
    """Whether the echo canceller may be trusted for barge-in, and what happens if not."""
    if not isinstance(echo, dict):
        return "-"
    if not echo.get("cancellation"):
        return f"cancellation off · barge-in while speaking: {echo.get('fallback_policy')}"
    line = str(echo.get("state", "?")).replace("_", " ")
    if echo.get("erle_db") is not None:
        line += f" · ERLE {echo['erle_db']} dB"
    if echo.get("failing"):
        line += (" · NOT CONVERGING: barge-in falls back to "
                 f"{echo.get('fallback_policy')} (check speaker/mic levels, see docs/voice.md)")
    return line


def _vad_line(vad: Any, frontend: Any) -> str:
    if not isinstance(vad, dict):
        return "-"
    line = (f"{vad.get('engine', '?')} · gate {vad.get('gate', '?')} · turns "
            f"{vad.get('turns', 0)} · sent {vad.get('gated_ratio', 0):.1%} of what it heard")
    if isinstance(frontend, dict) and frontend.get("cpu_per_audio_s") is not None:
        line += f" · front end {frontend['cpu_per_audio_s']:.1%} of a core"
    return line


def _short(text: Any, n: int = 48) -> str:
    t = " ".join(str(text or "").split())
    return t if len(t) <= n else t[:n - 1] + "…"


def _ota_when(iso_time: Any) -> str:
    """``2026-11-21T20:01:05+00:00`` -> ``20:01:05`` in local time (status rows are short)."""
    with contextlib.suppress(TypeError, ValueError):
        return datetime.fromisoformat(str(iso_time)).astimezone().strftime("%H:%M:%S")
    return "?"


def ota_line(ota: dict[str, Any]) -> str:
    """The OTA row of ``edgectl status``: version in effect, trial, last result, refusal."""
    v = ota.get("version")
    parts = [f"version {v}" if v is not None else "no OTA config"]
    p = ota.get("pending")
    if p:
        left = ota.get("window_left_s")
        parts.append(f"on trial since {_ota_when(p.get('applied_at'))}"
                     + (f", {left:.0f}s left" if isinstance(left, int | float) else ""))
    last = ota.get("last_result")
    if last:
        what = last.get("result", "?").replace("_", " ")
        parts.append(f"last: v{last.get('version')} {what} {_ota_when(last.get('at'))}")
    rb = ota.get("last_rollback")
    if rb:
        parts.append(f"last rollback: v{rb.get('version')} -> "
                     f"{'v' + str(rb['to']) if rb.get('to') is not None else 'no OTA config'}"
                     f" ({_short(rb.get('reason'), 100)})")
    rej = ota.get("last_rejected")
    if rej and not rej.get("superseded"):
        parts.append(f"last REJECTED {_ota_when(rej.get('at'))}: "
                     f"{_short(rej.get('message'), 100)}")
    return " · ".join(parts)


def format_ota(ota: dict[str, Any]) -> str:
    """``edgectl ota status``."""
    lines = [f"OTA: {ota_line(ota)}"]

    def row(name: str, value: Any) -> None:
        lines.append(f"  {name:<10} {value}")

    c = ota.get("committed")
    row("committed", f"version {c['version']} (key {c.get('key_id')}, committed "
        f"{c.get('committed_at')})" if c else "none")
    p = ota.get("pending")
    row("pending", f"version {p['version']} (key {p.get('key_id')}, applied "
        f"{p.get('applied_at')}, start {p.get('starts')}, changes "
        f"{', '.join(p.get('changed') or []) or 'nothing'})" if p else "none")
    row("highest", ota.get("highest_version"))
    last = ota.get("last_result")
    if last:
        row("last", f"version {last.get('version')} {last.get('result')} at {last.get('at')}"
            + (f": {last['reason']}" if last.get("reason") else ""))
    rej = ota.get("last_rejected")
    if rej:
        row("rejected", f"{rej.get('at')} from {rej.get('origin')}: {rej.get('message')}")
    row("device", f"{ota.get('device_id')} · groups {', '.join(ota.get('groups') or []) or '-'}"
        f" · health window {ota.get('health_window_s')}s")
    row("pull", ota.get("pull_url") or "off (ota.pull_url)")
    return "\n".join(lines)


def format_status(st: Status, style: _Style) -> str:
    health = st.get("health", "unknown")
    problems = st.get("problems") or []
    head = f"edged: {health}"
    if problems:
        head += f" ({'; '.join(problems)})"
    lines = [style.good(head) if health == "healthy" else style.bad(head)]

    def row(name: str, value: str) -> None:
        lines.append(f"  {name:<10} {value}")

    state = st.get("state", "?") + (" (microphone muted)" if st.get("muted") else "")
    row("state", f"{state} · up {int(st.get('uptime_s', 0))}s · pid {st.get('pid')}")
    sess = st.get("session") or {}
    setup = sess.get("setup") or {}
    sline = f"{sess.get('state', 'unavailable')}"
    if sess.get("detail"):
        sline += f" ({sess['detail']})"
    sline += " · " + _kv(setup, "model", "modality", "turn_detection")
    sline += f" · reconnects {sess.get('reconnects', 0)}"
    if sess.get("last_close_code"):
        sline += f" (last close {sess['last_close_code']})"
    row("session", sline)
    audio = st.get("audio") or {}
    row("audio in", _device_line(audio.get("capture")))
    row("audio out", _device_line(audio.get("playback")))
    row("listen", _listen_line(audio.get("listen")))
    row("echo", _echo_line(audio.get("echo")))
    row("VAD", _vad_line(audio.get("vad"), audio.get("frontend")))
    row("camera", _camera_line(st.get("camera") or {}))
    idx = st.get("index") or {}
    iline = f"gen {idx.get('generation', '-')}"
    iline += "".join(f" · {k} {idx[k]}" for k in ("documents", "chunks", "db_bytes")
                     if idx.get(k) is not None)
    sync = idx.get("last_sync")
    if isinstance(sync, dict):
        iline += f" · last sync {sync.get('status', '?')} {sync.get('time', '')}".rstrip()
    if idx.get("error"):
        iline += f" · {idx['error']}"
    row("index", iline)
    cfg = st.get("config") or {}
    rl = cfg.get("last_reload") or {}
    cline = f"{cfg.get('version', '?')} loaded {_hm(cfg.get('loaded_at_epoch'))}"
    if rl.get("ok") is False:
        cline += f" · last reload REJECTED: {_short(rl.get('error'), 120)}"
    elif rl.get("restart_needed"):
        cline += f" · restart needed for {', '.join(rl['restart_needed'])}"
    row("config", cline)
    if st.get("ota"):
        row("OTA", ota_line(st["ota"]))
    fb = st.get("feedback") or {}
    row("feedback", f"good {fb.get('good', 0)} · bad {fb.get('bad', 0)}")
    turns = st.get("turns") or []
    lines.append(f"  last turns ({len(turns)}):" if turns else "  last turns: none yet")
    for t in turns[-5:]:
        lat = t.get("latency_s")
        lat_s = f"{lat:.2f}s" if isinstance(lat, int | float) else "  -  "
        opened_by = t.get("trigger") or t.get("kind") or "?"
        lines.append(f"    {_hm(t.get('ts'))} {opened_by:<9} {lat_s:>6}  "
                     f"{_short(t.get('user'), 30)!r} → {_short(t.get('model'), 40)!r}")
    return "\n".join(lines)


def _health_exit(st: Status | Health) -> int:
    return EXIT_OK if st.get("health") == "healthy" else EXIT_DEGRADED


def _client(a: argparse.Namespace) -> ControlClient:
    return ControlClient(a.socket, DEFAULT_TIMEOUT_S if a.timeout is None else a.timeout,
                         follow_deadline=a.timeout is None)


def _cmd_status(a: argparse.Namespace) -> int:
    st = _client(a).status()
    if a.json:
        _emit(json.dumps(st, indent=2, ensure_ascii=False) + "\n")
    else:
        _emit(format_status(st, _Style(sys.stdout)) + "\n")
    return _health_exit(st)


def _cmd_health(a: argparse.Namespace) -> int:
    h = _client(a).health()
    if a.json:
        _emit(json.dumps(h, ensure_ascii=False) + "\n")
    else:
        problems = h.get("problems") or []
        _emit(f"edged: {h['health']}" + (f" ({'; '.join(problems)})" if problems else "")
              + "\n")
    return _health_exit(h)


def _cmd_reload(a: argparse.Namespace) -> int:
    r = _client(a).reload()
    if a.json:
        _emit(json.dumps(r, ensure_ascii=False) + "\n")
    elif r.get("ok"):
        restart = r.get("restart_needed")
        _emit(f"reloaded: config {r.get('previous')} -> {r.get('version')}\n"
              + (f"restart needed for: {', '.join(restart)}\n" if restart else ""))
    else:
        print(f"reload rejected, old config kept:\n{r.get('error')}", file=sys.stderr)
    return EXIT_OK if r.get("ok") else EXIT_DEGRADED


def _cmd_mute(muted: bool) -> Any:
    def run(a: argparse.Namespace) -> int:
        now_muted = _client(a).mute(muted)
        if a.json:
            _emit(json.dumps({"muted": now_muted}) + "\n")
        else:
            _emit(f"microphone {'muted' if now_muted else 'unmuted'}\n")
        return EXIT_OK
    return run


def _cmd_listen(a: argparse.Namespace) -> int:
    r = _client(a).listen()
    if a.json:
        _emit(json.dumps(r, ensure_ascii=False) + "\n")
    elif r.get("reason"):
        _emit(f"listening ({r['reason']})\n")
    else:
        _emit(f"listening: the question may start within {r.get('question_timeout_s')} s\n")
    return EXIT_OK


def _cmd_metrics(a: argparse.Namespace) -> int:
    _emit(_client(a).metrics())
    return EXIT_OK


def _cmd_ask(a: argparse.Namespace) -> int:
    """Stream the answer to a terminal; into a pipe or file print only the final answer, so
    words of a reply cut by a reconnect never end up in the output."""
    final: dict[str, Any] = {}
    stream = sys.stdout.isatty()
    for item in _client(a).ask(" ".join(a.text), hangup_fd=_stdout_fd()):
        if a.json:
            final = item
            if not _emit(json.dumps(item, ensure_ascii=False) + "\n"):
                return EXIT_OK
            continue
        if "text" in item and "latency_s" not in item:
            if stream and not _emit(item["text"]):
                return EXIT_OK
        elif "tool" in item:
            print(f"[tool {item['tool']}]", file=sys.stderr)
        elif "restart" in item:
            print(f"\n[{item['restart']}]", file=sys.stderr)
        elif "deadline_s" in item:
            continue
        else:
            final = item
    if not a.json:
        _emit("\n" if stream else str(final.get("model", "")) + "\n")
        lat = final.get("latency_s")
        print(f"(first reply after {lat:.2f}s)" if isinstance(lat, int | float)
              else "(no reply)", file=sys.stderr)
    return EXIT_OK


def _cmd_events(a: argparse.Namespace) -> int:
    try:
        for ev in _client(a).events(hangup_fd=_stdout_fd()):
            if a.json:
                line = json.dumps(ev, ensure_ascii=False)
            else:
                rest = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("type", "ts"))
                line = f"{_hm(ev.get('ts') or time.time())} {ev.get('type')} {rest}"
            if not _emit(line + "\n"):
                break
    except BrokenPipeError:       # the reader went away while we waited for an event
        _discard_stdout()
    return EXIT_OK


def _cmd_look(a: argparse.Namespace) -> int:
    r = _client(a).look()
    jpeg = base64.b64decode(r["jpeg_base64"])
    out = a.output or Path(f"edged-look-{time.strftime('%Y%m%d-%H%M%S')}.jpg")
    out.write_bytes(jpeg)
    info = {k: v for k, v in r.items() if k != "jpeg_base64"}
    if a.json:
        print(json.dumps({**info, "file": str(out)}, ensure_ascii=False))
    else:
        print(f"saved {out} ({r.get('width')}x{r.get('height')}, {len(jpeg)} bytes, "
              f"captured in {r.get('capture_ms')} ms); not sent to the model")
    return EXIT_OK


def _cmd_feedback(a: argparse.Namespace) -> int:
    r = _client(a).feedback(a.rating, " ".join(a.note))
    if a.json:
        _emit(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        what = "last turn" if r.get("rated_turn") else "no turn yet; stored anyway"
        c = r.get("counts", {})
        _emit(f"thanks: {a.rating} ({what}); totals good {c.get('good')} · "
              f"bad {c.get('bad')}\n")
    return EXIT_OK


def _cmd_ota_status(a: argparse.Namespace) -> int:
    ota = _client(a).ota_status()
    print(json.dumps(ota, indent=2, ensure_ascii=False) if a.json else format_ota(ota))
    return EXIT_OK


def _cmd_ota_apply(a: argparse.Namespace) -> int:
    from edged.ota.bundle import MAX_BUNDLE_BYTES
    try:
        raw = a.file.read_bytes()
    except OSError as e:
        print(f"edgectl: {a.file}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if len(raw) > MAX_BUNDLE_BYTES:       # the daemon would refuse it; don't send it
        print(f"edgectl: {a.file} is {len(raw)} bytes; a bundle is at most "
              f"{MAX_BUNDLE_BYTES} (is this the right file?)", file=sys.stderr)
        return EXIT_DEGRADED
    final: dict[str, Any] = {}
    for item in _client(a).ota_apply(raw, wait=not a.no_wait):
        final = item
        if a.json:
            print(json.dumps(item, ensure_ascii=False), flush=True)
        elif item.get("stage") == "trial":
            print(f"version {item['version']} (key {item['key_id']}) accepted; changes: "
                  f"{', '.join(item['changes']) or 'nothing'}")
            if item.get("restart"):
                print(f"edged restarts to apply {', '.join(item['restart'])}; the "
                      f"{item['window_s']:g}s health window runs after the restart")
            elif not a.no_wait:
                print(f"health window {item['window_s']:g}s ...", flush=True)
    result = final.get("result")
    if not a.json:
        if result == "pending":
            print("on trial: `edgectl ota status` shows the outcome")
        elif result == "committed":
            print(f"committed: version {final['version']} is current and last good")
        else:
            print(f"ROLLED BACK: {final.get('reason')}", file=sys.stderr)
    return EXIT_OK if result in ("pending", "committed") else EXIT_DEGRADED


def _seconds(text: str) -> float:
    """``--timeout``: a positive, finite number of seconds (anything else is a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


VERBS: dict[str, str] = {
    "status": "health summary, then session, audio, listening mode and wake word, echo "
              "canceller, VAD, camera, index, config and the last turns (exit 0 healthy, "
              "1 degraded)",
    "health": "one line: healthy, or degraded with the problems (same exit codes as status)",
    "reload": "re-read the config file; an invalid one is rejected and the old one kept "
              "(exit 1)",
    "mute": "mute the microphone (nothing is heard or sent until unmute)",
    "unmute": "unmute the microphone",
    "listen": "open a turn now, as the wake word would, in every listening mode (a button, "
              "a GPIO script, an automation); over a reply it stops the reply",
    "ask": "ask a question by text; the answer streams back (and is spoken)",
    "events": "stream state changes, turns, transcripts, tool calls, reconnects, health ... "
              "until the daemon stops or the output is closed",
    "metrics": "Prometheus metrics text",
    "look": "take a still and save it here to check the framing (never sent to the model; "
            "refused while muted)",
    "feedback": "rate the last turn: good|bad [note] (stored with the turn)",
    "ota": "signed config bundles: `ota apply FILE` (waits for the health window: exit 0 "
           "committed, 1 rolled back or rejected), `ota status`",
}


def _epilog() -> str:
    codes = "\n".join(textwrap.fill(meaning, 79, initial_indent=f"  {code:<5}",
                                     subsequent_indent=" " * 7)
                       for code, meaning in EXIT_CODES.items())
    notes = "\n".join(textwrap.fill(p, 79, subsequent_indent="  ") for p in (
        "--json (before or after the command): machine-readable output. status, health, "
        "reload, mute, unmute, listen and feedback print one JSON document; ask and events "
        "one JSON object per line; metrics is Prometheus text either way. The status document "
        "carries a schema_version: use it in scripts, the human format may change.",
        "Pipes: `edgectl status | head -1` exits with the health code; `edgectl events | "
        "head -2` ends after two events.",
        "reload, mute, unmute, listen, ask, look, feedback and ota apply change state: they "
        "need root, the daemon's user or a member of the control group (edged)."))
    return f"exit codes:\n{codes}\n\n{notes}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgectl", description="Control a running edged daemon over its unix socket.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", type=Path,
                   default=Path(os.environ.get("EDGED_SOCKET", str(DEFAULT_SOCKET))),
                   help=f"control socket (default {DEFAULT_SOCKET}, or $EDGED_SOCKET)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (JSON; see below)")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help=f"seconds to wait for each reply line (default {DEFAULT_TIMEOUT_S:g}; "
                        "for ask, the daemon's own bound for an answer plus "
                        f"{DEADLINE_SLACK_S:g} s; events waits forever)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                           title="commands")

    def add(name: str, func: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=VERBS[name], description=VERBS[name],
                            epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    add("status", _cmd_status)
    add("health", _cmd_health)
    add("reload", _cmd_reload)
    add("mute", _cmd_mute(True))
    add("unmute", _cmd_mute(False))
    add("listen", _cmd_listen)
    add("ask", _cmd_ask).add_argument("text", nargs="+", help="the question")
    add("events", _cmd_events)
    add("metrics", _cmd_metrics)
    sp = add("look", _cmd_look)
    sp.add_argument("-o", "--output", type=Path, help="file to write (default "
                    "edged-look-YYYYmmdd-HHMMSS.jpg in the current directory)")
    sp = add("feedback", _cmd_feedback)
    sp.add_argument("rating", choices=["good", "bad"])
    sp.add_argument("note", nargs="*", help="optional words about the turn")
    ota = sub.add_parser("ota", help=VERBS["ota"], description=VERBS["ota"], epilog=_epilog(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ota_sub = ota.add_subparsers(dest="ota_command", metavar="OTA_COMMAND", required=True)
    sp = ota_sub.add_parser("status", help="version in effect, trial, last result and rollback",
                            epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    sp.set_defaults(func=_cmd_ota_status)
    sp = ota_sub.add_parser("apply", help="apply a bundle file (from `edged ota sign`); waits "
                            "for the health window: exit 0 committed, 1 rolled back/rejected",
                            epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("file", type=Path)
    sp.add_argument("--no-wait", action="store_true",
                    help="return once the bundle is on trial")
    sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    sp.set_defaults(func=_cmd_ota_apply)
    return p


# Error codes the daemon answers with that are the caller's doing, not the daemon's state.
_REMOTE_EXIT = {ErrorCode.FORBIDDEN: EXIT_FORBIDDEN, ErrorCode.INVALID_PARAMS: EXIT_USAGE}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:          # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return int(args.func(args))
    except NotRunning as e:
        print(f"edged: not running ({e})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except Denied as e:
        print(f"edgectl: {e}", file=sys.stderr)
        return EXIT_FORBIDDEN
    except RemoteError as e:
        print(f"edgectl: {args.command}: {e}", file=sys.stderr)
        return _REMOTE_EXIT.get(e.code, EXIT_DEGRADED)
    except TimeoutError:
        waited = "the daemon's deadline" if args.timeout is None else f"{args.timeout:g}s"
        print(f"edgectl: no reply within {waited} (daemon busy or stalled?)", file=sys.stderr)
        return EXIT_DEGRADED
    except BrokenPipeError:        # stdout's reader went away before anything was written
        _discard_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
