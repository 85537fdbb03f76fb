"""``edgectl``: talk to a running edged over its control socket (works as ``ssh pi edgectl …``).

Exit codes follow ``systemctl``/LSB so scripts and monitoring can branch on them:

    0  healthy / the command succeeded
    1  degraded (status, health) / the daemon refused or failed the command
    2  usage error
    3  edged is not running (socket absent or connection refused)
    4  permission denied (socket not accessible, or a state-changing call from a non-member)

``status --json`` prints the daemon's status document (``schema_version`` inside) unchanged.
Colour is used only when stdout is a terminal and ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from edged.config import ControlSettings
from edged.control.client import ControlClient, Denied, NotRunning, RemoteError
from edged.control.protocol import ErrorCode, Health, Status

EXIT_OK, EXIT_DEGRADED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_FORBIDDEN = 0, 1, 2, 3, 4
DEFAULT_SOCKET = ControlSettings().socket_path


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


def _short(text: Any, n: int = 48) -> str:
    t = " ".join(str(text or "").split())
    return t if len(t) <= n else t[:n - 1] + "…"


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
    vad = audio.get("vad")
    row("VAD", _kv(vad, *vad.keys()) if isinstance(vad, dict) else "-")
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
        row("OTA", _kv(st["ota"], *st["ota"].keys()))
    fb = st.get("feedback") or {}
    row("feedback", f"good {fb.get('good', 0)} · bad {fb.get('bad', 0)}")
    turns = st.get("turns") or []
    lines.append(f"  last turns ({len(turns)}):" if turns else "  last turns: none yet")
    for t in turns[-5:]:
        lat = t.get("latency_s")
        lat_s = f"{lat:.2f}s" if isinstance(lat, int | float) else "  -  "
        lines.append(f"    {_hm(t.get('ts'))} {t.get('kind', '?'):<5} {lat_s:>6}  "
                     f"{_short(t.get('user'), 30)!r} → {_short(t.get('model'), 40)!r}")
    return "\n".join(lines)


def _health_exit(st: Status | Health) -> int:
    return EXIT_OK if st.get("health") == "healthy" else EXIT_DEGRADED


def _client(a: argparse.Namespace) -> ControlClient:
    return ControlClient(a.socket, a.timeout)


def _cmd_status(a: argparse.Namespace) -> int:
    st = _client(a).status()
    if a.json:
        print(json.dumps(st, indent=2, ensure_ascii=False))
    else:
        print(format_status(st, _Style(sys.stdout)))
    return _health_exit(st)


def _cmd_health(a: argparse.Namespace) -> int:
    h = _client(a).health()
    if a.json:
        print(json.dumps(h, ensure_ascii=False))
    else:
        problems = h.get("problems") or []
        print(f"edged: {h['health']}" + (f" ({'; '.join(problems)})" if problems else ""))
    return _health_exit(h)


def _cmd_reload(a: argparse.Namespace) -> int:
    r = _client(a).reload()
    if a.json:
        print(json.dumps(r, ensure_ascii=False))
    elif r.get("ok"):
        print(f"reloaded: config {r.get('previous')} -> {r.get('version')}")
        if r.get("restart_needed"):
            print(f"restart needed for: {', '.join(r.get('restart_needed', []))}")
    else:
        print(f"reload rejected, old config kept:\n{r.get('error')}", file=sys.stderr)
    return EXIT_OK if r.get("ok") else EXIT_DEGRADED


def _cmd_mute(muted: bool) -> Any:
    def run(a: argparse.Namespace) -> int:
        now_muted = _client(a).mute(muted)
        if a.json:
            print(json.dumps({"muted": now_muted}))
        else:
            print(f"microphone {'muted' if now_muted else 'unmuted'}")
        return EXIT_OK
    return run


def _cmd_metrics(a: argparse.Namespace) -> int:
    sys.stdout.write(_client(a).metrics())
    return EXIT_OK


def _cmd_ask(a: argparse.Namespace) -> int:
    final: dict[str, Any] = {}
    for item in _client(a).ask(" ".join(a.text)):
        if a.json:
            print(json.dumps(item, ensure_ascii=False), flush=True)
            final = item
            continue
        if "text" in item and "latency_s" not in item:
            sys.stdout.write(item["text"])
            sys.stdout.flush()
        elif "tool" in item:
            print(f"[tool {item['tool']}]", file=sys.stderr)
        else:
            final = item
    if not a.json:
        print()
        lat = final.get("latency_s")
        print(f"(first reply after {lat:.2f}s)" if isinstance(lat, int | float)
              else "(no reply)", file=sys.stderr)
    return EXIT_OK


def _cmd_events(a: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        for ev in _client(a).events():
            if a.json:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            else:
                rest = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("type", "ts"))
                print(f"{_hm(ev.get('ts') or time.time())} {ev.get('type')} {rest}", flush=True)
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
        print(json.dumps(r, ensure_ascii=False))
    else:
        what = "last turn" if r.get("rated_turn") else "no turn yet; stored anyway"
        c = r.get("counts", {})
        print(f"thanks: {a.rating} ({what}); totals good {c.get('good')} · bad {c.get('bad')}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgectl", description="Control a running edged daemon.")
    p.add_argument("--socket", type=Path,
                   default=Path(os.environ.get("EDGED_SOCKET", str(DEFAULT_SOCKET))),
                   help=f"control socket (default {DEFAULT_SOCKET}, or $EDGED_SOCKET)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        sp.set_defaults(func=func)
        return sp

    add("status", _cmd_status, "health summary and details (exit 0 healthy, 1 degraded, 3 down)")
    add("health", _cmd_health, "one-line health (same exit codes as status)")
    add("reload", _cmd_reload, "re-read the config (invalid: old one kept)")
    add("mute", _cmd_mute(True), "mute the microphone")
    add("unmute", _cmd_mute(False), "unmute the microphone")
    sp = add("ask", _cmd_ask, "ask a question by text; the answer streams back")
    sp.add_argument("text", nargs="+")
    add("events", _cmd_events, "stream state changes and turns (JSON lines with --json)")
    add("metrics", _cmd_metrics, "Prometheus metrics text")
    sp = add("look", _cmd_look, "take a still and save it here to check the framing (not sent "
             "to the model)")
    sp.add_argument("-o", "--output", type=Path, help="file to write (default "
                    "edged-look-YYYYmmdd-HHMMSS.jpg in the current directory)")
    sp = add("feedback", _cmd_feedback, "rate the last turn: good|bad [note]")
    sp.add_argument("rating", choices=["good", "bad"])
    sp.add_argument("note", nargs="*")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        return EXIT_FORBIDDEN if e.code == ErrorCode.FORBIDDEN else EXIT_DEGRADED
    except TimeoutError:
        print(f"edgectl: no reply within {args.timeout:g}s (daemon busy or stalled?)",
              file=sys.stderr)
        return EXIT_DEGRADED


if __name__ == "__main__":
    sys.exit(main())
