"""``edged ota keygen | sign | inspect | pull``: the publisher's tools and the device's pull job.

``keygen``, ``sign`` and ``inspect`` run on the owner's laptop (docs/operations.md walks
through them); ``sign`` refuses what a device would refuse (forbidden keys, values the typed
model rejects), so mistakes surface before a bundle reaches a fleet.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edged import __version__
from edged.config import ConfigError, Settings, load_settings
from edged.ota.bundle import BundleError, fmt_time

_DURATION = re.compile(r"(\d+)([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_expires(value: str, now: datetime) -> datetime:
    """``30d`` / ``12h`` / ``90m`` from now, or a UTC time ``2026-12-31T00:00:00Z``."""
    m = _DURATION.fullmatch(value)
    if m:
        return now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    from edged.ota.bundle import parse_time
    return parse_time(value, "--expires")


def _keygen(a: argparse.Namespace) -> int:
    from edged.ota.keys import KeyFileError, generate
    try:
        secret, public, kid = generate(a.out, a.name)
    except KeyFileError as e:
        print(f"edged ota keygen: {e}", file=sys.stderr)
        return 1
    print(f"key id {kid}\n  secret key: {secret} (0600; keep it offline, back it up)\n"
          f"  public key: {public} (install on each device: "
          f"/etc/edged/ota-keys/{public.name})")
    return 0


def _sign(a: argparse.Namespace) -> int:
    from edged.ota.admit import validate
    from edged.ota.bundle import make_meta, sign
    from edged.ota.keys import KeyFileError, load_signing_key

    now = datetime.now(UTC).replace(microsecond=0)
    try:
        config_bytes = a.config_file.read_bytes()
        key = load_signing_key(a.key)
        meta = make_meta(a.version, now, parse_expires(a.expires, now), a.target or [],
                         a.min_edged_version, a.comment)
        try:
            fragment = tomllib.loads(config_bytes.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise BundleError("invalid_toml", f"{a.config_file}: not valid UTF-8 TOML: {e}"
                              ) from None
        validate(fragment, meta.version, a.config)
        raw = sign(config_bytes, meta, key)
    except (OSError, KeyFileError, BundleError) as e:
        what = e.strerror if isinstance(e, OSError) and e.strerror else e
        print(f"edged ota sign: {what}", file=sys.stderr)
        return 1
    out = a.out or a.config_file.with_name(f"{a.config_file.stem}-v{meta.version}.bundle")
    out.write_bytes(raw)
    print(f"{out}: version {meta.version}, expires {fmt_time(meta.expires)}, targets "
          f"{' '.join(meta.targets) or 'every device'}, {len(raw)} bytes")
    return 0


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def effective_diff(before: Settings, after: Settings) -> list[str]:
    """``key: old -> new`` for every effective setting that differs (secrets redacted)."""
    a, b = _flat(before.redacted()), _flat(after.redacted())
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


def _inspect(a: argparse.Namespace) -> int:
    from edged.ota.admit import validate
    from edged.ota.bundle import parse_body, split, verify
    from edged.ota.keys import TrustedKeys

    ok = True
    try:
        raw = a.bundle.read_bytes()
        kid, _, body = split(raw)
        meta, config_bytes, config = parse_body(body)
    except (OSError, BundleError) as e:
        print(f"edged ota inspect: {a.bundle}: {getattr(e, 'strerror', None) or e}",
              file=sys.stderr)
        return 1
    print(f"bundle    {a.bundle} ({len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()})")
    if a.keys is None:
        signer = "signature NOT CHECKED (give --keys DIR with the trusted .pub files)"
        ok = False
    else:
        try:
            verify(raw, TrustedKeys.load(a.keys))
            signer = f"signature valid, key trusted in {a.keys}"
        except BundleError as e:
            signer, ok = f"INVALID: {e}", False
    print(f"signer    key {kid}: {signer}")
    now = datetime.now(UTC)
    left = meta.expires - now
    validity = (f"valid for {left.days} more days" if left.days >= 1 else
                f"valid for {int(left.total_seconds() // 3600)} more hours"
                if left.total_seconds() > 0 else "EXPIRED")
    ok = ok and left.total_seconds() > 0
    print(f"version   {meta.version}\ncreated   {fmt_time(meta.created)}\n"
          f"expires   {fmt_time(meta.expires)} ({validity})\n"
          f"targets   {' '.join(meta.targets) or 'every device'}")
    if meta.min_edged_version:
        print(f"needs     edged >= {meta.min_edged_version} (this edged is {__version__})")
    if meta.comment:
        print(f"comment   {meta.comment}")
    base = f"admin file {a.config}" if a.config else "packaged defaults"
    try:
        after = validate(config, meta.version, a.config)
        before = load_settings(a.config, a.current or Path(os.devnull))
    except (BundleError, ConfigError) as e:
        print(f"config    INVALID: {e}")
        return 1
    print(f"config    valid ({len(config_bytes)} bytes)")
    diff = effective_diff(before, after)
    against = f"{base} + {a.current}" if a.current else base
    print(f"changes against {against}:" if diff else f"changes against {against}: none")
    for line in diff:
        print(f"  {line}")
    return 0 if ok else 1


def _pull(a: argparse.Namespace) -> int:
    from edged.logs import setup_logging
    from edged.ota.pull import pull
    setup_logging(logging.INFO)
    return pull(load_settings(a.config, a.override), a.override)


def add_parser(sub: Any, add_config_args: Any) -> None:
    """The ``edged ota`` subcommands, added to ``edged``'s parser (:mod:`edged.cli`)."""
    p = sub.add_parser("ota", help="signed over-the-air config bundles (docs/ota.md)")
    ota = p.add_subparsers(dest="ota_command", metavar="OTA_COMMAND", required=True)

    sp = ota.add_parser("keygen", help="make an Ed25519 signing key pair (NAME.key, NAME.pub)")
    sp.add_argument("--out", type=Path, default=Path("."), help="directory (default .)")
    sp.add_argument("--name", default="edged-ota", help="file name stem (default edged-ota)")
    sp.set_defaults(func=_keygen)

    sp = ota.add_parser("sign", help="config fragment + version + expiry -> signed bundle")
    sp.add_argument("config_file", type=Path, metavar="CONFIG.toml",
                    help="the settings to send, in the admin file's schema")
    sp.add_argument("--key", type=Path, required=True, help="secret key (NAME.key)")
    sp.add_argument("--version", required=True,
                    help="higher than every bundle sent before (e.g. YYYYMMDDNN)")
    sp.add_argument("--expires", default="30d",
                    help="30d / 12h / 90m from now, or 2026-12-31T00:00:00Z (default 30d)")
    sp.add_argument("--target", action="append", metavar="device:ID|group:NAME",
                    help="only these devices (repeatable; default every device)")
    sp.add_argument("--min-edged-version", default=None, help="e.g. 0.1.0")
    sp.add_argument("--comment", default="", help="one line shown by inspect and status")
    sp.add_argument("--config", type=Path, default=None,
                    help="the fleet's admin file, to validate against (default: packaged "
                         "defaults)")
    sp.add_argument("-o", "--out", type=Path, default=None,
                    help="output file (default CONFIG-vVERSION.bundle)")
    sp.set_defaults(func=_sign)

    sp = ota.add_parser("inspect", help="signer, version, validity and the effective diff")
    sp.add_argument("bundle", type=Path)
    sp.add_argument("--keys", type=Path, default=None,
                    help="directory of trusted .pub files to check the signature against")
    sp.add_argument("--config", type=Path, default=None,
                    help="the fleet's admin file (default: packaged defaults)")
    sp.add_argument("--current", type=Path, default=None,
                    help="the device's current OTA layer (current.toml) to diff against")
    sp.set_defaults(func=_inspect)

    sp = ota.add_parser("pull", help="fetch ota.pull_url and hand a new bundle to edged "
                        "(what edged-ota-pull.service runs)")
    add_config_args(sp)
    sp.set_defaults(func=_pull)
