"""The ``edged`` command: run the daemon, chat with the model, or check the configuration.

Each subcommand imports its module lazily, so ``edged check-config`` works (and stays fast)
on a machine where, say, the ALSA devices are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edged.config import ConfigError, Settings, load_settings


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="admin config file (default: /etc/edged/edged.toml if present)")
    p.add_argument("--override", type=Path, default=None,
                   help="OTA override file "
                        "(default: /var/lib/edged/config/current.toml if present)")


def load_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, args.override)


def _check_config(args: argparse.Namespace) -> int:
    settings = load_from_args(args)
    print(json.dumps(settings.redacted(), indent=2, ensure_ascii=False))
    print("configuration OK", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    from edged.daemon.run import main as daemon_main
    return daemon_main(args)


def _chat(args: argparse.Namespace) -> int:
    from edged.chat import main as chat_main
    return chat_main(args, load_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged", description="Always-on voice companion daemon (Gemini Live).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (what systemd starts)")
    _add_config_args(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("check-config",
                       help="validate and print the effective config (secrets redacted)")
    _add_config_args(p)
    p.set_defaults(func=_check_config)

    p = sub.add_parser("chat", help="terminal chat with the model through the Live session")
    _add_config_args(p)
    p.add_argument("--modality", choices=["TEXT", "AUDIO"], default=None,
                   help="reply modality (default: gemini.response_modality)")
    p.add_argument("--wav-dir", type=Path, default=Path("."),
                   help="where AUDIO replies are written, one WAV per turn")
    p.set_defaults(func=_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"edged: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
